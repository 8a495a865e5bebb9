//! Plain autoregressive decoding: the baseline every speedup is measured against.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use s4c_models::{CausalLm, Input, Logits};
use s4c_verify::acceptor::{read_argmax, read_row};
use s4c_verify::sampling::Sampler;
use s4c_verify::SamplingParams;
use serde::Serialize;

use crate::error::{EngineError, Result};

/// Options shared by every decoding mode.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    /// Maximum number of new tokens (≥ 1).
    pub max_new_tokens: usize,
    /// How logits become tokens.
    pub sampling: SamplingParams,
    /// Seed of the sampler.
    pub seed: u64,
    /// Tokens that end generation (kept in the output).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions {
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            seed: 0,
            stop_tokens: vec![],
        }
    }
}

impl GenerateOptions {
    /// The KV-cache capacity plain decoding uses for a prompt of `prompt_len` tokens: room for
    /// every new token, within the model's `context`.
    pub fn cache_capacity(&self, prompt_len: usize, context: usize) -> usize {
        (prompt_len + self.max_new_tokens).min(context)
    }

    /// Checks the options against a model's context and a prompt.
    pub fn validate(&self, prompt_len: usize, context: usize) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(EngineError::InvalidOption(
                "--max-new-tokens must be at least 1".into(),
            ));
        }
        if prompt_len == 0 {
            return Err(EngineError::InvalidOption("the prompt is empty".into()));
        }
        if prompt_len >= context {
            return Err(EngineError::InvalidOption(format!(
                "the prompt has {prompt_len} tokens but the context holds {context}; shorten the prompt"
            )));
        }
        self.sampling.validate().map_err(EngineError::InvalidOption)
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// A stop token was produced.
    StopToken,
    /// `max_new_tokens` were produced.
    MaxTokens,
    /// The context (KV cache) is full.
    ContextFull,
    /// The caller's token callback asked to stop (a stop string, a cancelled request).
    Interrupted,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    /// New token ids (a final stop token included).
    pub new_ids: Vec<u32>,
    /// Forward passes after prefill (plain decoding: one per token after the first).
    pub steps: usize,
    /// Wall time of the whole generation, prefill included.
    pub elapsed: Duration,
    /// Wall time of the prefill forward.
    pub prefill: Duration,
    /// Why it ended.
    pub stop: StopReason,
}

impl Generation {
    /// New tokens per second over the whole generation, prefill included.
    pub fn tokens_per_second(&self) -> f64 {
        self.new_ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// The next token from the last row of `logits`: argmax on device when greedy (only the id
/// crosses to the host), otherwise the shared sampler on the row.
pub fn next_token<B: Backend>(
    logits: burn::tensor::Tensor<B, 2>,
    sampler: &mut Sampler,
) -> Result<u32> {
    let [n, v] = logits.dims();
    if sampler.params.is_greedy() {
        Ok(read_argmax(logits.slice([n - 1..n, 0..v]))?[0])
    } else {
        Ok(sampler.sample(&read_row(&logits, n - 1)?))
    }
}

/// Plain decoding: prefill, then one forward per token. `on_tokens` receives each new token as
/// it is produced (for streaming); returning [`ControlFlow::Break`] ends generation there
/// ([`StopReason::Interrupted`]).
pub fn generate_plain<B: Backend, M: CausalLm<B>>(
    model: &M,
    prompt: &[u32],
    options: &GenerateOptions,
    context: usize,
    on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
) -> Result<Generation> {
    options.validate(prompt.len(), context)?;
    let start = Instant::now();
    let mut cache = model.new_cache(options.cache_capacity(prompt.len(), context));
    let mut sampler = Sampler::new(options.sampling, options.seed);
    let out = model.forward(&Input::causal(prompt, 0, Logits::Last), &mut cache)?;
    let mut token = next_token(out.logits, &mut sampler)?;
    let prefill = start.elapsed();
    let mut new_ids = vec![token];
    let mut flow = on_tokens(&[token]);
    let mut steps = 0;
    let stop = loop {
        if flow.is_break() {
            break StopReason::Interrupted;
        }
        if options.stop_tokens.contains(&token) {
            break StopReason::StopToken;
        }
        if new_ids.len() >= options.max_new_tokens {
            break StopReason::MaxTokens;
        }
        if cache.len() + 1 > cache.capacity() {
            break StopReason::ContextFull;
        }
        let pos = cache.len();
        let out = model.forward(&Input::causal(&[token], pos, Logits::Last), &mut cache)?;
        steps += 1;
        token = next_token(out.logits, &mut sampler)?;
        new_ids.push(token);
        flow = on_tokens(&[token]);
    };
    Ok(Generation {
        new_ids,
        steps,
        elapsed: start.elapsed(),
        prefill,
        stop,
    })
}
