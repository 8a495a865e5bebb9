//! The S4C engine: composes the target model (`s4c-models`), the drafter (`s4c-draft`), the
//! verification tree (`s4c-tree`) and acceptance (`s4c-verify`) into generation, and hosts the
//! `s4c` command-line program.
//!
//! Plain decoding, the baseline:
//!
//! ```no_run
//! use s4c::plain::{generate_plain, GenerateOptions};
//! use s4c_models::{load, CausalLm, LoadOptions, Message};
//! type B = burn::backend::Flex;
//! # fn main() -> Result<(), s4c::EngineError> {
//! let device = Default::default();
//! let m = load::<B>("models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(), &device, &LoadOptions::default())?;
//! let template = m.template.clone().expect("chat template");
//! let prompt = m.tokenizer.encode(&template.render(&[Message::new("user", "Hi!")]))?;
//! let options = GenerateOptions { max_new_tokens: 32, stop_tokens: s4c::stop_tokens(&m), ..Default::default() };
//! let out = generate_plain(&m.model, &prompt, &options, m.model.max_positions(), &mut |_| std::ops::ControlFlow::Continue(()))?;
//! println!("{}", m.tokenizer.decode(&out.new_ids, true)?);
//! # Ok(()) }
//! ```

pub mod backend;
pub mod cost;
pub mod divergence;
pub mod engine;
pub mod error;
pub mod memory;
pub mod plain;
pub mod speculative;

pub use backend::{with_backend, BackendJob, BackendKind};
pub use engine::{
    Completion, Engine, EngineBuilder, EngineInfo, FinishReason, HeadsChoice, Mode, Prompt,
    Request, TextEngine, Timings, TokenRun, TreeKind, TreeOptions,
};
pub use error::{EngineError, Result};

use burn::tensor::backend::Backend;
use s4c_models::{CausalLm, ChatTemplate, LoadedModel};

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
    let mut v = m.model.config().eos_token_ids.clone();
    if let Some(t) = &m.template {
        v.extend(
            t.stop_strings()
                .iter()
                .filter_map(|s| m.tokenizer.token_id(s)),
        );
    }
    v.sort_unstable();
    v.dedup();
    v
}
