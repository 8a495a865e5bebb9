//! The proof of losslessness: over many seeded trials, the first two emitted tokens of
//! speculative sampling follow exactly the target distribution (chi-square and total variation),
//! for many tree shapes and proposal kinds; a deliberately biased acceptor is caught.

use rand::rngs::StdRng;
use rand::SeedableRng;
use s4c_tree::{Template, TokenTree, ROOT};
use s4c_verify::accept_sampling_impl;
use s4c_verify::{accept_sampling, Proposal};
use s4c_verify::{sample_index, SamplingParams};
use statrs::distribution::{ChiSquared, ContinuousCDF};

const V: usize = 5;
const TRIALS: usize = 120_000;

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Random logits as a function of the context (so the target is a real language model).
fn logits(ctx: &[u32], salt: u64) -> Vec<f32> {
    let mut h = salt;
    for &t in ctx {
        h = mix(h ^ t as u64);
    }
    (0..V)
        .map(|i| ((mix(h + i as u64) >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0)
        .collect()
}

struct Setup {
    params: SamplingParams,
    /// Tree shape as a template of rank paths.
    template: Template,
    /// Candidates drawn i.i.d. from the draft distribution instead of its top-k.
    sampled: bool,
}

impl Setup {
    fn target(&self, ctx: &[u32]) -> Vec<f32> {
        self.params.probabilities(&logits(ctx, 1))
    }
    fn draft(&self, ctx: &[u32]) -> Vec<f32> {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
        }
        .probabilities(&logits(ctx, 2))
    }

    /// Builds a tree under context `ctx` (last token = root) and its proposals.
    fn draft_tree(&self, ctx: &[u32], rng: &mut StdRng) -> (TokenTree, Vec<Proposal>) {
        let mut tree = TokenTree::new(*ctx.last().unwrap());
        let mut proposals = vec![Proposal::Deterministic];
        let mut node_of: Vec<(Vec<usize>, usize)> = vec![(vec![], ROOT)];
        for path in self.template.paths() {
            let parent = node_of
                .iter()
                .find(|(p, _)| p[..] == path[..path.len() - 1])
                .unwrap()
                .1;
            let mut c = ctx.to_vec();
            c.extend(tree.tokens_to(parent).into_iter().skip(1));
            let q = self.draft(&c);
            let (token, prop) = if self.sampled {
                (sample_index(&q, rng), Proposal::Sampled(q))
            } else {
                // Deterministic top-k of q: rank r = r-th most likely draft token.
                let mut order: Vec<usize> = (0..V).collect();
                order.sort_by(|&a, &b| q[b].total_cmp(&q[a]));
                (
                    order[*path.last().unwrap() % V] as u32,
                    Proposal::Deterministic,
                )
            };
            let i = tree.push(parent, token, 0.0).unwrap();
            proposals.push(prop);
            node_of.push((path.clone(), i));
        }
        (tree, proposals)
    }

    /// One speculative step from `ctx`: the emitted tokens.
    fn step(&self, ctx: &[u32], rng: &mut StdRng, residual: bool) -> Vec<u32> {
        let (tree, proposals) = self.draft_tree(ctx, rng);
        let mut probs = |node: usize| {
            let mut c = ctx.to_vec();
            c.extend(tree.tokens_to(node).into_iter().skip(1));
            self.target(&c)
        };
        accept_sampling_impl(&tree, &proposals, &mut probs, rng, residual).emitted()
    }

    /// Empirical joint counts of the first two generated tokens, and the exact probabilities.
    fn run(&self, seed: u64, residual: bool) -> (Vec<f64>, Vec<f64>) {
        let ctx0 = vec![3u32];
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts = vec![0f64; V * V];
        for _ in 0..TRIALS {
            let mut out = self.step(&ctx0, &mut rng, residual);
            if out.len() < 2 {
                let mut ctx = ctx0.clone();
                ctx.push(out[0]);
                out.push(self.step(&ctx, &mut rng, residual)[0]);
            }
            counts[out[0] as usize * V + out[1] as usize] += 1.0;
        }
        let p1 = self.target(&ctx0);
        let mut exact = vec![0f64; V * V];
        for a in 0..V {
            let p2 = self.target(&[3, a as u32]);
            for b in 0..V {
                exact[a * V + b] = p1[a] as f64 * p2[b] as f64;
            }
        }
        (counts, exact)
    }
}

/// Chi-square p-value and total-variation distance of counts against exact probabilities.
fn compare(counts: &[f64], exact: &[f64]) -> (f64, f64) {
    let n: f64 = counts.iter().sum();
    let mut chi2 = 0.0;
    let mut cells = 0;
    for (c, p) in counts.iter().zip(exact) {
        if *p > 0.0 {
            chi2 += (c - n * p).powi(2) / (n * p);
            cells += 1;
        } else {
            assert_eq!(*c, 0.0, "a token with zero target probability was emitted");
        }
    }
    let pval = 1.0 - ChiSquared::new((cells - 1) as f64).unwrap().cdf(chi2);
    let tv = 0.5
        * counts
            .iter()
            .zip(exact)
            .map(|(c, p)| (c / n - p).abs())
            .sum::<f64>();
    (pval, tv)
}

fn check(name: &str, setup: Setup, seed: u64) {
    let (counts, exact) = setup.run(seed, true);
    let (pval, tv) = compare(&counts, &exact);
    assert!(
        pval > 0.001 && tv < 0.01,
        "{name}: p-value {pval:.5}, TV {tv:.5}"
    );
}

fn t(paths: &[&[usize]]) -> Template {
    Template::new(paths.iter().map(|p| p.to_vec()).collect()).unwrap()
}

const T1: SamplingParams = SamplingParams {
    temperature: 1.0,
    top_k: 0,
    top_p: 1.0,
};

#[test]
fn chain_of_top1_candidates() {
    check(
        "chain",
        Setup {
            params: T1,
            template: Template::chain(3).unwrap(),
            sampled: false,
        },
        1,
    );
}

#[test]
fn wide_tree_of_deterministic_top_k_candidates() {
    check(
        "wide",
        Setup {
            params: T1,
            template: t(&[&[0], &[1], &[2], &[3]]),
            sampled: false,
        },
        2,
    );
}

#[test]
fn deep_branching_tree() {
    let tpl = t(&[
        &[0],
        &[1],
        &[0, 0],
        &[0, 1],
        &[1, 0],
        &[0, 0, 0],
        &[0, 0, 1],
        &[0, 0, 0, 0],
    ]);
    check(
        "deep",
        Setup {
            params: T1,
            template: tpl,
            sampled: false,
        },
        3,
    );
}

#[test]
fn sampled_candidates_with_draft_distribution() {
    let tpl = t(&[&[0], &[1], &[2], &[0, 0], &[0, 1], &[1, 0]]);
    check(
        "sampled",
        Setup {
            params: T1,
            template: tpl,
            sampled: true,
        },
        4,
    );
}

#[test]
fn temperature_below_one() {
    let p = SamplingParams {
        temperature: 0.6,
        top_k: 0,
        top_p: 1.0,
    };
    check(
        "t=0.6",
        Setup {
            params: p,
            template: t(&[&[0], &[1], &[0, 0]]),
            sampled: false,
        },
        5,
    );
    check(
        "t=0.6 sampled",
        Setup {
            params: p,
            template: t(&[&[0], &[1], &[0, 0]]),
            sampled: true,
        },
        6,
    );
}

#[test]
fn top_p_and_top_k() {
    let p = SamplingParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 0.8,
    };
    check(
        "top-p",
        Setup {
            params: p,
            template: t(&[&[0], &[1], &[2], &[0, 0]]),
            sampled: false,
        },
        7,
    );
    let k = SamplingParams {
        temperature: 0.9,
        top_k: 3,
        top_p: 1.0,
    };
    check(
        "top-k",
        Setup {
            params: k,
            template: t(&[&[0], &[1], &[0, 0]]),
            sampled: true,
        },
        8,
    );
}

#[test]
fn negative_control_biased_acceptor_is_detected() {
    // Without the residual update, rejected candidates can be re-emitted as the bonus token:
    // the test must see it.
    let setup = Setup {
        params: T1,
        template: t(&[&[0], &[1], &[0, 0]]),
        sampled: false,
    };
    let (counts, exact) = setup.run(9, false);
    let (pval, tv) = compare(&counts, &exact);
    assert!(
        pval < 0.001 && tv > 0.01,
        "biased acceptor not detected: p-value {pval}, TV {tv}"
    );
}

#[test]
fn public_entry_point_is_the_lossless_walk() {
    let setup = Setup {
        params: T1,
        template: t(&[&[0], &[1]]),
        sampled: false,
    };
    let ctx = [3u32];
    let mut r1 = StdRng::seed_from_u64(11);
    let mut r2 = StdRng::seed_from_u64(11);
    let (tree, props) = setup.draft_tree(&ctx, &mut r1.clone());
    let mut probs = |n: usize| {
        let mut c = ctx.to_vec();
        c.extend(tree.tokens_to(n).into_iter().skip(1));
        setup.target(&c)
    };
    let a = accept_sampling(&tree, &props, &mut probs, &mut r1);
    let b = accept_sampling_impl(&tree, &props, &mut probs, &mut r2, true);
    assert_eq!(a, b);
}
