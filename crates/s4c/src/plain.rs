//! Plain autoregressive decoding: the baseline every speedup is measured against.

use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use burn::tensor::backend::Backend;
use s4c_models::{CausalLm, Input, KvCache, Logits, SequenceInput};
use s4c_verify::Sampler;
use s4c_verify::SamplingParams;
use s4c_verify::{read_argmax, read_row};
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
    let mut seq = PlainSequence::start(model, prompt, options, context, on_tokens)?;
    seq.run(model, on_tokens)?;
    Ok(seq.finish())
}

/// One plain-decoding generation taken a step at a time, so that several can share each
/// forward ([`decode_together`]). Its tokens are those [`generate_plain`] gives.
pub struct PlainSequence<B: Backend> {
    cache: KvCache<B>,
    sampler: Sampler,
    options: GenerateOptions,
    new_ids: Vec<u32>,
    steps: usize,
    start: Instant,
    prefill: Duration,
    stop: Option<StopReason>,
}

impl<B: Backend> PlainSequence<B> {
    /// Checks the options, runs the prefill and takes the first token (given to `on_tokens`).
    pub fn start<M: CausalLm<B>>(
        model: &M,
        prompt: &[u32],
        options: &GenerateOptions,
        context: usize,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<Self> {
        let mut seq = Self::new(model, prompt.len(), options, context)?;
        let out = model.forward(&Input::causal(prompt, 0, Logits::Last), &mut seq.cache)?;
        seq.begin(out.logits, on_tokens)?;
        Ok(seq)
    }

    /// A sequence for a prompt of `prompt_len` tokens, before its prefill: the options checked,
    /// the cache made. Run the prompt through [`Self::cache_mut`] (or [`prefill_together`]),
    /// then [`Self::begin`].
    pub fn new<M: CausalLm<B>>(
        model: &M,
        prompt_len: usize,
        options: &GenerateOptions,
        context: usize,
    ) -> Result<Self> {
        options.validate(prompt_len, context)?;
        Ok(PlainSequence {
            cache: model.new_cache(options.cache_capacity(prompt_len, context)),
            sampler: Sampler::new(options.sampling, options.seed),
            options: options.clone(),
            new_ids: vec![],
            steps: 0,
            start: Instant::now(),
            prefill: Duration::ZERO,
            stop: None,
        })
    }

    /// Its cache.
    pub fn cache_mut(&mut self) -> &mut KvCache<B> {
        &mut self.cache
    }

    /// Takes the first token from the prefill's `logits`.
    pub fn begin(
        &mut self,
        logits: burn::tensor::Tensor<B, 2>,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        let token = next_token(logits, &mut self.sampler)?;
        self.prefill = self.start.elapsed();
        self.push(token, on_tokens);
        Ok(())
    }

    /// The token the next forward runs (the newest one), or `None` once generation has ended.
    pub fn pending(&self) -> Option<u32> {
        match self.stop {
            None => self.new_ids.last().copied(),
            Some(_) => None,
        }
    }

    /// Takes the next token from the last row of the forward's `logits`.
    pub fn advance(
        &mut self,
        logits: burn::tensor::Tensor<B, 2>,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        self.steps += 1;
        let token = next_token(logits, &mut self.sampler)?;
        self.push(token, on_tokens);
        Ok(())
    }

    /// Decodes alone until generation ends: one forward of the newest token per step.
    pub fn run<M: CausalLm<B>>(
        &mut self,
        model: &M,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<()> {
        while let Some(token) = self.pending() {
            let pos = self.cache.len();
            let out =
                model.forward(&Input::causal(&[token], pos, Logits::Last), &mut self.cache)?;
            self.advance(out.logits, on_tokens)?;
        }
        Ok(())
    }

    /// Records a new token and whether generation ends with it.
    fn push(&mut self, token: u32, on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>) {
        self.new_ids.push(token);
        let flow = on_tokens(&[token]);
        self.stop = if flow.is_break() {
            Some(StopReason::Interrupted)
        } else if self.options.stop_tokens.contains(&token) {
            Some(StopReason::StopToken)
        } else if self.new_ids.len() >= self.options.max_new_tokens {
            Some(StopReason::MaxTokens)
        } else if self.cache.len() + 1 > self.cache.capacity() {
            Some(StopReason::ContextFull)
        } else {
            None
        };
    }

    /// Ends generation here (a cancelled request).
    pub fn interrupt(&mut self) {
        self.stop.get_or_insert(StopReason::Interrupted);
    }

    /// The result (call once [`Self::pending`] is `None`, or to cut generation short).
    pub fn finish(self) -> Generation {
        self.finish_with_cache().0
    }

    /// [`Self::finish`], and the cache: the keys and values of the prompt and of every new token
    /// but the last.
    pub fn finish_with_cache(self) -> (Generation, KvCache<B>) {
        let generation = Generation {
            new_ids: self.new_ids,
            steps: self.steps,
            elapsed: self.start.elapsed(),
            prefill: self.prefill,
            stop: self.stop.unwrap_or(StopReason::Interrupted),
        };
        (generation, self.cache)
    }
}

/// The prefills of new sequences (each with its prompt) in one batched forward, then their
/// first tokens; `on_tokens(i, tokens)` receives sequence `i`'s.
pub fn prefill_together<B: Backend, M: CausalLm<B>>(
    model: &M,
    sequences: &mut [(&mut PlainSequence<B>, &[u32])],
    on_tokens: &mut dyn FnMut(usize, &[u32]) -> ControlFlow<()>,
) -> Result<()> {
    let inputs: Vec<Input<'_>> = sequences
        .iter()
        .map(|(_, p)| Input::causal(p, 0, Logits::Last))
        .collect();
    let mut items: Vec<SequenceInput<'_, B>> = sequences
        .iter_mut()
        .zip(&inputs)
        .map(|((s, _), input)| SequenceInput {
            input,
            cache: &mut s.cache,
        })
        .collect();
    let outs = model.forward_batch(&mut items)?;
    drop(items);
    for (i, ((s, _), out)) in sequences.iter_mut().zip(outs).enumerate() {
        s.begin(out.logits, &mut |ids| on_tokens(i, ids))?;
    }
    Ok(())
}

/// One decoding step for every sequence that has not ended, in one batched forward
/// ([`CausalLm::forward_batch`]); `on_tokens(i, tokens)` receives sequence `i`'s new token.
pub fn decode_together<B: Backend, M: CausalLm<B>>(
    model: &M,
    sequences: &mut [&mut PlainSequence<B>],
    on_tokens: &mut dyn FnMut(usize, &[u32]) -> ControlFlow<()>,
) -> Result<()> {
    let live: Vec<(usize, u32)> = sequences
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.pending().map(|t| (i, t)))
        .collect();
    if live.is_empty() {
        return Ok(());
    }
    let tokens: Vec<[u32; 1]> = live.iter().map(|&(_, t)| [t]).collect();
    let inputs: Vec<Input<'_>> = live
        .iter()
        .zip(&tokens)
        .map(|(&(i, _), t)| Input::causal(t, sequences[i].cache.len(), Logits::Last))
        .collect();
    let mut caches: Vec<Option<&mut KvCache<B>>> =
        sequences.iter_mut().map(|s| Some(&mut s.cache)).collect();
    let mut items: Vec<SequenceInput<'_, B>> = live
        .iter()
        .zip(&inputs)
        .filter_map(|(&(i, _), input)| caches[i].take().map(|cache| SequenceInput { input, cache }))
        .collect();
    let outs = model.forward_batch(&mut items)?;
    drop(items);
    drop(caches);
    for ((i, _), out) in live.into_iter().zip(outs) {
        sequences[i].advance(out.logits, &mut |ids| on_tokens(i, ids))?;
    }
    Ok(())
}
