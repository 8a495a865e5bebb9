//! What a caller asks an [`super::Engine`] for, and what it answers.

use s4c_models::Message;
use s4c_verify::SamplingParams;
use serde::Serialize;

use super::{Mode, TokenRun};
use crate::plain::StopReason;
use crate::speculative::SpecStats;

/// The text to continue.
#[derive(Clone, Debug, PartialEq)]
pub enum Prompt {
    /// Chat messages, rendered with the model's chat template (the assistant's turn opened).
    Chat(Vec<Message>),
    /// Text, no template: after the BOS the model's tokenizer puts first (Llama 2 and 3 do,
    /// SmolLM2 does not), as llama.cpp and transformers' `tokenizer(text)` do.
    Text(String),
    /// Token ids as they are.
    Ids(Vec<u32>),
}

/// One generation request. Build it with [`Request::chat`] or [`Request::text`] and the setters.
#[derive(Clone, Debug)]
pub struct Request {
    /// The prompt.
    pub prompt: Prompt,
    /// Most new tokens (≥ 1).
    pub max_new_tokens: usize,
    /// How logits become tokens (temperature 0: greedy).
    pub sampling: SamplingParams,
    /// Seed of sampling.
    pub seed: u64,
    /// Texts that end the answer; the answer stops before the first one.
    pub stop: Vec<String>,
    /// Generate past end-of-sequence tokens (benchmarks with fixed lengths).
    pub ignore_eos: bool,
    /// The decoding mode (default: the engine's).
    pub mode: Option<Mode>,
}

impl Request {
    /// A request answering `messages`, greedy, 256 tokens at most.
    pub fn chat(messages: Vec<Message>) -> Self {
        Self::new(Prompt::Chat(messages))
    }

    /// A request continuing `text`, greedy, 256 tokens at most.
    pub fn text(text: impl Into<String>) -> Self {
        Self::new(Prompt::Text(text.into()))
    }

    /// A request for `prompt`, greedy, 256 tokens at most.
    pub fn new(prompt: Prompt) -> Self {
        Request {
            prompt,
            max_new_tokens: 256,
            sampling: SamplingParams::greedy(),
            seed: 0,
            stop: vec![],
            ignore_eos: false,
            mode: None,
        }
    }

    /// Sets the most new tokens.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }

    /// Sets sampling (temperature, top-k, top-p) and its seed.
    pub fn sampling(mut self, sampling: SamplingParams, seed: u64) -> Self {
        self.sampling = sampling;
        self.seed = seed;
        self
    }

    /// Sets the stop strings.
    pub fn stop(mut self, stop: Vec<String>) -> Self {
        self.stop = stop;
        self
    }

    /// Sets the decoding mode.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }
}

/// Why an answer ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// The token limit or the end of the context.
    Length,
    /// The caller cancelled it.
    Cancelled,
}

/// Counts and times of one answer, in llama.cpp's server names where it has them.
#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    /// How it was decoded.
    pub mode: Mode,
    /// Prompt tokens.
    pub prompt_n: usize,
    /// Prompt tokens reused from the prompt cache (not run again).
    pub cache_n: usize,
    /// Milliseconds of the prompt's forward (prefill, first token included).
    pub prompt_ms: f64,
    /// New tokens.
    pub predicted_n: usize,
    /// Milliseconds after the prefill.
    pub predicted_ms: f64,
    /// New tokens per second after the first.
    pub predicted_per_second: f64,
    /// New tokens per second over the whole generation, prefill included (the benchmark
    /// protocol's figure).
    pub tokens_per_second: f64,
    /// Forward passes after the prefill.
    pub steps: usize,
    /// Mean tokens per forward, τ (plain decoding: 1).
    pub tau: f64,
    /// Draft tokens verified.
    pub draft_n: usize,
    /// Draft tokens accepted.
    pub draft_n_accepted: usize,
}

impl Timings {
    pub(crate) fn new(mode: Mode, prompt_n: usize, run: &TokenRun) -> Self {
        let total = run.elapsed.as_secs_f64();
        let prefill = run.prefill.as_secs_f64();
        let n = run.new_ids.len();
        let after = (total - prefill).max(1e-9);
        Timings {
            mode,
            prompt_n,
            cache_n: run.cached,
            prompt_ms: prefill * 1e3,
            predicted_n: n,
            predicted_ms: (total - prefill) * 1e3,
            predicted_per_second: n.saturating_sub(1) as f64 / after,
            tokens_per_second: n as f64 / total.max(1e-9),
            steps: run.steps,
            tau: n as f64 / (run.steps + 1) as f64,
            draft_n: run.spec.as_ref().map_or(0, |s| s.drafted),
            draft_n_accepted: run.spec.as_ref().map_or(0, |s| s.accepted),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Clone, Debug, Serialize)]
pub struct Completion {
    /// The answer's text, up to the first stop string (special tokens left out).
    pub text: String,
    /// The prompt's token ids.
    pub prompt_ids: Vec<u32>,
    /// The new token ids (a final stop token included; tokens of a stop string too).
    pub new_ids: Vec<u32>,
    /// Why it ended.
    pub finish: FinishReason,
    /// Why generation ended, in detail.
    pub stop: StopReason,
    /// Counts and times.
    pub timings: Timings,
    /// S4C's per-step statistics (S4C mode).
    pub spec: Option<SpecStats>,
}
