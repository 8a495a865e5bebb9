//! S4C generation against plain decoding on tiny models: greedy output equal token for token
//! (random heads, every coherence mode, static and dynamic trees, K = 1), sampled output with the
//! target's distribution, and the edge cases (stop token inside an accepted branch, max tokens
//! mid-branch, context full, empty drafts) — each with and without context lookup.

use burn::backend::Flex;
use burn::tensor::Tensor;
use s4c::plain::{generate_plain, GenerateOptions, StopReason};
use s4c::speculative::{SpeculativeGenerator, TreeShape};
use s4c_draft::{
    fingerprint, Coherence, DraftError, Drafter, DrafterConfig, MultiHeadDrafter, NoDrafter,
};
use s4c_models::testing::{counting_model, tiny_model};
use s4c_models::{CausalLm, Input, Llama, Logits};
use s4c_tree::{
    AcceptanceStats, AdaptiveConfig, AdaptiveSizer, Candidate, ContextLookup, DynamicConfig,
    Template,
};
use s4c_verify::{GreedyAcceptor, SamplingAcceptor, SamplingParams};
use std::ops::ControlFlow;

type B = Flex;

fn drafter(t: &Llama<B>, coherence: Coherence, heads: usize, seed: u64) -> MultiHeadDrafter<B> {
    let mut c = DrafterConfig::new(fingerprint::<B, _>(t).unwrap());
    c.coherence = coherence;
    c.heads = heads;
    c.window = 3;
    // Four heads copy from the context too (random copy layers), one head does not.
    c.copy = if heads >= 4 { 3 } else { 0 };
    MultiHeadDrafter::random(c, t, seed).unwrap()
}

/// An online-sized tree up to `depth` levels and 12 nodes, whose prior accepts the top candidate
/// `top1` per mille at every depth (the others a quarter of that); predicted step times 10 ms + 1 ms per node, not learned (so
/// tests do not depend on timing), a probe every 4th step.
fn adaptive(depth: usize, top1: u64) -> TreeShape {
    let mut prior = AcceptanceStats::new(depth, 4);
    let mut tried = 10_000;
    for d in 0..depth {
        prior.tried[d] = vec![tried; 4];
        let (top, other) = (tried * top1 / 1000, tried * top1 / 4000);
        prior.accepted[d] = vec![top, other, other, other];
        tried = tried * top1 / 1000;
    }
    let predicted = (0..=12).map(|n| 0.010 + 0.001 * n as f64).collect();
    let mut config = AdaptiveConfig::new(12, depth);
    config.learn_latency = false;
    config.probe_every = 4;
    TreeShape::Adaptive(Box::new(
        AdaptiveSizer::new(&prior, predicted, config).unwrap(),
    ))
}

fn shapes() -> Vec<TreeShape> {
    vec![
        TreeShape::Static(Template::mc_sim_7b_63()),
        TreeShape::Static(Template::chain(3).unwrap()),
        TreeShape::Dynamic(DynamicConfig {
            top_k: 3,
            max_depth: 5,
            max_nodes: 12,
        }),
        TreeShape::RootOnly,
        adaptive(1, 30),
    ]
}

/// Without and with context lookup (chains of up to 6 tokens after 1–3-token matches).
const LOOKUPS: [Option<ContextLookup>; 2] = [
    None,
    Some(ContextLookup {
        min_match: 1,
        max_match: 3,
        max_tokens: 6,
    }),
];

fn greedy(max_new_tokens: usize, stop: Vec<u32>) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens,
        stop_tokens: stop,
        ..Default::default()
    }
}

#[test]
fn greedy_s4c_equals_plain_with_random_heads() {
    let mut checked = 0;
    // Adaptive runs that turned drafting on because its drafts were accepted.
    let mut learned = 0;
    // Tokens copied from the context and accepted.
    let mut copied = 0;
    for seed in 1..=3u64 {
        let t = tiny_model::<B>(64, seed, &Default::default());
        let prompt: Vec<u32> = (0..5 + seed as u32)
            .map(|i| (i * 7 + seed as u32) % 64)
            .collect();
        let opts = greedy(40, vec![]);
        let plain =
            generate_plain(&t, &prompt, &opts, 256, &mut |_| ControlFlow::Continue(())).unwrap();
        for coherence in Coherence::ALL {
            for heads in [1, 4] {
                let d = drafter(&t, coherence, heads, seed * 10 + heads as u64);
                for (shape, lookup) in shapes()
                    .into_iter()
                    .flat_map(|s| LOOKUPS.map(|l| (s.clone(), l)))
                {
                    let mut g = SpeculativeGenerator::new(&t, &d, GreedyAcceptor, shape)
                        .unwrap()
                        .with_lookup(lookup);
                    let mut streamed = vec![];
                    let out = g
                        .generate(&prompt, &opts, 256, &mut |ids| {
                            streamed.extend_from_slice(ids);
                            ControlFlow::Continue(())
                        })
                        .unwrap();
                    assert_eq!(
                        out.new_ids, plain.new_ids,
                        "seed {seed} {coherence} K={heads} {lookup:?}"
                    );
                    let st = &out.stats;
                    assert!(st.lookup_accepted <= st.lookup_proposed);
                    assert_eq!(lookup.is_none(), st.lookup_steps == 0, "{st:?}");
                    copied += st.lookup_accepted;
                    assert_eq!(streamed, out.new_ids);
                    assert_eq!(out.stop, StopReason::MaxTokens);
                    assert!(out.stats.tau >= 1.0);
                    if matches!(g.shape(), TreeShape::Adaptive(_)) && lookup.is_none() {
                        // Trees grow from the drafts' own confidence, priced by what the target
                        // accepted so far: where the drafts are right (random heads often are,
                        // on a tiny model's repetitive text) most steps draft (rejections
                        // stopping growth: `s4c_tree`'s unit tests).
                        let st = &out.stats;
                        let drafted = st.steps - st.plain_steps;
                        if st.accepted_at_depth[0] * 2 > drafted {
                            assert!(st.plain_steps * 2 < st.steps, "{st:?}");
                            learned += 1;
                        }
                    }
                    checked += 1;
                }
            }
        }
    }
    assert_eq!(checked, 3 * 3 * 2 * 5 * 2);
    assert!(learned > 0);
    assert!(
        copied > 0,
        "tiny models repeat themselves: some copies are right"
    );
}

/// Knows the counting model's rule: proposes `token + 1` first, then a few wrong tokens.
struct Oracle {
    vocab: u32,
    depth: usize,
}

impl Drafter<B> for Oracle {
    fn max_depth(&self) -> usize {
        self.depth
    }
    fn window(&self) -> usize {
        0
    }
    fn initial_states(
        &self,
        features: Tensor<B, 2>,
        _window: Tensor<B, 3>,
        _valid: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        features
    }
    fn expand(
        &self,
        depth: usize,
        parents: Tensor<B, 2>,
        tokens: &[u32],
        _copies: &[Option<s4c_draft::CopyCandidate>],
        k: usize,
    ) -> Result<(Tensor<B, 2>, Vec<Vec<Candidate>>), DraftError> {
        if depth >= self.depth {
            return Ok((parents, vec![vec![]; tokens.len()]));
        }
        let cands = tokens
            .iter()
            .map(|&t| {
                (0..k as u32)
                    .map(|r| Candidate {
                        token: (t + 1 + r * 5) % self.vocab,
                        logprob: -(r as f32) - 0.1,
                    })
                    .collect()
            })
            .collect();
        Ok((parents, cands))
    }
}

#[test]
fn long_branches_stop_exactly_at_stop_tokens_and_max_tokens() {
    let v = 48;
    let t = counting_model::<B>(v, 3, &Default::default());
    let prompt = vec![10u32, 11, 12];
    // The counting rule holds for plain decoding.
    let plain = generate_plain(&t, &prompt, &greedy(20, vec![]), 256, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let expect: Vec<u32> = (13..33).map(|x| x % v as u32).collect();
    assert_eq!(plain.new_ids, expect);
    let oracle = Oracle {
        vocab: v as u32,
        depth: 4,
    };
    let mut all = shapes();
    all.push(adaptive(4, 600));
    for shape in all {
        let deep = match &shape {
            TreeShape::Static(t) => t.depth().min(4),
            TreeShape::Dynamic(c) => c.max_depth.min(4),
            // It learns that every branch is accepted and drafts deeper as it does.
            TreeShape::Adaptive(s) => s.config().max_depth.min(2),
            TreeShape::RootOnly => 0,
        };
        let mut g = SpeculativeGenerator::new(&t, &oracle, GreedyAcceptor, shape).unwrap();
        // Every branch is accepted to its full depth.
        let out = g
            .generate(&prompt, &greedy(20, vec![]), 256, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.new_ids, expect);
        assert!(
            out.stats.tau > deep as f64 - 0.7,
            "τ {} depth {deep}",
            out.stats.tau
        );
        // A stop token in the middle of an accepted branch ends the output right there.
        for stop in [15u32, 16, 18, 21] {
            let opts = greedy(20, vec![stop]);
            let p = generate_plain(&t, &prompt, &opts, 256, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            let s = g
                .generate(&prompt, &opts, 256, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(s.new_ids, p.new_ids);
            assert_eq!(*s.new_ids.last().unwrap(), stop);
            assert_eq!(s.stop, StopReason::StopToken);
        }
        // Max tokens reached mid-branch truncates exactly.
        for max in 1..=9 {
            let s = g
                .generate(&prompt, &greedy(max, vec![]), 256, &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(s.new_ids, expect[..max].to_vec());
            assert_eq!(s.stop, StopReason::MaxTokens);
        }
        // A full context ends generation as plain decoding does, with the same tokens.
        let context = prompt.len() + 9;
        let p = generate_plain(&t, &prompt, &greedy(100, vec![]), context, &mut |_| {
            ControlFlow::Continue(())
        })
        .unwrap();
        let s = g
            .generate(&prompt, &greedy(100, vec![]), context, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(p.stop, StopReason::ContextFull);
        assert_eq!(s.stop, StopReason::ContextFull);
        assert_eq!(s.new_ids, p.new_ids);
    }
}

/// An online sizer of depth 0: no heads ever draft, lookup chains are sized (predicted step
/// times 10 ms + 1 ms per node, not learned).
fn lookup_only() -> TreeShape {
    let predicted = (0..=12).map(|n| 0.010 + 0.001 * n as f64).collect();
    let mut config = AdaptiveConfig::new(12, 0);
    config.learn_latency = false;
    let prior = AcceptanceStats::new(1, 1);
    TreeShape::Adaptive(Box::new(
        AdaptiveSizer::new(&prior, predicted, config).unwrap(),
    ))
}

/// On periodic text, context lookup proposes the whole next period: with no heads at all, chains
/// are accepted to their end; stop tokens and max tokens inside a chain end the output exactly
/// there, and a full context ends it as plain decoding does.
#[test]
fn copied_chains_on_periodic_text_stop_exactly() {
    let v = 8;
    let t = counting_model::<B>(v, 3, &Default::default());
    let oracle = Oracle {
        vocab: v as u32,
        depth: 2,
    };
    // Whole chains, no heads; sized chains, no heads; sized chains and heads — also as the
    // CLI holds them, heads if found (`Option`).
    check_copied_chains(&t, &NoDrafter, TreeShape::RootOnly);
    check_copied_chains(&t, &NoDrafter, lookup_only());
    check_copied_chains(&t, &None::<Oracle>, lookup_only());
    check_copied_chains(&t, &oracle, adaptive(2, 100));
    check_copied_chains(&t, &Some(oracle), adaptive(2, 100));
}

fn check_copied_chains<D: Drafter<B>>(t: &Llama<B>, d: &D, shape: TreeShape) {
    let v = t.config().vocab_size as u32;
    let prompt = vec![1u32, 2, 3];
    let expect: Vec<u32> = (4..44).map(|x| x % v).collect();
    let lookup = ContextLookup::new(1, 4, 6);
    {
        let mut g = SpeculativeGenerator::new(t, d, GreedyAcceptor, shape)
            .unwrap()
            .with_lookup(Some(lookup));
        let out = g
            .generate(&prompt, &greedy(40, vec![]), 256, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(out.new_ids, expect);
        let st = &out.stats;
        // The first period has nothing to copy; after it, every step copies (a sized chain
        // grows as its tokens keep being accepted).
        assert!(st.tau > 2.5, "{st:?}");
        assert!(st.lookup_accepted * 10 >= st.lookup_proposed * 7, "{st:?}");
        // 2 and 3 first occur inside the first copied chain (after the root 1 of the second
        // period), 5 before anything can be copied.
        for stop in [5u32, 2, 3] {
            let opts = greedy(40, vec![stop]);
            let p =
                generate_plain(t, &prompt, &opts, 256, &mut |_| ControlFlow::Continue(())).unwrap();
            let s = g
                .generate(&prompt, &opts, 256, &mut |_| ControlFlow::Continue(()))
                .unwrap();
            assert_eq!(s.new_ids, p.new_ids);
            assert_eq!(s.stop, StopReason::StopToken);
        }
        for max in 1..=24 {
            let s = g
                .generate(&prompt, &greedy(max, vec![]), 256, &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(s.new_ids, expect[..max].to_vec());
            assert_eq!(s.stop, StopReason::MaxTokens);
        }
        for extra in [9, 14, 20] {
            let context = prompt.len() + extra;
            let p = generate_plain(t, &prompt, &greedy(100, vec![]), context, &mut |_| {
                ControlFlow::Continue(())
            })
            .unwrap();
            let s = g
                .generate(&prompt, &greedy(100, vec![]), context, &mut |_| {
                    ControlFlow::Continue(())
                })
                .unwrap();
            assert_eq!(s.stop, StopReason::ContextFull);
            assert_eq!(s.new_ids, p.new_ids);
        }
    }
}

#[test]
fn empty_drafts_decode_one_token_per_step() {
    let t = tiny_model::<B>(64, 4, &Default::default());
    let prompt = vec![3u32, 4, 5];
    let opts = greedy(12, vec![]);
    let plain =
        generate_plain(&t, &prompt, &opts, 256, &mut |_| ControlFlow::Continue(())).unwrap();
    for shape in shapes() {
        let mut g = SpeculativeGenerator::new(&t, &NoDrafter, GreedyAcceptor, shape).unwrap();
        let s = g
            .generate(&prompt, &opts, 256, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        assert_eq!(s.new_ids, plain.new_ids);
        assert_eq!(s.stats.steps, 11);
        assert!((s.stats.tau - 1.0).abs() < 1e-9, "τ {}", s.stats.tau);
    }
}

/// Exact probabilities of the first three sampled tokens of plain decoding, by enumeration.
fn exact_joint(t: &Llama<B>, prompt: &[u32], params: SamplingParams) -> Vec<f64> {
    let v = t.config().vocab_size;
    let probs = |ids: &[u32]| -> Vec<f64> {
        let mut cache = t.new_cache(16);
        let out = t
            .forward(&Input::causal(ids, 0, Logits::Last), &mut cache)
            .unwrap();
        let row = out.logits.into_data().to_vec::<f32>().unwrap();
        params
            .probabilities(&row)
            .into_iter()
            .map(|p| p as f64)
            .collect()
    };
    let mut joint = vec![0.0; v * v * v];
    let p1 = probs(prompt);
    for a in 0..v {
        let ids: Vec<u32> = prompt.iter().copied().chain([a as u32]).collect();
        let p2 = probs(&ids);
        for b in 0..v {
            let ids2: Vec<u32> = ids.iter().copied().chain([b as u32]).collect();
            let p3 = probs(&ids2);
            for c in 0..v {
                joint[(a * v + b) * v + c] = p1[a] * p2[b] * p3[c];
            }
        }
    }
    joint
}

#[test]
fn sampled_s4c_follows_the_target_distribution() {
    let tpl = Template::new(vec![vec![0], vec![1], vec![0, 0], vec![0, 1], vec![1, 0]]).unwrap();
    sampled_distribution_test(TreeShape::Static(tpl), None);
}

/// The tree changing from step to step with what was accepted keeps every step lossless.
#[test]
fn sampled_s4c_with_an_online_sized_tree_follows_the_target_distribution() {
    sampled_distribution_test(adaptive(3, 500), None);
}

/// Chains copied from the context are one more deterministic branch: still lossless.
#[test]
fn sampled_s4c_with_context_lookup_follows_the_target_distribution() {
    sampled_distribution_test(adaptive(3, 500), Some(ContextLookup::new(1, 2, 3)));
}

/// Samples three tokens 12,000 times with `shape` and tests them against the exact joint
/// distribution of plain sampling.
fn sampled_distribution_test(shape: TreeShape, lookup: Option<ContextLookup>) {
    use statrs::distribution::{ChiSquared, ContinuousCDF};
    let v = 6;
    let t = tiny_model::<B>(v, 8, &Default::default());
    let d = drafter(&t, Coherence::Full, 3, 5);
    let prompt = vec![1u32, 4, 2];
    let params = SamplingParams {
        temperature: 0.9,
        top_k: 0,
        top_p: 1.0,
    };
    let exact = exact_joint(&t, &prompt, params);
    let trials = 12_000u64;
    let mut counts = vec![0u64; v * v * v];
    let mut copied = 0;
    for seed in 0..trials {
        let acceptor = SamplingAcceptor::new(params, seed ^ 0xabc).unwrap();
        let mut g = SpeculativeGenerator::new(&t, &d, acceptor, shape.clone())
            .unwrap()
            .with_lookup(lookup);
        let opts = GenerateOptions {
            max_new_tokens: 3,
            sampling: params,
            seed,
            stop_tokens: vec![],
        };
        let s = g
            .generate(&prompt, &opts, 64, &mut |_| ControlFlow::Continue(()))
            .unwrap();
        copied += s.stats.lookup_accepted;
        let x = &s.new_ids;
        counts[(x[0] as usize * v + x[1] as usize) * v + x[2] as usize] += 1;
    }
    // Chi-square over cells with enough expected mass (the rest pooled).
    let (mut chi2, mut cells) = (0.0, 0usize);
    let (mut pooled_e, mut pooled_o) = (0.0, 0.0);
    let mut tv = 0.0;
    for (p, &o) in exact.iter().zip(&counts) {
        let e = p * trials as f64;
        tv += (p - o as f64 / trials as f64).abs() / 2.0;
        if e >= 5.0 {
            chi2 += (o as f64 - e).powi(2) / e;
            cells += 1;
        } else {
            pooled_e += e;
            pooled_o += o as f64;
        }
    }
    if pooled_e > 0.0 {
        chi2 += (pooled_o - pooled_e).powi(2) / pooled_e;
        cells += 1;
    }
    let p_value = 1.0 - ChiSquared::new((cells - 1) as f64).unwrap().cdf(chi2);
    assert!(
        p_value > 1e-3,
        "chi² {chi2:.1} over {cells} cells, p = {p_value:.2e}, TV {tv:.3}"
    );
    assert!(tv < 0.06, "TV {tv:.3}");
    assert_eq!(
        lookup.is_some(),
        copied > 0,
        "copied tokens were accepted: {copied}"
    );
}

/// With sampling, an online-sized tree must not depend on wall-clock step times, or a seed would
/// not reproduce its output: the same seed twice gives the same tokens, even with latency
/// learning switched on in the sizer.
#[test]
fn a_seed_reproduces_sampled_output_with_an_online_sized_tree() {
    let t = tiny_model::<B>(32, 9, &Default::default());
    let d = drafter(&t, Coherence::Full, 3, 4);
    let TreeShape::Adaptive(mut sizer) = adaptive(3, 500) else {
        unreachable!()
    };
    sizer.set_learn_latency(true);
    let params = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
    };
    for seed in 0..5u64 {
        let run = || {
            let acceptor = SamplingAcceptor::new(params, seed).unwrap();
            let shape = TreeShape::Adaptive(sizer.clone());
            let mut g = SpeculativeGenerator::new(&t, &d, acceptor, shape).unwrap();
            let opts = GenerateOptions {
                max_new_tokens: 40,
                sampling: params,
                seed,
                stop_tokens: vec![],
            };
            g.generate(&[1, 2, 3], &opts, 128, &mut |_| ControlFlow::Continue(()))
                .unwrap()
                .new_ids
        };
        assert_eq!(run(), run(), "seed {seed}");
    }
}
