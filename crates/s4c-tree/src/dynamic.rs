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

/// Sort key putting nodes best first: higher cumulative score, then shallower, then earlier.
/// Parents come before their children under this order whenever log-probabilities are ≤ 0.
/// Packed into one integer (score in `f32::total_cmp` order, inverted; depth; index) so
/// selection and sorting compare plain integers.
fn key(tree: &TokenTree, i: usize) -> u128 {
    let n = tree.node(i);
    let bits = n.score.to_bits();
    // Ascending integer order = ascending total_cmp order; inverted so the best comes first.
    let ascending = if bits >> 31 == 1 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    ((!ascending as u128) << 96) | ((n.depth as u128 & 0xFFFF_FFFF) << 64) | i as u128
}

/// The `k` best of `nodes`, best first (a partial selection, then a small sort).
fn top_sorted(tree: &TokenTree, nodes: impl Iterator<Item = usize>, k: usize) -> Vec<usize> {
    let mut keys: Vec<u128> = nodes.map(|i| key(tree, i)).collect();
    if keys.len() > k {
        if k == 0 {
            return vec![];
        }
        keys.select_nth_unstable(k - 1);
        keys.truncate(k);
    }
    keys.sort_unstable();
    keys.into_iter().map(|key| key as u64 as usize).collect()
}

/// The best `max_nodes` draft nodes of `tree` (root always kept), closed under ancestors: with
/// log-probabilities ≤ 0 exactly the best `max_nodes`; otherwise a node whose parent is not kept
/// is dropped.
pub fn keep_best(tree: &TokenTree, max_nodes: usize) -> TokenTree {
    let mut keep = vec![false; tree.len()];
    keep[ROOT] = true;
    for i in top_sorted(tree, 1..tree.len(), max_nodes) {
        let parent = tree.node(i).parent.expect("non-root");
        keep[i] = keep[parent];
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
        let cands = provider.expand(&tree, &frontier, config.top_k)?;
        let mut added = vec![];
        for (&parent, list) in frontier.iter().zip(&cands) {
            for (rank, c) in list.iter().take(config.top_k).enumerate() {
                added.push(tree.push_ranked(parent, c.token, c.logprob, rank)?);
            }
        }
        let mut added = top_sorted(&tree, added.into_iter(), config.top_k);
        added.sort_unstable();
        if added.is_empty() {
            break;
        }
        frontier = added;
    }
    Ok(keep_best(&tree, config.max_nodes))
}
