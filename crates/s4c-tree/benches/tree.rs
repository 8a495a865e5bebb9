//! Host cost of building and flattening verification trees.

use criterion::{criterion_group, criterion_main, Criterion};
use s4c_tree::{build_dynamic, Candidate, CandidateProvider, DynamicConfig, Template, TokenTree};
use std::hint::black_box;

/// Candidates from a cheap deterministic hash of the node index.
struct Synthetic;

impl CandidateProvider for Synthetic {
    fn expand(&mut self, _tree: &TokenTree, nodes: &[usize], k: usize) -> Vec<Vec<Candidate>> {
        nodes
            .iter()
            .map(|&n| {
                (0..k)
                    .map(|r| Candidate {
                        token: (n * 31 + r * 7) as u32 % 49_152,
                        logprob: -0.3 * (r as f32 + 1.0) - 0.01 * (n % 7) as f32,
                    })
                    .collect()
            })
            .collect()
    }
}

fn bench(c: &mut Criterion) {
    let t63 = Template::mc_sim_7b_63();
    c.bench_function("static mc_sim_7b_63: build + flatten", |b| {
        b.iter(|| black_box(t63.build(1, &mut Synthetic).unwrap().flatten()))
    });
    for (nodes, depth, k) in [(64, 6, 8), (256, 8, 16)] {
        let cfg = DynamicConfig {
            top_k: k,
            max_depth: depth,
            max_nodes: nodes,
        };
        c.bench_function(
            &format!("dynamic {nodes} nodes (top_k {k}, depth {depth}): build + flatten"),
            |b| b.iter(|| black_box(build_dynamic(1, &cfg, &mut Synthetic).unwrap().flatten())),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
