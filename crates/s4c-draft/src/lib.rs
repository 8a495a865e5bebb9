//! The S4C drafter: small heads on the target's features that propose the tokens the target
//! will most likely say next, with syntactic coherence (each head reads its parent's state and
//! token) and semantic coherence (the initial state attends over recent target features).
//!
//! Also its self-distillation training data ([`data`]) and training ([`train`]).

pub mod config;
pub mod copy;
pub mod data;
pub mod error;
pub mod heads;

pub use config::{Coherence, DrafterConfig, Fingerprint};
pub use error::{DraftError, Result};
pub use heads::Heads;
pub mod drafter;
pub mod io;

pub use drafter::{fingerprint, Drafter, Drafting, MultiHeadDrafter, NoDrafter};
pub mod train;
