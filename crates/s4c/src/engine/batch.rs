//! Several requests answered together: every step, each running request contributes its rows —
//! one token (plain decoding) or its verification tree (S4C) — to one batched forward, so the
//! weights are read once for all of them. Each answer is what the request would get alone.

use std::ops::ControlFlow;
use std::time::Instant;

use burn::tensor::backend::Backend;
use s4c_models::{CausalLm, Input, KvCache, LmOutput, Logits, SequenceInput};

use super::sequence::{no_speculation, Decoding, Spec};
use super::{Completion, Engine, Mode, Output, Request};
use crate::error::{EngineError, Result};
use crate::speculative::SpecStep;

/// Where a request's text goes as it is generated; `Break` cancels the request.
pub type TextSink = Box<dyn FnMut(&str) -> ControlFlow<()> + Send>;

/// A request for [`Engine::generate_batch`]: the request, where its text goes as it is
/// generated (`Break` cancels it), and where its completion goes.
pub struct BatchJob {
    /// The request.
    pub request: Request,
    /// Receives the text as it is produced.
    pub on_text: TextSink,
    /// Receives the completion (or the error) once the request ends.
    pub done: Box<dyn FnOnce(Result<Completion>) + Send>,
}

/// A request running in [`Engine::generate_batch`].
struct Running<B: Backend> {
    prompt: Vec<u32>,
    /// Prompt tokens whose keys and values came from the prompt cache.
    cached: usize,
    mode: Mode,
    seq: Decoding<B>,
    out: Output,
    job: BatchJob,
}

impl<B: Backend> Running<B> {
    /// Hands the completion to the job's `done`, and the cache to `engine`'s prompt cache.
    fn complete(self, engine: &Engine<B>) {
        let (run, cache) = self.seq.finish(self.cached);
        engine.keep(&self.prompt, &run.new_ids, cache);
        let mut job = self.job;
        let result = self.out.complete(
            &engine.m.tokenizer,
            self.mode,
            self.prompt,
            run,
            &mut *job.on_text,
        );
        (job.done)(result);
    }

    /// Hands `e` to the job's `done`.
    fn fail(self, e: EngineError) {
        (self.job.done)(Err(e));
    }
}

/// What a running request verifies in a step.
enum Rows {
    /// Plain decoding: its newest token and that token's position.
    Token([u32; 1], usize),
    /// S4C: its drafted tree.
    Tree(Box<SpecStep>),
}

impl<B: Backend> Engine<B> {
    /// Answers several requests together, each in its own mode: every step verifies one token
    /// of each plain request and the drafted tree of each S4C request in one batched forward.
    /// Greedy answers are those of [`Self::generate`]; sampled ones follow the target's
    /// distribution with the request's seed, as alone. Between steps `admit(room)` may hand over
    /// up to `room` more requests (at most `max_running` run at once); each request's `done`
    /// receives its completion or error as soon as it ends. Returns when none is left.
    pub fn generate_batch(
        &self,
        jobs: Vec<BatchJob>,
        max_running: usize,
        admit: &mut dyn FnMut(usize) -> Vec<BatchJob>,
    ) {
        let spec = match self.speculator() {
            Ok(s) => s,
            Err(e) => {
                for job in jobs {
                    (job.done)(Err(EngineError::InvalidOption(e.to_string())));
                }
                return;
            }
        };
        let mut running: Vec<Running<B>> = vec![];
        let mut waiting = jobs;
        loop {
            let new = std::mem::take(&mut waiting);
            let sharing = running.len() + new.len();
            running.extend(self.start_jobs(spec.as_ref(), new, sharing));
            // Hand back the finished ones.
            let mut i = 0;
            while i < running.len() {
                if running[i].seq.is_running() {
                    i += 1;
                } else {
                    running.swap_remove(i).complete(self);
                }
            }
            let room = max_running.max(1).saturating_sub(running.len());
            if room > 0 {
                waiting = admit(room);
            }
            if running.is_empty() && waiting.is_empty() {
                return;
            }
            if !running.is_empty() {
                let sharing = running.len();
                for r in running.iter_mut() {
                    r.seq.set_sharing(sharing);
                }
                self.step(spec.as_ref(), &mut running);
            }
        }
    }

    /// One step of every running request in one forward; a request whose step fails gets its
    /// error through `done`, a failed forward fails them all.
    fn step(&self, spec: Option<&Spec<'_, B>>, running: &mut Vec<Running<B>>) {
        let mut failed: Vec<(usize, EngineError)> = vec![];
        let mut rows: Vec<(usize, Rows)> = vec![];
        for (i, r) in running.iter_mut().enumerate() {
            match (&mut r.seq, spec) {
                (Decoding::Plain(s), _) => {
                    if let Some(t) = s.pending() {
                        let position = s.cache_mut().len();
                        rows.push((i, Rows::Token([t], position)));
                    }
                }
                (Decoding::S4c(s), Some(sp)) => match s.draft(sp) {
                    Ok(step) => rows.push((i, Rows::Tree(Box::new(step)))),
                    Err(e) => failed.push((i, e)),
                },
                (Decoding::S4c(_), None) => failed.push((i, no_speculation())),
            }
        }
        let inputs: Vec<Input<'_>> = rows
            .iter()
            .map(|(_, r)| match r {
                Rows::Token(t, position) => Input::causal(t, *position, Logits::Last),
                Rows::Tree(step) => step.input(),
            })
            .collect();
        let total: usize = inputs.iter().map(|x| x.tokens.len()).sum();
        let t = Instant::now();
        let outs = self.forward_rows(running, rows.iter().map(|(i, _)| *i), &inputs);
        let elapsed = t.elapsed().as_secs_f64();
        let shares: Vec<f64> = inputs
            .iter()
            .map(|x| elapsed * x.tokens.len() as f64 / total.max(1) as f64)
            .collect();
        drop(inputs);
        let outs = match outs {
            Ok(o) => o,
            Err(e) => {
                for r in running.drain(..) {
                    r.fail(EngineError::InvalidOption(format!(
                        "the batched forward failed: {e}"
                    )));
                }
                return;
            }
        };
        let tok = &self.m.tokenizer;
        for (((i, rows), out), share) in rows.into_iter().zip(outs).zip(shares) {
            let Running {
                seq,
                out: text,
                job,
                ..
            } = &mut running[i];
            let on_tokens = &mut |ids: &[u32]| text.push(tok, ids, &mut *job.on_text);
            let stepped = match (seq, rows, spec) {
                (Decoding::Plain(s), Rows::Token(..), _) => s.advance(out.logits, on_tokens),
                (Decoding::S4c(s), Rows::Tree(step), Some(sp)) => {
                    s.accept(sp, *step, out, share, on_tokens)
                }
                _ => Err(EngineError::InvalidOption(
                    "internal: a step's rows do not match its request".into(),
                )),
            };
            if let Err(e) = stepped {
                failed.push((i, e));
            }
        }
        failed.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        for (i, e) in failed {
            running.remove(i).fail(e);
        }
    }

    /// The forward of `inputs`, the `k`-th for the request `which[k]` of `running`.
    fn forward_rows(
        &self,
        running: &mut [Running<B>],
        which: impl Iterator<Item = usize>,
        inputs: &[Input<'_>],
    ) -> Result<Vec<LmOutput<B>>> {
        let mut caches: Vec<Option<&mut KvCache<B>>> = running
            .iter_mut()
            .map(|r| Some(r.seq.cache_mut()))
            .collect();
        let mut items: Vec<SequenceInput<'_, B>> = vec![];
        for (i, input) in which.zip(inputs) {
            let cache = caches[i].take().ok_or_else(|| {
                EngineError::InvalidOption("internal: a request twice in one forward".into())
            })?;
            items.push(SequenceInput { input, cache });
        }
        Ok(self.m.model.forward_batch(&mut items)?)
    }

    /// Starts new batch jobs: checks them and runs their prefills in one forward (their first
    /// steps are planned for `sharing` requests in all); a job that cannot start gets its error
    /// through `done`.
    fn start_jobs(
        &self,
        spec: Option<&Spec<'_, B>>,
        jobs: Vec<BatchJob>,
        sharing: usize,
    ) -> Vec<Running<B>> {
        let mut ready = vec![];
        for job in jobs {
            match self.prepare(spec, &job.request) {
                Ok((prompt, mode, mut seq)) => {
                    let cached = self.reuse(spec, &prompt, &mut seq);
                    ready.push(Running {
                        out: Output::new(&job.request.stop),
                        prompt,
                        cached,
                        mode,
                        seq,
                        job,
                    })
                }
                Err(e) => (job.done)(Err(e)),
            }
        }
        if ready.is_empty() {
            return ready;
        }
        let prompts: Vec<(Vec<u32>, usize)> = ready
            .iter()
            .map(|r| (r.prompt[r.cached..].to_vec(), r.cached))
            .collect();
        let inputs: Vec<Input<'_>> = prompts
            .iter()
            .map(|(p, at)| Input::causal(p, *at, Logits::Last))
            .collect();
        let outs = match self.forward_rows(&mut ready, 0..prompts.len(), &inputs) {
            Ok(o) => o,
            Err(e) => {
                for r in ready {
                    r.fail(EngineError::InvalidOption(format!(
                        "the batched prefill failed: {e}"
                    )));
                }
                return vec![];
            }
        };
        let tok = &self.m.tokenizer;
        let mut started = vec![];
        for (mut r, out) in ready.into_iter().zip(outs) {
            let Running {
                seq,
                out: text,
                job,
                ..
            } = &mut r;
            let on_tokens = &mut |ids: &[u32]| text.push(tok, ids, &mut *job.on_text);
            let begun = match (seq, spec) {
                (Decoding::Plain(s), _) => s.begin(out.logits, on_tokens),
                (Decoding::S4c(s), Some(sp)) => {
                    s.set_sharing(sharing);
                    s.begin(sp, out, on_tokens)
                }
                (Decoding::S4c(_), None) => Err(no_speculation()),
            };
            match begun {
                Ok(()) => started.push(r),
                Err(e) => r.fail(e),
            }
        }
        started
    }

    /// A request's prompt ids, mode and generation before its prefill.
    fn prepare(
        &self,
        spec: Option<&Spec<'_, B>>,
        request: &Request,
    ) -> Result<(Vec<u32>, Mode, Decoding<B>)> {
        let prompt = self.prompt_ids(&request.prompt)?;
        let mode = request.mode.unwrap_or(self.info.mode);
        let seq = self.sequence(spec, &prompt, &self.options(request), mode)?;
        Ok((prompt, mode, seq))
    }
}
