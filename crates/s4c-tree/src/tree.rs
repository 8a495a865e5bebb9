//! The token tree arena.

use serde::{Deserialize, Serialize};

use crate::error::TreeError;
use crate::flat::{AncestorMask, FlatTree};

/// Index of the root node.
pub const ROOT: usize = 0;

/// A node of a [`TokenTree`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Node {
    /// Token id.
    pub token: u32,
    /// Parent index (`None` for the root).
    pub parent: Option<usize>,
    /// Distance from the root.
    pub depth: usize,
    /// Rank among its siblings (0 = the parent's best candidate).
    pub rank: usize,
    /// Draft log-probability of this token given its parent.
    pub logprob: f32,
    /// Cumulative log-probability from the root (the root has 0).
    pub score: f32,
}

/// A tree of draft tokens, parents before children, breadth-first by depth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenTree {
    nodes: Vec<Node>,
    /// Sibling links (no allocation per node): first and last child, next sibling.
    links: Vec<Links>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Links {
    first_child: Option<usize>,
    last_child: Option<usize>,
    next_sibling: Option<usize>,
    n_children: usize,
}

const NO_LINKS: Links = Links {
    first_child: None,
    last_child: None,
    next_sibling: None,
    n_children: 0,
};

/// What the KV cache and the output need after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// Accepted draft tokens, root excluded, in order.
    pub tokens: Vec<u32>,
    /// Node indices whose cache entries to keep (root first): the accepted path.
    pub keep: Vec<usize>,
}

impl TokenTree {
    /// A tree holding only the root token.
    pub fn new(root_token: u32) -> Self {
        TokenTree {
            nodes: vec![Node {
                token: root_token,
                parent: None,
                depth: 0,
                rank: 0,
                logprob: 0.0,
                score: 0.0,
            }],
            links: vec![NO_LINKS],
        }
    }

    /// A root-only tree with room for `capacity` nodes.
    pub fn with_capacity(root_token: u32, capacity: usize) -> Self {
        let mut t = TokenTree::new(root_token);
        t.nodes.reserve(capacity);
        t.links.reserve(capacity);
        t
    }

    /// Builds a tree from parallel arrays (`parents[0]` is ignored: node 0 is the root).
    ///
    /// Parents must precede children and depths must not decrease.
    pub fn from_parents(
        tokens: &[u32],
        parents: &[usize],
        logprobs: &[f32],
    ) -> Result<Self, TreeError> {
        let mut t = TokenTree::new(*tokens.first().ok_or(TreeError::ZeroBudget("tree size"))?);
        for (i, &token) in tokens.iter().enumerate().skip(1) {
            let p = *parents.get(i).ok_or(TreeError::BadParent {
                node: i,
                parent: usize::MAX,
            })?;
            t.push(p, token, logprobs.get(i).copied().unwrap_or(0.0))?;
        }
        Ok(t)
    }

    /// Appends a child of `parent`; returns its index.
    ///
    /// Errors when `parent` does not exist or the child would break breadth-first order.
    pub fn push(&mut self, parent: usize, token: u32, logprob: f32) -> Result<usize, TreeError> {
        let rank = self.links.get(parent).map_or(0, |l| l.n_children);
        self.push_ranked(parent, token, logprob, rank)
    }

    /// Like [`TokenTree::push`], with an explicit candidate rank.
    pub fn push_ranked(
        &mut self,
        parent: usize,
        token: u32,
        logprob: f32,
        rank: usize,
    ) -> Result<usize, TreeError> {
        let i = self.nodes.len();
        let Some(&p) = self.nodes.get(parent) else {
            return Err(TreeError::BadParent { node: i, parent });
        };
        let depth = p.depth + 1;
        if self.nodes.last().is_some_and(|last| last.depth > depth) {
            return Err(TreeError::NotBreadthFirst { node: i, depth });
        }
        self.nodes.push(Node {
            token,
            parent: Some(parent),
            depth,
            rank,
            logprob,
            score: p.score + logprob,
        });
        let pl = &mut self.links[parent];
        let prev_last = pl.last_child.replace(i);
        pl.first_child.get_or_insert(i);
        pl.n_children += 1;
        if let Some(prev) = prev_last {
            self.links[prev].next_sibling = Some(i);
        }
        self.links.push(NO_LINKS);
        Ok(i)
    }

    /// Number of nodes, root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the tree is the root alone.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() <= 1
    }

    /// All nodes.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// Children of node `i`, in the order they were added (by rank).
    pub fn children(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(self.links[i].first_child, move |&c| {
            self.links[c].next_sibling
        })
    }

    /// Number of children of node `i`.
    pub fn child_count(&self, i: usize) -> usize {
        self.links[i].n_children
    }

    /// Deepest depth.
    pub fn depth(&self) -> usize {
        self.nodes.last().map_or(0, |n| n.depth)
    }

    /// Node indices from the root to `i`, inclusive.
    pub fn path_to(&self, i: usize) -> Vec<usize> {
        let mut path = vec![i];
        let mut cur = i;
        while let Some(p) = self.nodes[cur].parent {
            path.push(p);
            cur = p;
        }
        path.reverse();
        path
    }

    /// Token ids from the root to `i`, inclusive.
    pub fn tokens_to(&self, i: usize) -> Vec<u32> {
        self.path_to(i)
            .into_iter()
            .map(|j| self.nodes[j].token)
            .collect()
    }

    /// How many leading `tokens` a branch from the root already holds (what
    /// [`TokenTree::graft`] would share instead of adding).
    ///
    /// ```
    /// use s4c_tree::TokenTree;
    ///
    /// let mut t = TokenTree::new(0);
    /// let a = t.push(0, 1, -0.1).unwrap();
    /// t.push(a, 3, -0.2).unwrap();
    /// assert_eq!(t.follow(&[1, 3, 5]), 2);
    /// assert_eq!(t.follow(&[2, 3]), 0);
    /// ```
    pub fn follow(&self, tokens: &[u32]) -> usize {
        self.follow_from_root(tokens).1
    }

    /// The deepest node a branch from the root holds `tokens` down to, and how many it holds.
    fn follow_from_root(&self, tokens: &[u32]) -> (usize, usize) {
        let mut attach = ROOT;
        let mut followed = 0;
        for &token in tokens {
            match self
                .children(attach)
                .find(|&c| self.nodes[c].token == token)
            {
                Some(c) => (attach, followed) = (c, followed + 1),
                None => break,
            }
        }
        (attach, followed)
    }

    /// Nodes without children, in index order.
    pub fn leaves(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|&i| self.links[i].n_children == 0)
            .collect()
    }

    /// The plain arrays one verification forward needs.
    pub fn flatten(&self) -> FlatTree {
        let n = self.len();
        let mut mask = AncestorMask::new(n);
        for i in 0..n {
            mask.set(i, i);
            if let Some(p) = self.nodes[i].parent {
                mask.copy_row_from(i, p);
            }
        }
        let retrieve = self
            .leaves()
            .into_iter()
            .map(|l| {
                let mut path = Vec::with_capacity(self.nodes[l].depth + 1);
                let mut cur = Some(l);
                while let Some(c) = cur {
                    path.push(c);
                    cur = self.nodes[c].parent;
                }
                path.reverse();
                path
            })
            .collect();
        FlatTree {
            tokens: self.nodes.iter().map(|n| n.token).collect(),
            depths: self.nodes.iter().map(|n| n.depth).collect(),
            parents: self
                .nodes
                .iter()
                .map(|n| n.parent.map_or(-1, |p| p as i64))
                .collect(),
            mask,
            retrieve,
        }
    }

    /// Positions of the nodes for a cache holding `prefix_len` tokens: `prefix_len + depth`.
    pub fn positions(&self, prefix_len: usize) -> Vec<usize> {
        self.nodes.iter().map(|n| prefix_len + n.depth).collect()
    }

    /// Checks that `path` is a root-anchored chain and returns its tokens and cache indices.
    pub fn accept(&self, path: &[usize]) -> Result<Accepted, TreeError> {
        let ok = path.first() == Some(&ROOT)
            && path
                .windows(2)
                .all(|w| w[1] < self.len() && self.nodes[w[1]].parent == Some(w[0]));
        if !ok {
            return Err(TreeError::BadAcceptedPath(path.to_vec()));
        }
        Ok(Accepted {
            tokens: path[1..].iter().map(|&i| self.nodes[i].token).collect(),
            keep: path.to_vec(),
        })
    }

    /// The subtree under `node`, re-rooted there (scores rebased to 0 at the new root), with the
    /// map from new to old indices. Lets a caller keep the drafted continuation of an accepted
    /// node.
    pub fn reroot(&self, node: usize) -> (TokenTree, Vec<usize>) {
        let mut t = TokenTree::new(self.nodes[node].token);
        let mut old = vec![node];
        let mut frontier = vec![(node, ROOT)];
        while !frontier.is_empty() {
            let mut next = vec![];
            for (o, new_parent) in frontier {
                for c in self.children(o) {
                    let i = t
                        .push(new_parent, self.nodes[c].token, self.nodes[c].logprob)
                        .expect("breadth-first copy of a valid tree");
                    old.push(c);
                    next.push((c, i));
                }
            }
            frontier = next;
        }
        (t, old)
    }

    /// This tree with the chain `tokens` added below the root, following existing nodes while
    /// their tokens agree and adding new ones (draft log-probability 0) from where they differ;
    /// with the map from this tree's node indices to the new tree's. Nodes stay breadth-first.
    ///
    /// ```
    /// use s4c_tree::TokenTree;
    ///
    /// let mut t = TokenTree::new(0);
    /// let a = t.push(0, 1, -0.1).unwrap();
    /// t.push(0, 2, -0.5).unwrap();
    /// t.push(a, 3, -0.2).unwrap();
    /// let (g, map) = t.graft(&[1, 4, 5]);
    /// assert_eq!(g.tokens_to(g.len() - 1), vec![0, 1, 4, 5]);
    /// assert_eq!(g.len(), 6);
    /// assert_eq!(g.node(map[3]).token, 3);
    /// ```
    pub fn graft(&self, tokens: &[u32]) -> (TokenTree, Vec<usize>) {
        let (attach, followed) = self.follow_from_root(tokens);
        let fresh = &tokens[followed..];
        // Index `len + e` stands for `fresh[e]`, a chain below `attach`.
        let len = self.len();
        let depth = |i: usize| match i.checked_sub(len) {
            None => self.nodes[i].depth,
            Some(e) => self.nodes[attach].depth + 1 + e,
        };
        // Breadth-first: stable by depth, old nodes before new ones at the same depth.
        let mut order: Vec<usize> = (0..len + fresh.len()).collect();
        order.sort_by_key(|&i| depth(i));
        let mut t = TokenTree::with_capacity(self.nodes[ROOT].token, order.len());
        let mut new_index = vec![ROOT; order.len()];
        for &i in &order[1..] {
            let pushed = match i.checked_sub(len) {
                None => {
                    let n = &self.nodes[i];
                    let parent = new_index[n.parent.expect("non-root")];
                    t.push_ranked(parent, n.token, n.logprob, n.rank)
                }
                Some(e) => {
                    let parent = new_index[if e == 0 { attach } else { i - 1 }];
                    t.push(parent, fresh[e], 0.0)
                }
            };
            new_index[i] = pushed.expect("parents precede children, breadth-first order");
        }
        new_index.truncate(len);
        (t, new_index)
    }

    /// Keeps the nodes in `keep` (which must contain the root and be closed under ancestors),
    /// re-indexed breadth-first; siblings keep their relative order.
    pub fn retain(&self, keep: &[bool]) -> TokenTree {
        let mut t = TokenTree::with_capacity(self.nodes[ROOT].token, self.len());
        let mut new_index = vec![usize::MAX; self.len()];
        new_index[ROOT] = ROOT;
        // Index order is breadth-first order already (nodes are stored by depth).
        for i in (1..self.len()).filter(|&i| keep[i]) {
            let p = self.nodes[i].parent.expect("non-root");
            if new_index[p] == usize::MAX {
                continue;
            }
            let n = &self.nodes[i];
            new_index[i] = t
                .push_ranked(new_index[p], n.token, n.logprob, n.rank)
                .expect("ancestor-closed, breadth-first order");
        }
        t
    }
}
