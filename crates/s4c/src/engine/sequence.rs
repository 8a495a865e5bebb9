//! One request's generation, whether it runs alone ([`Engine::generate_tokens`]) or with others
//! ([`Engine::generate_batch`]): its sequence in its mode, the prompt cache's part in its prefill
//! (an earlier conversation's keys and values reused), and its cache kept when it ends.

use std::ops::ControlFlow;

use burn::tensor::backend::Backend;
use s4c_draft::MultiHeadDrafter;
use s4c_models::{CausalLm, Input, KvCache, Llama, Logits};
use s4c_verify::Acceptor;

use super::speculation::acceptor;
use super::{Engine, Mode, TokenRun};
use crate::error::{EngineError, Result};
use crate::plain::{GenerateOptions, PlainSequence};
use crate::speculative::{SpecSequence, Speculator};

/// The speculator S4C requests of an engine share.
pub(super) type Spec<'a, B> = Speculator<'a, B, Llama<B>, Option<MultiHeadDrafter<B>>>;

/// A request's generation, in its mode.
pub(super) enum Decoding<B: Backend> {
    Plain(PlainSequence<B>),
    S4c(SpecSequence<B, Box<dyn Acceptor<B>>>),
}

impl<B: Backend> Decoding<B> {
    pub(super) fn cache_mut(&mut self) -> &mut KvCache<B> {
        match self {
            Decoding::Plain(s) => s.cache_mut(),
            Decoding::S4c(s) => s.cache_mut(),
        }
    }

    pub(super) fn is_running(&self) -> bool {
        match self {
            Decoding::Plain(s) => s.pending().is_some(),
            Decoding::S4c(s) => s.is_running(),
        }
    }

    /// How many requests share the coming forwards (S4C sizes its trees by it).
    pub(super) fn set_sharing(&mut self, sequences: usize) {
        if let Decoding::S4c(s) = self {
            s.set_sharing(sequences);
        }
    }

    /// The tokens and timings, with `cached` prompt tokens from the prompt cache, and the cache.
    pub(super) fn finish(self, cached: usize) -> (TokenRun, KvCache<B>) {
        let (mut run, cache): (TokenRun, _) = match self {
            Decoding::Plain(s) => {
                let (g, c) = s.finish_with_cache();
                (g.into(), c)
            }
            Decoding::S4c(s) => {
                let (g, c) = s.finish_with_cache();
                (g.into(), c)
            }
        };
        run.cached = cached;
        (run, cache)
    }
}

impl<B: Backend> Engine<B> {
    /// The speculator of this engine's S4C sequences (`None` for a plain-decoding engine).
    pub(super) fn speculator(&self) -> Result<Option<Spec<'_, B>>> {
        self.spec
            .as_ref()
            .map(|s| s.speculator(&self.m.model))
            .transpose()
    }

    /// A generation of `mode` after `prompt`, before its prefill.
    pub(super) fn sequence(
        &self,
        spec: Option<&Spec<'_, B>>,
        prompt: &[u32],
        options: &GenerateOptions,
        mode: Mode,
    ) -> Result<Decoding<B>> {
        let context = self.m.model.max_positions();
        Ok(match (mode, spec) {
            (Mode::Plain, _) => Decoding::Plain(PlainSequence::new(
                &self.m.model,
                prompt.len(),
                options,
                context,
            )?),
            (Mode::S4c, Some(sp)) => {
                Decoding::S4c(sp.start(prompt, options, context, acceptor(options)?)?)
            }
            (Mode::S4c, None) => return Err(no_speculation()),
        })
    }

    /// Gives `seq` the prompt cache's entry that shares the most of `prompt` (grown to `seq`'s
    /// capacity); returns how many prompt tokens it holds (0 without a prompt cache or a match).
    /// The prefill still runs the prompt's last tokens that begin the sequence: its last logits,
    /// and for S4C the feature window, so the answer is the one of a whole prefill.
    pub(super) fn reuse(
        &self,
        spec: Option<&Spec<'_, B>>,
        prompt: &[u32],
        seq: &mut Decoding<B>,
    ) -> usize {
        let Some(kept) = &self.prompt_cache else {
            return 0;
        };
        let run = match (&*seq, spec) {
            (Decoding::S4c(_), Some(sp)) => sp.feature_rows(),
            _ => 1,
        };
        let Some((mut cache, cached)) = kept.lock().ok().and_then(|mut k| k.take(prompt, run))
        else {
            return 0;
        };
        let fresh = seq.cache_mut();
        cache.reserve(fresh.capacity());
        *fresh = cache;
        cached
    }

    /// Hands a finished generation's cache — the keys and values of `prompt` and `new_ids` but
    /// the last — to the prompt cache, if the engine keeps one.
    pub(super) fn keep(&self, prompt: &[u32], new_ids: &[u32], cache: KvCache<B>) {
        if let Some(kept) = &self.prompt_cache {
            // A poisoned lock only loses the cache: answers never depend on it.
            if let Ok(mut kept) = kept.lock() {
                kept.put([prompt, new_ids].concat(), cache);
            }
        }
    }

    /// Generates after the token ids `prompt` in `mode`, tokens only; `on_tokens` receives them
    /// as they are accepted and may stop generation. The prefill runs what the prompt cache does
    /// not hold, then each forward verifies one token or S4C's drafted tree until the end.
    pub fn generate_tokens(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        mode: Mode,
        on_tokens: &mut dyn FnMut(&[u32]) -> ControlFlow<()>,
    ) -> Result<TokenRun> {
        let spec = self.speculator()?;
        let spec = spec.as_ref();
        let model = &self.m.model;
        let mut seq = self.sequence(spec, prompt, options, mode)?;
        let cached = self.reuse(spec, prompt, &mut seq);
        let input = Input::causal(&prompt[cached..], cached, Logits::Last);
        let out = model.forward(&input, seq.cache_mut())?;
        match (&mut seq, spec) {
            (Decoding::Plain(s), _) => {
                s.begin(out.logits, on_tokens)?;
                s.run(model, on_tokens)?;
            }
            (Decoding::S4c(s), Some(sp)) => {
                s.begin(sp, out, on_tokens)?;
                s.run(sp, on_tokens)?;
            }
            (Decoding::S4c(_), None) => return Err(no_speculation()),
        }
        let (run, cache) = seq.finish(cached);
        self.keep(prompt, &run.new_ids, cache);
        Ok(run)
    }
}

/// The error of an S4C request to an engine built for plain decoding.
pub(super) fn no_speculation() -> EngineError {
    EngineError::InvalidOption(
        "this engine was built for plain decoding; build it in S4C mode to use S4C".into(),
    )
}
