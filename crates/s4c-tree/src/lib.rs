//! Verification trees for speculative decoding (S4C, EAGLE-2, Medusa style).
//!
//! A [`TokenTree`] holds draft tokens as an arena whose node 0 is the root: the last committed
//! token, whose key/value is *not* yet in the KV cache (so one verification forward runs the root
//! and every draft node, and returns the root's feature too). Nodes are stored parents before
//! children, breadth-first by depth, so [`TokenTree::flatten`] gives arrays ready for one forward:
//! tokens, `positions = prefix_len + depth`, and the ancestor-or-self mask.
//!
//! Trees are built from a static [`Template`] (Medusa's top-k index paths), dynamically
//! ([`build_dynamic`], EAGLE-2's best-first expansion), or sized by the backend's verify cost
//! ([`choose_size`], [`AdaptiveSizer`]). This crate knows nothing of Burn.
//!
//! ```
//! use s4c_tree::{Template, TokenTree, Candidate, CandidateProvider, TreeError};
//!
//! // Candidates: at every node, token = parent token + rank + 1.
//! struct Plus;
//! impl CandidateProvider for Plus {
//!     fn expand(&mut self, tree: &TokenTree, nodes: &[usize], k: usize) -> Result<Vec<Vec<Candidate>>, TreeError> {
//!         Ok({
//!         nodes.iter().map(|&n| (0..k as u32)
//!             .map(|r| Candidate { token: tree.node(n).token + r + 1, logprob: -(r as f32) - 1.0 })
//!             .collect()).collect()
//!         })
//!     }
//! }
//! let template = Template::new(vec![vec![0], vec![1], vec![0, 0]]).unwrap();
//! let tree = template.build(100, &mut Plus).unwrap();
//! let flat = tree.flatten();
//! assert_eq!(flat.tokens, vec![100, 101, 102, 102]);
//! assert_eq!(flat.depths, vec![0, 1, 1, 2]);
//! assert!(flat.mask.is_visible(3, 1) && !flat.mask.is_visible(3, 2));
//! ```

#![warn(missing_docs)]

mod adaptive;
mod cost;
mod dynamic;
mod error;
mod flat;
mod lookup;
mod template;
mod tree;

pub use adaptive::{AdaptiveConfig, AdaptiveSizer, StepChoice};
pub use cost::{choose_size, AcceptanceStats, LatencyCurve, SizeChoice};
pub use dynamic::{build_dynamic, DynamicConfig};
pub use error::TreeError;
pub use flat::{AncestorMask, FlatTree};
pub use lookup::{ContextLookup, LookupDraft, LookupStats};
pub use template::Template;
pub use tree::{Accepted, Node, TokenTree, ROOT};

/// A draft candidate: a token and its draft log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub token: u32,
    /// Draft log-probability (≤ 0).
    pub logprob: f32,
}

/// Proposes ranked candidates for the children of tree nodes.
///
/// Called once per depth with every node to expand at that depth, so a drafter can batch them;
/// it may condition on each node's path (S4C's syntactic coherence) by reading `tree`.
pub trait CandidateProvider {
    /// For each of `nodes`, up to `k` candidates, best first; an error (say, the drafter's
    /// forward failed) ends the tree's construction.
    fn expand(
        &mut self,
        tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> Result<Vec<Vec<Candidate>>, TreeError>;
}
