//! Host cost of building and flattening verification trees, and of context lookup.

use criterion::{criterion_group, criterion_main, Criterion};
use s4c_tree::{
    build_dynamic, Candidate, CandidateProvider, ContextLookup, DynamicConfig, Template, TokenTree,
    TreeError,
};
use std::hint::black_box;

/// Candidates from a cheap deterministic hash of the node index.
struct Synthetic;

impl CandidateProvider for Synthetic {
    fn expand(
        &mut self,
        _tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError> {
        Ok({
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
        })
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

fn lookup(c: &mut Criterion) {
    // A 2,000-token context (rag-sized) of a 500-token alphabet, ending in a 6-token phrase seen
    // once before: the scan meets many short matches and one long one.
    let mut ctx: Vec<u32> = (0..2000u32).map(|i| (i * 7919 + i / 3) % 500).collect();
    let phrase = [11u32, 12, 13, 14, 15, 16];
    ctx[1000..1006].copy_from_slice(&phrase);
    ctx[1994..2000].copy_from_slice(&phrase);
    let look = ContextLookup::new(1, 8, 16);
    assert_eq!(look.propose(&ctx).unwrap().matched, 6);
    c.bench_function(
        "lookup: propose 16 tokens after a 2,000-token context",
        |b| b.iter(|| black_box(look.propose(black_box(&ctx)))),
    );
    let tree = Template::mc_sim_7b_63().build(1, &mut Synthetic).unwrap();
    let chain: Vec<u32> = (100..116).collect();
    c.bench_function("graft a 16-token chain onto mc_sim_7b_63", |b| {
        b.iter(|| black_box(tree.graft(black_box(&chain))))
    });
}

criterion_group!(benches, bench, lookup);
criterion_main!(benches);
