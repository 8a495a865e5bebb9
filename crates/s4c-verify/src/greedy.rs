//! Greedy acceptance.

use s4c_tree::{TokenTree, ROOT};

use crate::Verdict;

/// Accepts the longest root-to-node chain whose every token equals the target's argmax at its
/// parent; the bonus is the argmax at the last accepted node.
///
/// `argmax[i]` is the target's argmax after node `i`. Tie rule: when several branches are equally
/// long (only possible with duplicate sibling tokens), the one through the lowest node index wins.
pub fn accept_greedy(tree: &TokenTree, argmax: &[u32]) -> Verdict {
    fn longest(tree: &TokenTree, argmax: &[u32], node: usize) -> Vec<usize> {
        let mut best: Vec<usize> = vec![];
        for c in tree.children(node) {
            if tree.node(c).token == argmax[node] {
                let mut p = vec![c];
                p.extend(longest(tree, argmax, c));
                if p.len() > best.len() {
                    best = p;
                }
            }
        }
        best
    }
    let mut path = vec![ROOT];
    path.extend(longest(tree, argmax, ROOT));
    let last = *path.last().expect("root");
    Verdict {
        tokens: path[1..].iter().map(|&i| tree.node(i).token).collect(),
        bonus: argmax[last],
        path,
    }
}
