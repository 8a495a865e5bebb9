//! Medusa's typical acceptance — **lossy**: its output does not follow the target distribution.

use rand::rngs::StdRng;
use s4c_tree::{TokenTree, ROOT};

use crate::sampling::sample_index;
use crate::Verdict;

/// Parameters of typical acceptance (Medusa's `posterior_threshold` and `posterior_alpha`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TypicalParams {
    /// Hard ceiling `ε` of the acceptance threshold.
    pub threshold: f32,
    /// Scale `δ` of the entropy-dependent threshold.
    pub alpha: f32,
}

impl Default for TypicalParams {
    fn default() -> Self {
        TypicalParams {
            threshold: 0.09,
            alpha: 0.3,
        }
    }
}

impl TypicalParams {
    /// Medusa's rule: accept `x` when `p(x) > min(ε, δ·exp(−H(p)))`, with
    /// `H(p) = −Σ p log(p + 1e-5)`.
    pub fn accepts(&self, p: &[f32], x: u32) -> bool {
        let h: f32 = -p.iter().map(|&q| q * (q + 1e-5).ln()).sum::<f32>();
        let t = self.threshold.min(self.alpha * (-h).exp());
        p.get(x as usize).is_some_and(|&px| px > t)
    }
}

/// Accepts the longest chain whose every token passes [`TypicalParams::accepts`] under the
/// target distribution at its parent (ties: lowest node index); the bonus is drawn from the
/// target distribution at the last accepted node.
pub fn accept_typical(
    tree: &TokenTree,
    params: &TypicalParams,
    probs: &mut dyn FnMut(usize) -> Vec<f32>,
    rng: &mut StdRng,
) -> Verdict {
    fn longest(
        tree: &TokenTree,
        params: &TypicalParams,
        probs: &mut dyn FnMut(usize) -> Vec<f32>,
        node: usize,
        last_p: &mut Vec<(usize, Vec<f32>)>,
    ) -> Vec<usize> {
        let p = probs(node);
        let mut best = vec![];
        for c in tree.children(node).collect::<Vec<_>>() {
            if params.accepts(&p, tree.node(c).token) {
                let mut path = vec![c];
                path.extend(longest(tree, params, probs, c, last_p));
                if path.len() > best.len() {
                    best = path;
                }
            }
        }
        last_p.push((node, p));
        best
    }
    let mut rows = vec![];
    let mut path = vec![ROOT];
    path.extend(longest(tree, params, probs, ROOT, &mut rows));
    let last = *path.last().expect("root");
    let p = rows
        .into_iter()
        .find(|(n, _)| *n == last)
        .map(|(_, p)| p)
        .unwrap_or_default();
    Verdict {
        tokens: path[1..].iter().map(|&i| tree.node(i).token).collect(),
        bonus: sample_index(&p, rng),
        path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medusa_rule_by_hand() {
        let t = TypicalParams::default();
        // Peaked: p = [0.97, 0.01, 0.01, 0.01]. H = -(0.97 ln 0.97001 + 3 · 0.01 ln 0.01001)
        // = 0.02955 + 0.13813 = 0.16768; δ·e^{-H} = 0.3 · 0.84563 = 0.25369; threshold
        // = min(0.09, 0.25369) = 0.09: 0.97 passes, 0.01 does not.
        let peaked = [0.97f32, 0.01, 0.01, 0.01];
        assert!(t.accepts(&peaked, 0));
        assert!(!t.accepts(&peaked, 1));
        // Flat over 4: H = ln 4 (≈ 1.38625 with the 1e-5), δ·e^{-H} = 0.3/4.0001 = 0.074998 < 0.09;
        // 0.25 passes; with δ = 4, threshold = min(0.09, 0.99998) = 0.09 still passes.
        let flat = [0.25f32; 4];
        assert!(t.accepts(&flat, 2));
        // p(x) = 0.08 between the two thresholds: with ε = 0.09 and δ = 0.3 on this row,
        // threshold = min(0.09, 0.3·e^{-H}); H of [0.84, 0.08, 0.08] = 0.14646 + 0.40412 = 0.55058,
        // 0.3 · e^{-0.55058} = 0.17298 → threshold 0.09 → 0.08 rejected.
        let mid = [0.84f32, 0.08, 0.08];
        assert!(!t.accepts(&mid, 1));
        let loose = TypicalParams {
            threshold: 0.05,
            alpha: 0.3,
        };
        assert!(loose.accepts(&mid, 1));
    }
}
