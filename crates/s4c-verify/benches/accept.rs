//! Cost of the acceptance step on a 64-node tree (flex backend), to compare with one plain
//! decode step of the default model.

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use s4c_tree::{Candidate, CandidateProvider, Template, TokenTree, TreeError};
use s4c_verify::{Acceptor, GreedyAcceptor, Proposal, SamplingAcceptor, SamplingParams};
use std::hint::black_box;

struct Fixed;
impl CandidateProvider for Fixed {
    fn expand(
        &mut self,
        _t: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError> {
        Ok({
            nodes
                .iter()
                .map(|&n| {
                    (0..k)
                        .map(|r| Candidate {
                            token: (n * 10 + r) as u32,
                            logprob: -1.0,
                        })
                        .collect()
                })
                .collect()
        })
    }
}

fn bench(c: &mut Criterion) {
    let device = Default::default();
    let tree = Template::mc_sim_7b_63().build(1, &mut Fixed).unwrap();
    let props = vec![Proposal::Deterministic; tree.len()];
    // σ = 2: flat, nearly every token in the nucleus (worst case for top-p); σ = 5: peaked, closer
    // to a language model's next-token distribution.
    for (vocab, sigma) in [(32_000usize, 2.0), (49_152, 2.0), (49_152, 5.0)] {
        let logits = Tensor::<Flex, 2>::random(
            [tree.len(), vocab],
            Distribution::Normal(0.0, sigma),
            &device,
        );
        c.bench_function(
            &format!("greedy accept, 64 nodes, vocab {vocab}, logits σ {sigma}"),
            |b| {
                b.iter(|| {
                    black_box(
                        Acceptor::<Flex>::accept(
                            &mut GreedyAcceptor,
                            &tree,
                            &props,
                            logits.clone(),
                        )
                        .unwrap(),
                    )
                })
            },
        );
        let params = SamplingParams {
            temperature: 0.8,
            top_k: 0,
            top_p: 0.95,
        };
        let mut acc = SamplingAcceptor::new(params, 0).unwrap();
        c.bench_function(
            &format!(
                "sampling accept (T 0.8, top-p 0.95), 64 nodes, vocab {vocab}, logits σ {sigma}"
            ),
            |b| {
                b.iter(|| {
                    black_box(
                        Acceptor::<Flex>::accept(&mut acc, &tree, &props, logits.clone()).unwrap(),
                    )
                })
            },
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
