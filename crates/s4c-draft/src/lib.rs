//! The S4C multi-head drafter and its self-distillation training.
//!
//! Not implemented yet: this crate currently exports nothing. See the project's open issue for
//! the design (heads on the target's features, token-conditioned states for syntactic coherence,
//! a feature window for semantic coherence, feature reuse across verification passes).
