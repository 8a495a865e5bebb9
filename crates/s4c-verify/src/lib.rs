//! Parallel acceptance for speculative decoding: given a verification tree and the target
//! model's logits at every node (one forward pass), decide which branch is accepted and which
//! bonus token follows.
//!
//! - [`GreedyAcceptor`]: the longest branch whose tokens equal the target's argmax; output equals
//!   plain greedy decoding. Only argmax ids cross to the host.
//! - [`SamplingAcceptor`]: lossless speculative sampling over a tree (multi-candidate
//!   rejection sampling); the emitted tokens follow exactly the target distribution after
//!   temperature, top-k and top-p — the same [`Sampler`] code plain decoding uses.
//! - [`TypicalAcceptor`]: Medusa's typical acceptance. **Lossy**: faster, but its output does
//!   not follow the target distribution. Never the default.
//!
//! ```
//! use s4c_verify::{accept_greedy, argmax};
//! use s4c_tree::TokenTree;
//! // Root 5 with children 7 (rank 0) and 8 (rank 1); 8 has child 9.
//! let tree = TokenTree::from_parents(&[5, 7, 8, 9], &[0, 0, 0, 2], &[]).unwrap();
//! // Target argmax per node: after 5 → 8, after 8 → 9, after 9 → 4.
//! let verdict = accept_greedy(&tree, &[8, 1, 9, 4]);
//! assert_eq!(verdict.path, vec![0, 2, 3]);
//! assert_eq!(verdict.tokens, vec![8, 9]);
//! assert_eq!(verdict.bonus, 4);
//! assert_eq!(argmax(&[0.1, 3.0, 3.0]), 1); // ties go to the lowest id
//! ```

#![warn(missing_docs)]

mod acceptor;
mod greedy;
mod sampling;
mod speculative;
mod typical;

pub use acceptor::{
    read_argmax, read_row, Acceptor, GreedyAcceptor, SamplingAcceptor, TypicalAcceptor, VerifyError,
};
pub use greedy::accept_greedy;
pub use sampling::{argmax, sample_index, Sampler, SamplingParams};
#[doc(hidden)]
pub use speculative::accept_sampling_impl;
pub use speculative::{accept_sampling, Proposal};
pub use typical::{accept_typical, TypicalParams};

/// The outcome of verifying one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Accepted node indices, root first (the KV-cache entries to keep).
    pub path: Vec<usize>,
    /// Accepted draft tokens (root excluded), in order.
    pub tokens: Vec<u32>,
    /// The target's token after the last accepted node.
    pub bonus: u32,
}

impl Verdict {
    /// Tokens this step emits: accepted drafts then the bonus token.
    pub fn emitted(&self) -> Vec<u32> {
        let mut v = self.tokens.clone();
        v.push(self.bonus);
        v
    }

    /// Whether a draft was accepted at each depth `1..=max_depth`.
    pub fn accepted_per_depth(&self, max_depth: usize) -> Vec<bool> {
        (1..=max_depth).map(|d| self.tokens.len() >= d).collect()
    }
}
