//! Dynamic trees (EAGLE-2): expand the most probable nodes depth by depth, keep the best overall.

use serde::{Deserialize, Serialize};

use crate::error::TreeError;
use crate::tree::{TokenTree, ROOT};
use crate::CandidateProvider;

/// Budget of a dynamic tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicConfig {
    /// Beam: nodes expanded per depth, and candidates asked per expanded node.
    pub top_k: usize,
    /// Deepest depth drafted.
    pub max_depth: usize,
    /// Draft nodes kept (root excluded).
    pub max_nodes: usize,
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            top_k: 8,
            max_depth: 5,
            max_nodes: 48,
        }
    }
}

/// Orders nodes best first: higher cumulative score, then shallower, then earlier. Parents come
/// before their children under this order whenever log-probabilities are ≤ 0.
fn best_first(tree: &TokenTree, a: usize, b: usize) -> std::cmp::Ordering {
    let (x, y) = (tree.node(a), tree.node(b));
    y.score
        .total_cmp(&x.score)
        .then(x.depth.cmp(&y.depth))
        .then(a.cmp(&b))
}

/// Keeps the `k` smallest items under `cmp`, sorted (a partial selection, then a small sort).
fn top_sorted(v: &mut Vec<usize>, k: usize, cmp: impl Fn(usize, usize) -> std::cmp::Ordering) {
    if v.len() > k {
        if k == 0 {
            v.clear();
            return;
        }
        v.select_nth_unstable_by(k - 1, |&a, &b| cmp(a, b));
        v.truncate(k);
    }
    v.sort_by(|&a, &b| cmp(a, b));
}

/// The best `max_nodes` draft nodes of `tree` (root always kept), closed under ancestors.
pub fn keep_best(tree: &TokenTree, max_nodes: usize) -> TokenTree {
    let mut order: Vec<usize> = (1..tree.len()).collect();
    top_sorted(&mut order, max_nodes, |a, b| best_first(tree, a, b));
    let mut keep = vec![false; tree.len()];
    keep[ROOT] = true;
    let mut kept = 0;
    for i in order {
        if kept == max_nodes {
            break;
        }
        let parent = tree.node(i).parent.expect("non-root");
        if keep[parent] {
            keep[i] = true;
            kept += 1;
        }
    }
    tree.retain(&keep)
}

/// Builds an EAGLE-2 style tree under `root_token`: at each depth the `top_k` best new nodes (by
/// cumulative log-probability) are expanded with `top_k` candidates each; finally the best
/// `max_nodes` nodes overall are kept, ancestor-closed.
pub fn build_dynamic(
    root_token: u32,
    config: &DynamicConfig,
    provider: &mut dyn CandidateProvider,
) -> Result<TokenTree, TreeError> {
    if config.top_k == 0 {
        return Err(TreeError::ZeroBudget("top_k"));
    }
    if config.max_depth == 0 {
        return Err(TreeError::ZeroBudget("max_depth"));
    }
    if config.max_nodes == 0 {
        return Err(TreeError::ZeroBudget("max_nodes"));
    }
    let k = config.top_k;
    let mut tree = TokenTree::with_capacity(root_token, 1 + k + (config.max_depth - 1) * k * k);
    let mut frontier = vec![ROOT];
    for _ in 0..config.max_depth {
        let cands = provider.expand(&tree, &frontier, config.top_k);
        let mut added = vec![];
        for (&parent, list) in frontier.iter().zip(&cands) {
            for (rank, c) in list.iter().take(config.top_k).enumerate() {
                added.push(tree.push_ranked(parent, c.token, c.logprob, rank)?);
            }
        }
        top_sorted(&mut added, config.top_k, |a, b| best_first(&tree, a, b));
        added.sort_unstable();
        if added.is_empty() {
            break;
        }
        frontier = added;
    }
    Ok(keep_best(&tree, config.max_nodes))
}
