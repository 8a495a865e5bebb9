//! Cost-aware tree sizing: pick the tree that maximises expected accepted tokens per second from
//! measured acceptance rates and the backend's verify-latency curve.

use serde::{Deserialize, Serialize};

use crate::error::TreeError;
use crate::template::Template;
use crate::tree::{TokenTree, ROOT};

/// Acceptance counts per (depth, rank): how often the candidate of that rank was tried (its parent
/// was accepted) and accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AcceptanceStats {
    /// `tried[d][r]`: candidates of rank `r` at depth `d + 1` whose parent was accepted.
    pub tried: Vec<Vec<u64>>,
    /// `accepted[d][r]`: of those, how many were accepted.
    pub accepted: Vec<Vec<u64>>,
}

impl AcceptanceStats {
    /// Empty statistics for depths `1..=max_depth` and ranks `0..max_rank`.
    pub fn new(max_depth: usize, max_rank: usize) -> Self {
        AcceptanceStats {
            tried: vec![vec![0; max_rank]; max_depth],
            accepted: vec![vec![0; max_rank]; max_depth],
        }
    }

    /// Deepest depth tracked.
    pub fn max_depth(&self) -> usize {
        self.tried.len()
    }

    /// Records one verification: every child of an accepted node was tried; the next node of the
    /// accepted path was accepted. `path` is the accepted node path, root first.
    pub fn record(&mut self, tree: &TokenTree, path: &[usize]) {
        for (step, &node) in path.iter().enumerate() {
            let next = path.get(step + 1).copied();
            for c in tree.children(node) {
                let n = tree.node(c);
                let (d, r) = (n.depth - 1, n.rank);
                if d < self.tried.len() && r < self.tried[d].len() {
                    self.tried[d][r] += 1;
                    if Some(c) == next {
                        self.accepted[d][r] += 1;
                    }
                }
            }
        }
    }

    /// Estimated probability that the rank-`rank` candidate at `depth` (≥ 1) is accepted given its
    /// parent was, with one pseudo-trial at rate 0 (untried candidates count as rejected).
    pub fn rate(&self, depth: usize, rank: usize) -> f64 {
        let (t, a) = self.counts(depth, rank);
        a as f64 / (t as f64 + 1.0)
    }

    /// `(tried, accepted)` of the rank-`rank` candidate at `depth` (≥ 1); zeros outside the table.
    pub fn counts(&self, depth: usize, rank: usize) -> (u64, u64) {
        let get = |v: &[Vec<u64>]| {
            v.get(depth.wrapping_sub(1))
                .and_then(|row| row.get(rank))
                .copied()
                .unwrap_or(0)
        };
        (get(&self.tried), get(&self.accepted))
    }

    /// Expected tokens per verification step of `tree` (accepted drafts plus the bonus token):
    /// `1 + Σ_nodes Π_{path} rate(depth, rank)`.
    pub fn expected_accepted_length(&self, tree: &TokenTree) -> f64 {
        let mut reach = vec![0f64; tree.len()];
        reach[ROOT] = 1.0;
        let mut total = 1.0;
        for i in 1..tree.len() {
            let n = tree.node(i);
            reach[i] = reach[n.parent.expect("non-root")] * self.rate(n.depth, n.rank);
            total += reach[i];
        }
        total
    }

    /// The best template of up to `max_nodes` nodes within `max_depth` (see
    /// [`AcceptanceStats::best_paths`]).
    pub fn best_template(&self, max_nodes: usize, max_depth: usize) -> Result<Template, TreeError> {
        let order = self.best_paths(max_nodes, max_depth)?;
        Template::new(order.into_iter().map(|(p, _)| p).collect())
    }

    /// Greedy best-first paths: repeatedly add the candidate path with the highest reach
    /// probability (how Medusa's `mc_sim` trees were made). Each entry is the path and the
    /// expected accepted length of the tree made of it and all earlier entries; every prefix of
    /// the list is a valid template.
    pub fn best_paths(
        &self,
        max_nodes: usize,
        max_depth: usize,
    ) -> Result<Vec<(Vec<usize>, f64)>, TreeError> {
        let ranks = self.tried.first().map_or(1, Vec::len).max(1);
        best_paths_by(&|d, r| self.rate(d, r), ranks, max_nodes, max_depth)
    }
}

/// [`AcceptanceStats::best_paths`] for any acceptance rates: `rate(depth, rank)` (depth ≥ 1) is
/// the probability that the rank-`rank` candidate is accepted given its parent was, for ranks
/// `0..ranks`.
pub fn best_paths_by(
    rate: &dyn Fn(usize, usize) -> f64,
    ranks: usize,
    max_nodes: usize,
    max_depth: usize,
) -> Result<Vec<(Vec<usize>, f64)>, TreeError> {
    if max_nodes == 0 || max_depth == 0 || ranks == 0 {
        return Err(TreeError::ZeroBudget("max_nodes, max_depth and ranks"));
    }
    // Frontier entries: (reach probability, path).
    let mut frontier: Vec<(f64, Vec<usize>)> = (0..ranks).map(|r| (rate(1, r), vec![r])).collect();
    let mut paths = vec![];
    let mut tau = 1.0;
    while paths.len() < max_nodes && !frontier.is_empty() {
        let best = (0..frontier.len())
            .max_by(|&a, &b| {
                frontier[a]
                    .0
                    .total_cmp(&frontier[b].0)
                    .then_with(|| frontier[b].1.cmp(&frontier[a].1))
            })
            .expect("non-empty");
        let (p, path) = frontier.swap_remove(best);
        tau += p;
        // Its children become candidates once it is in.
        let d = path.len();
        if d < max_depth {
            for r in 0..ranks {
                let mut child = path.clone();
                child.push(r);
                frontier.push((p * rate(d + 1, r), child));
            }
        }
        paths.push((path, tau));
    }
    Ok(paths)
}

/// Verify latency as a function of tree size (nodes in the forward, root included), measured on a
/// backend; linear interpolation between points, constant extrapolation at the ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyCurve {
    /// `(tree size, seconds)` sorted by size.
    pub points: Vec<(usize, f64)>,
}

impl LatencyCurve {
    /// A curve from measurements (sorted here).
    pub fn new(mut points: Vec<(usize, f64)>) -> Result<Self, TreeError> {
        if points.is_empty() {
            return Err(TreeError::ZeroBudget("latency points"));
        }
        points.sort_by_key(|p| p.0);
        Ok(LatencyCurve { points })
    }

    /// Interpolated seconds for a tree of `size` nodes.
    pub fn at(&self, size: usize) -> f64 {
        let p = &self.points;
        if size <= p[0].0 {
            return p[0].1;
        }
        for w in p.windows(2) {
            let ((x0, y0), (x1, y1)) = (w[0], w[1]);
            if size <= x1 {
                let t = (size - x0) as f64 / (x1 - x0).max(1) as f64;
                return y0 + t * (y1 - y0);
            }
        }
        p[p.len() - 1].1
    }
}

/// The chosen tree size and what it is expected to give.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SizeChoice {
    /// Draft nodes (root excluded).
    pub nodes: usize,
    /// The template with that many nodes.
    pub template: Template,
    /// Expected tokens per step.
    pub expected_tau: f64,
    /// Expected tokens per second.
    pub expected_tokens_per_s: f64,
}

/// Picks the number of draft nodes that maximises `τ(N) / (latency(N + 1) + draft(N))`, where
/// `draft_seconds(N)` is the drafting cost of an `N`-node tree.
pub fn choose_size(
    stats: &AcceptanceStats,
    latency: &LatencyCurve,
    draft_seconds: &dyn Fn(usize) -> f64,
    max_nodes: usize,
    max_depth: usize,
) -> Result<SizeChoice, TreeError> {
    let order = stats.best_paths(max_nodes, max_depth)?;
    let (mut best_n, mut best_rate) = (1, f64::MIN);
    for (i, (_, tau)) in order.iter().enumerate() {
        let n = i + 1;
        let rate = tau / (latency.at(n + 1) + draft_seconds(n)).max(1e-12);
        if rate > best_rate {
            (best_n, best_rate) = (n, rate);
        }
    }
    let template = Template::new(order[..best_n].iter().map(|(p, _)| p.clone()).collect())?;
    Ok(SizeChoice {
        nodes: best_n,
        template,
        expected_tau: order[best_n - 1].1,
        expected_tokens_per_s: best_rate,
    })
}
