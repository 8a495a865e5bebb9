//! Llama-family causal language models on [Burn](https://burn.dev), ready for speculative
//! decoding: arbitrary per-token positions, a tree attention mask over `[cached ‖ new]`, final-norm
//! features for every new token, and a KV cache that keeps only the accepted tokens.
//!
//! Load a GGUF file or a Hugging Face folder with [`load`], then call [`CausalLm::forward`].
//!
//! ```no_run
//! use s4c_models::{load, CausalLm, Input, LoadOptions, Logits};
//! type B = burn::backend::Flex;
//! # fn main() -> Result<(), s4c_models::ModelError> {
//! let device = Default::default();
//! let m = load::<B>("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device, &LoadOptions::default())?;
//! let ids = m.tokenizer.encode("The three primary colors are")?;
//! let mut cache = m.model.new_cache(256);
//! let out = m.model.forward(&Input::causal(&ids, 0, Logits::Last), &mut cache)?;
//! assert_eq!(out.logits.dims()[1], m.model.config().vocab_size);
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

mod cache;
mod chat;
mod config;
mod cpu;
mod error;
pub mod gguf;
mod host;
mod llama;
mod lm;
mod loader;
mod mask;
pub mod quant;
#[doc(hidden)]
pub mod testing;
mod tokenizer;
mod weights;

/// Revision of the forward's implementation and of its latency measurement, bumped whenever a
/// change makes forwards cost (or measure) differently, so cost-aware trees re-measure the
/// latency curves they cached for an older one.
pub const FORWARD_REVISION: u32 = 8;

pub use cache::KvCache;
pub use chat::{ChatTemplate, Message, TemplateKind};
pub use config::{Llama3RopeScaling, LlamaConfig};
pub use cpu::{RotaryLayout, WeightFormat};
pub use error::{ModelError, Result};
pub use host::HostTensor;
pub use llama::Llama;
pub use lm::{CausalLm, Input, LmOutput, Logits, ModelDims, SequenceInput};
pub use loader::{
    build_model, convert_to_hf, load, EngineKind, LoadOptions, LoadedModel, ModelFiles,
};
pub use mask::AttentionMask;
pub use tokenizer::{StreamDecoder, Tokenizer};
pub use weights::{write_safetensors, GgufWeights, SafetensorsWeights, WeightSource};
