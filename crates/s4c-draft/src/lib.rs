//! The S4C drafter: small heads on the target's features that propose the tokens the target
//! will most likely say next, with syntactic coherence (each head reads its parent's state and
//! token) and semantic coherence (the initial state attends over recent target features).
//!
//! Also its self-distillation training data ([`data`]) and training ([`train`]).
//!
//! Drafting a tree of 4 chained tokens with (randomly initialised) heads for a tiny target:
//!
//! ```
//! use burn::backend::Flex;
//! use burn::tensor::Tensor;
//! use s4c_draft::{fingerprint, DrafterConfig, Drafter, Drafting, MultiHeadDrafter};
//! use s4c_models::CausalLm;
//! use s4c_tree::Template;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let device = Default::default();
//! let target = s4c_models::testing::tiny_model::<Flex>(64, 0, &device);
//! let heads = MultiHeadDrafter::random(DrafterConfig::new(fingerprint(&target)?), &target, 0)?;
//! // The initial state of the newest committed token, from its feature (no window yet).
//! let hidden = target.config().hidden_size;
//! let feature = Tensor::<Flex, 2>::zeros([1, hidden], &device);
//! let window = Tensor::<Flex, 3>::zeros([1, heads.window(), hidden], &device);
//! let valid = Tensor::<Flex, 2>::zeros([1, heads.window()], &device);
//! let state = heads.initial_states(feature, window, valid);
//! let text = [5, 6, 7];
//! let mut drafting = Drafting::new(&heads, state, &text);
//! let tree = Template::chain(4)?.build(7, &mut drafting)?;
//! assert_eq!(tree.len(), 5); // the root and four drafted tokens
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod config;
mod copy;
pub mod data;
mod error;
pub mod heads;
mod host;

pub use config::{Coherence, DrafterConfig, Fingerprint};
pub use copy::{copy_candidate, CopyCandidate};
pub use error::{DraftError, Result};
pub use heads::Heads;
mod drafter;
pub mod io;

pub use drafter::{fingerprint, Drafter, Drafting, MultiHeadDrafter, NoDrafter};
pub mod train;
