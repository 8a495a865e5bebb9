//! Typed errors of tree construction.

/// What can be wrong with a tree, a template or a budget.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TreeError {
    /// A parent index does not precede its child (out of range or a cycle).
    #[error("node {node}: parent {parent} must be an earlier node (out of range or cyclic)")]
    BadParent {
        /// The child.
        node: usize,
        /// Its claimed parent.
        parent: usize,
    },
    /// Nodes are not breadth-first by depth.
    #[error("node {node} at depth {depth} follows a deeper node; nodes must be ordered by depth")]
    NotBreadthFirst {
        /// The offending node.
        node: usize,
        /// Its depth.
        depth: usize,
    },
    /// A template path whose prefix is not in the template.
    #[error("template path {path:?}: its prefix {prefix:?} is missing; add it to the template")]
    MissingPrefix {
        /// The path.
        path: Vec<usize>,
        /// The missing prefix.
        prefix: Vec<usize>,
    },
    /// A template path that is empty or duplicated.
    #[error("template path {0:?} is empty or appears twice")]
    BadPath(Vec<usize>),
    /// A node budget, depth or width of zero.
    #[error("{0} must be at least 1")]
    ZeroBudget(&'static str),
    /// The candidate provider failed.
    #[error("drafting failed: {0}")]
    Provider(String),
    /// The candidate provider returned fewer candidates than the template needs.
    #[error("node {node} needs candidate rank {rank}, but the provider returned {got}")]
    TooFewCandidates {
        /// The parent node.
        node: usize,
        /// The missing rank.
        rank: usize,
        /// How many came back.
        got: usize,
    },
    /// A path given for acceptance is not a root-anchored chain of the tree.
    #[error("accepted path {0:?} is not a root-to-node chain of the tree")]
    BadAcceptedPath(Vec<usize>),
    /// Malformed template or statistics JSON.
    #[error("invalid JSON: {0}")]
    Json(String),
}
