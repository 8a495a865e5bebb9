//! Lossless speculative sampling over a tree (multi-candidate rejection sampling).

use rand::rngs::StdRng;
use rand::Rng;
use s4c_tree::{TokenTree, ROOT};

use crate::sampling::sample_index;
use crate::Verdict;

/// How a draft node's token was proposed.
#[derive(Debug, Clone, PartialEq)]
pub enum Proposal {
    /// Chosen deterministically (a top-k candidate): accepted with probability `r(x)`.
    Deterministic,
    /// Drawn from this draft distribution `q` (dense over the vocabulary), independently of its
    /// siblings: accepted with probability `min(1, r(x) / q(x))`.
    Sampled(Vec<f32>),
}

/// Walks the tree from the root. At each node the residual `r` starts as the target distribution
/// `p` (from `probs(node)`, already processed by temperature/top-k/top-p); children are tried in
/// order; an accepted child becomes the next node; if none is accepted the bonus token is drawn
/// from `r`. The emitted tokens follow the target distribution exactly.
///
/// `proposals[i]` describes node `i` (index 0, the root, is ignored). Only visited rows are
/// requested from `probs`.
pub fn accept_sampling(
    tree: &TokenTree,
    proposals: &[Proposal],
    probs: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut StdRng,
) -> Verdict {
    accept_sampling_impl(tree, proposals, probs, rng, true)
}

/// The same walk with a deliberately wrong rule when `residual` is false (rejected mass is not
/// removed): exists so tests can show that the distribution tests catch such a bug.
#[doc(hidden)]
pub fn accept_sampling_impl(
    tree: &TokenTree,
    proposals: &[Proposal],
    probs: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut StdRng,
    residual: bool,
) -> Verdict {
    let mut path = vec![ROOT];
    let mut node = ROOT;
    loop {
        let mut r = probs(node);
        let mut next = None;
        for c in tree.children(node) {
            let x = tree.node(c).token as usize;
            let rx = r.get(x).copied().unwrap_or(0.0);
            match proposals.get(c).unwrap_or(&Proposal::Deterministic) {
                Proposal::Deterministic => {
                    if rng.random::<f32>() < rx {
                        next = Some(c);
                        break;
                    }
                    if residual {
                        r[x] = 0.0;
                        normalise(&mut r);
                    }
                }
                Proposal::Sampled(q) => {
                    let qx = q.get(x).copied().unwrap_or(0.0);
                    let accept = if qx <= 0.0 {
                        rx > 0.0
                    } else {
                        rng.random::<f32>() < rx / qx
                    };
                    if accept {
                        next = Some(c);
                        break;
                    }
                    if residual {
                        let mut rq: Vec<f32> =
                            r.iter().zip(q).map(|(a, b)| (a - b).max(0.0)).collect();
                        if normalise(&mut rq) {
                            r = rq;
                        }
                    }
                }
            }
        }
        match next {
            Some(c) => {
                path.push(c);
                node = c;
            }
            None => {
                let bonus = sample_index(&r, rng);
                return Verdict {
                    tokens: path[1..].iter().map(|&i| tree.node(i).token).collect(),
                    bonus,
                    path,
                };
            }
        }
    }
}

/// Scales to sum 1; returns false (leaving `v` unchanged) when the sum is not positive.
fn normalise(v: &mut [f32]) -> bool {
    let s: f64 = v.iter().map(|&x| x as f64).sum();
    if s <= 1e-12 {
        return false;
    }
    let inv = (1.0 / s) as f32;
    v.iter_mut().for_each(|x| *x *= inv);
    true
}
