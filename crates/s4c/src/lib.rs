//! The S4C engine: composes the target model (`s4c-models`), the drafter (`s4c-draft`), the
//! verification tree (`s4c-tree`) and acceptance (`s4c-verify`) into generation, and hosts the
//! `s4c` command-line program and its OpenAI-compatible server.
//!
//! [`EngineBuilder`] gives what `s4c generate` does by default — the model from a GGUF file or a
//! Hugging Face folder, the draft heads found for it, the cost-aware tree with context lookup,
//! the model's chat template:
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use s4c::{EngineBuilder, Request};
//! use s4c_models::Message;
//! # fn main() -> Result<(), s4c::EngineError> {
//! let engine = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")
//!     .build::<burn::backend::Flex>(&Default::default())?;
//! let request = Request::chat(vec![Message::new("user", "Hi!")]).max_new_tokens(32);
//! let answer = engine.generate(&request, &mut |piece| {
//!     print!("{piece}"); // streamed as it is generated
//!     ControlFlow::Continue(()) // Break cancels
//! })?;
//! println!("\n{:.1} tok/s, τ {:.2}", answer.timings.tokens_per_second, answer.timings.tau);
//! # Ok(()) }
//! ```
//!
//! Lower down, [`plain::generate_plain`] and [`speculative::SpeculativeGenerator`] run any
//! [`s4c_models::CausalLm`] with any [`s4c_draft::Drafter`] and [`s4c_verify::Acceptor`];
//! [`plain::PlainSequence`] and [`speculative::SpecSequence`] are the same a step at a time, for
//! callers that batch several sequences into one forward ([`Engine::generate_batch`] does).

#![warn(missing_docs)]

mod backend;
pub mod cost;
mod divergence;
mod engine;
mod error;
mod memory;
pub mod plain;
pub mod server;
pub mod speculative;

pub use backend::{with_backend, BackendJob, BackendKind};
pub use divergence::{first_divergence, Divergence, PositionLogits};
pub use engine::{
    heads_search_path, BatchJob, Completion, Engine, EngineBuilder, EngineInfo, FinishReason,
    HeadsChoice, Mode, Prompt, Request, TextEngine, TextSink, Timings, TokenRun, TreeKind,
    TreeOptions,
};
pub use error::{EngineError, Result};
pub use memory::peak_rss_mib;

use burn::tensor::backend::Backend;
use s4c_models::{ChatTemplate, LoadedModel};

/// The ids of `text` as `template` renders it, after the model's BOS where the template needs
/// one (the rendered text holds none).
pub fn template_ids<B: Backend>(
    m: &LoadedModel<B>,
    template: &ChatTemplate,
    text: &str,
) -> Result<Vec<u32>> {
    let mut ids = vec![];
    if template.needs_bos() {
        ids.extend(m.model.config().bos_token_id);
    }
    ids.extend(m.tokenizer.encode(text)?);
    Ok(ids)
}

/// The tokens that end an answer: the model's EOS ids and the chat template's end-of-turn tokens.
pub fn stop_tokens<B: Backend>(m: &LoadedModel<B>) -> Vec<u32> {
    engine::stop_tokens(m, m.template.as_ref())
}
