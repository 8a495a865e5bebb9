//! The engine: what `s4c generate` does by default, as a library — the model from a GGUF file or
//! an HF folder, the heads found for it, the cost-aware tree with context lookup, the model's
//! chat template — behind [`EngineBuilder`], with typed requests, streaming and cancellation.
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use s4c::{EngineBuilder, Request};
//! use s4c_models::Message;
//! # fn main() -> Result<(), s4c::EngineError> {
//! let engine = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")
//!     .build::<burn::backend::Flex>(&Default::default())?;
//! let request = Request::chat(vec![Message::new("user", "Why is the sky blue?")]).max_new_tokens(64);
//! let answer = engine.generate(&request, &mut |piece| {
//!     print!("{piece}");
//!     ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens, τ {:.2}", answer.timings.predicted_n, answer.timings.tau);
//! # Ok(()) }
//! ```

mod batch;
mod prompt_cache;
mod request;
mod sequence;
mod speculation;
mod text;

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::{backend::Backend, DType};
use s4c_models::{
    load, CausalLm, ChatTemplate, EngineKind, LoadOptions, LoadedModel, TemplateKind, Tokenizer,
};
use serde::Serialize;
use serde_json::Value;

pub use batch::{BatchJob, TextSink};
pub use request::{Completion, FinishReason, Prompt, Request, Timings};

pub use speculation::{heads_search_path, TreeKind, TreeOptions};

use crate::backend::{with_backend, BackendJob, BackendKind};
use crate::divergence::{first_divergence, Divergence};
use crate::error::{EngineError, Result};
use crate::plain::{GenerateOptions, StopReason};
use crate::speculative::SpecStats;
use prompt_cache::PromptCache;
use speculation::{find_heads, speculation, Speculation};
use text::TextStream;

/// How tokens are decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// One forward per token (the baseline).
    Plain,
    /// S4C speculative decoding: draft heads propose a tree, one forward verifies it.
    S4c,
}

/// Which heads an engine drafts with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HeadsChoice {
    /// The first heads for the model on [`heads_search_path`].
    #[default]
    Search,
    /// These heads (an error if they do not load or were made for another model).
    File(PathBuf),
}

/// Options of an [`Engine`]; the defaults are `s4c generate`'s.
#[derive(Clone, Debug)]
pub struct EngineBuilder {
    model: PathBuf,
    load: LoadOptions,
    heads: HeadsChoice,
    mode: Option<Mode>,
    tree: TreeOptions,
    template: Option<TemplateKind>,
    prompt_cache: usize,
}

impl EngineBuilder {
    /// An engine for the model at `model`: a GGUF file or a Hugging Face folder.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        EngineBuilder {
            model: model.into(),
            load: LoadOptions::default(),
            heads: HeadsChoice::Search,
            mode: None,
            tree: TreeOptions::default(),
            template: None,
            prompt_cache: 0,
        }
    }

    /// The model file or folder.
    pub fn model_path(&self) -> &std::path::Path {
        &self.model
    }

    /// How the model is loaded (engine, weight types, threads, context length).
    pub fn load_options(mut self, options: LoadOptions) -> Self {
        self.load = options;
        self
    }

    /// Which heads to draft with (default: search for them).
    pub fn heads(mut self, heads: HeadsChoice) -> Self {
        self.heads = heads;
        self
    }

    /// The decoding mode (default: S4C when heads are found, plain otherwise).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = Some(mode);
        self
    }

    /// The verification tree.
    pub fn tree(mut self, tree: TreeOptions) -> Self {
        self.tree = tree;
        self
    }

    /// Keep the keys and values of up to `slots` finished answers (default 0: none), so that a
    /// request whose prompt starts with an earlier conversation — the next turn of a chat — runs
    /// only its new tokens ([`Engine::generate`] and [`Engine::generate_batch`] alike). Answers
    /// are the same: a token's keys and values do not depend on the forward that made them on
    /// the CPU engine (on GPU backends they may differ in the last bits).
    pub fn prompt_cache(mut self, slots: usize) -> Self {
        self.prompt_cache = slots;
        self
    }

    /// A built-in chat template instead of the model's own.
    pub fn template(mut self, kind: TemplateKind) -> Self {
        self.template = Some(kind);
        self
    }

    /// Loads the model, finds the heads, sizes the tree on `device` of backend `B`, and warms the
    /// engine up (a four-token generation) so no request pays one-time costs.
    pub fn build<B: Backend>(&self, device: &B::Device) -> Result<Engine<B>> {
        if self.load.max_context < 2 {
            return Err(EngineError::InvalidOption(
                "the context (--context) must hold at least 2 tokens".into(),
            ));
        }
        if self.load.engine.resolve::<B>(device) == EngineKind::Tensors {
            check_dtype::<B>(device, self.load.dtype.unwrap_or(DType::F32))?;
            check_dtype::<B>(device, self.load.compute_dtype)?;
        }
        let m = load::<B>(&self.model, device, &self.load)?;
        let given = match &self.heads {
            HeadsChoice::File(p) => Some(p.as_path()),
            HeadsChoice::Search => None,
        };
        let heads = match self.mode {
            Some(Mode::Plain) if given.is_none() => None,
            _ => find_heads(&m, given)?,
        };
        let mode = self.mode.unwrap_or(if heads.is_some() {
            Mode::S4c
        } else {
            Mode::Plain
        });
        let backend = B::name(device);
        let weight_types = m.model.weight_types().join("+").to_lowercase();
        let spec = match (mode, heads) {
            (Mode::Plain, None) => None,
            (_, heads) => {
                let key = model_key(&m, &backend, &weight_types);
                Some(speculation(&m, heads, &self.tree, &key)?)
            }
        };
        let template = match self.template {
            Some(kind) => Some(ChatTemplate::new(kind)),
            None => m.template.clone(),
        };
        let info = EngineInfo {
            model: self.model.clone(),
            backend,
            weight_types,
            compute_dtype: format!("{:?}", m.model.compute_dtype()).to_lowercase(),
            kv_dtype: format!("{:?}", m.model.kv_dtype()).to_lowercase(),
            engine: m.model.engine().to_string(),
            threads: m.model.threads().map(|t| t.count()),
            isa: m.model.threads().map(|t| t.isa().name().to_string()),
            context: m.model.max_positions(),
            mode,
            heads: spec.as_ref().and_then(|s| s.heads.clone()),
            tree: spec.as_ref().map(|s| s.info.clone()),
            chat_template: template.as_ref().map(|t| t.describe()),
            prompt_cache: self.prompt_cache,
        };
        let stop_tokens = stop_tokens(&m, template.as_ref());
        let mut engine = Engine {
            m,
            spec,
            template,
            stop_tokens,
            info,
            prompt_cache: None,
        };
        engine.warm_up()?;
        // After the warm-up, whose answer no request continues.
        engine.prompt_cache = (self.prompt_cache > 0)
            .then(|| std::sync::Mutex::new(PromptCache::new(self.prompt_cache)));
        Ok(engine)
    }

    /// [`Self::build`] on the default device of the backend chosen at run time, behind
    /// [`TextEngine`].
    pub fn open(&self, backend: BackendKind) -> Result<Box<dyn TextEngine>> {
        struct Open<'a>(&'a EngineBuilder);
        impl BackendJob for Open<'_> {
            type Output = Box<dyn TextEngine>;
            fn run<B: Backend>(self, device: &B::Device) -> Result<Self::Output> {
                Ok(Box::new(self.0.build::<B>(device)?))
            }
        }
        with_backend(backend, Open(self))
    }
}

/// What an engine runs: model, backend, types, mode, heads and tree.
#[derive(Clone, Debug, Serialize)]
pub struct EngineInfo {
    /// The model file or folder.
    pub model: PathBuf,
    /// The backend and device.
    pub backend: String,
    /// The weight matrices' storage types, e.g. `q4_1+q8_0`.
    pub weight_types: String,
    /// The type of activations.
    pub compute_dtype: String,
    /// The storage type of the KV cache.
    pub kv_dtype: String,
    /// The engine running the forward (`cpu` or `tensors`).
    pub engine: String,
    /// CPU engine: threads.
    pub threads: Option<usize>,
    /// CPU engine: the instruction set of its kernels.
    pub isa: Option<String>,
    /// The longest context (prompt and answer).
    pub context: usize,
    /// The default decoding mode.
    pub mode: Mode,
    /// The heads drafted with, if any.
    pub heads: Option<PathBuf>,
    /// The tree and context lookup (S4C mode).
    pub tree: Option<Value>,
    /// The chat template (`None`: the model names none).
    pub chat_template: Option<String>,
    /// Finished answers whose keys and values are kept for later prompts (0: none).
    pub prompt_cache: usize,
}

/// A model ready to generate: [`EngineBuilder::build`] makes one.
pub struct Engine<B: Backend> {
    m: LoadedModel<B>,
    spec: Option<Speculation<B>>,
    template: Option<ChatTemplate>,
    stop_tokens: Vec<u32>,
    info: EngineInfo,
    /// Finished answers' caches ([`EngineBuilder::prompt_cache`]).
    prompt_cache: Option<std::sync::Mutex<PromptCache<B>>>,
}

/// One generation's tokens, before they become text ([`Engine::generate_tokens`]).
#[derive(Clone, Debug, Serialize)]
pub struct TokenRun {
    /// New token ids (a final stop token included).
    pub new_ids: Vec<u32>,
    /// Why it ended.
    pub stop: StopReason,
    /// Wall time of the whole generation, prefill included.
    pub elapsed: std::time::Duration,
    /// Wall time of the prefill.
    pub prefill: std::time::Duration,
    /// Forward passes after the prefill.
    pub steps: usize,
    /// S4C's per-step statistics (S4C mode).
    pub spec: Option<SpecStats>,
    /// Prompt tokens whose keys and values came from the prompt cache (not run by the prefill).
    pub cached: usize,
}

impl From<crate::plain::Generation> for TokenRun {
    fn from(g: crate::plain::Generation) -> Self {
        TokenRun {
            new_ids: g.new_ids,
            stop: g.stop,
            elapsed: g.elapsed,
            prefill: g.prefill,
            steps: g.steps,
            spec: None,
            cached: 0,
        }
    }
}

impl From<crate::speculative::SpecGeneration> for TokenRun {
    fn from(g: crate::speculative::SpecGeneration) -> Self {
        TokenRun {
            new_ids: g.new_ids,
            stop: g.stop,
            elapsed: g.elapsed,
            prefill: g.prefill,
            steps: g.stats.steps,
            spec: Some(g.stats),
            cached: 0,
        }
    }
}

impl TokenRun {
    /// New tokens per second over the whole generation, prefill included.
    pub fn tokens_per_second(&self) -> f64 {
        self.new_ids.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// New tokens per second after the prefill: the tokens after the prefill's first one over
    /// the time after it (what speculation speeds up; the prefill is the same in both modes).
    pub fn decode_tokens_per_second(&self) -> f64 {
        let decode_s = self.elapsed.saturating_sub(self.prefill).as_secs_f64();
        self.new_ids.len().saturating_sub(1) as f64 / decode_s.max(1e-9)
    }
}

impl<B: Backend> Engine<B> {
    /// The loaded model: network, tokenizer, chat template.
    pub fn model(&self) -> &LoadedModel<B> {
        &self.m
    }

    /// Generates a few tokens once, so that one-time work — weights repacked for the kernels on
    /// their first use, mapped pages read in, thread pools started — is done at load time and
    /// not inside the first request's timings.
    fn warm_up(&self) -> Result<()> {
        let token = self.m.model.config().bos_token_id.unwrap_or(0);
        let request = Request::new(Prompt::Ids(vec![token])).max_new_tokens(4);
        self.generate(&request, &mut |_| ControlFlow::Continue(()))?;
        Ok(())
    }

    /// What the engine runs.
    pub fn info(&self) -> &EngineInfo {
        &self.info
    }

    /// The tokens that end an answer: the model's EOS ids and the template's end-of-turn tokens.
    pub fn stop_tokens(&self) -> &[u32] {
        &self.stop_tokens
    }

    /// The token ids of a prompt: chat messages rendered with the chat template (after BOS where
    /// it needs one), plain text after the BOS its tokenizer adds (Llama 2 and 3 do, SmolLM2
    /// does not), ids unchanged.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Ids(ids) => ids.clone(),
            Prompt::Text(text) => self.m.tokenizer.encode_prompt(text)?,
            Prompt::Chat(messages) => {
                let t = self.template.as_ref().ok_or_else(|| {
                    EngineError::InvalidOption(
                        "the model names no chat template; choose one (--template \
                         chatml|vicuna|llama2|llama3) or send a plain prompt"
                            .into(),
                    )
                })?;
                // A template that refuses the conversation (say, roles that do not alternate)
                // is the request's fault.
                let text = t
                    .render(messages)
                    .map_err(|e| EngineError::InvalidOption(e.to_string()))?;
                crate::template_ids(&self.m, t, &text)?
            }
        };
        if let Some(&bad) = ids
            .iter()
            .find(|&&t| t as usize >= self.m.model.config().vocab_size)
        {
            return Err(EngineError::InvalidOption(format!(
                "token id {bad} is outside the vocabulary of {} tokens",
                self.m.model.config().vocab_size
            )));
        }
        Ok(ids)
    }

    /// Generates the answer to `request`. `on_text` receives the text as it is produced (never
    /// any part of a stop string); returning [`ControlFlow::Break`] cancels the generation
    /// ([`FinishReason::Cancelled`]).
    pub fn generate(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        let prompt = self.prompt_ids(&request.prompt)?;
        let mode = request.mode.unwrap_or(self.info.mode);
        let options = self.options(request);
        let mut out = Output::new(&request.stop);
        let run = self.generate_tokens(&prompt, &options, mode, &mut |ids| {
            out.push(&self.m.tokenizer, ids, on_text)
        })?;
        out.complete(&self.m.tokenizer, mode, prompt, run, on_text)
    }

    /// The generation options of a request.
    fn options(&self, r: &Request) -> GenerateOptions {
        GenerateOptions {
            max_new_tokens: r.max_new_tokens,
            sampling: r.sampling,
            seed: r.seed,
            stop_tokens: if r.ignore_eos {
                vec![]
            } else {
                self.stop_tokens.clone()
            },
        }
    }

    /// The generation options of a request ([`Engine::generate_tokens`] takes them).
    pub fn generate_options(&self, request: &Request) -> GenerateOptions {
        self.options(request)
    }

    /// Where two greedy answers to `prompt` first differ, with the target's logits there.
    pub fn divergence(
        &self,
        prompt: &[u32],
        reference: &[u32],
        other: &[u32],
        max_new_tokens: usize,
    ) -> Result<Option<Divergence>> {
        let capacity = (prompt.len() + max_new_tokens).min(self.m.model.max_positions());
        first_divergence(&self.m.model, prompt, reference, other, capacity)
    }

    /// The configuration of the heads drafted with, if any.
    pub fn heads_config(&self) -> Option<&s4c_draft::DrafterConfig> {
        self.spec
            .as_ref()
            .and_then(|s| s.drafter.as_ref())
            .map(|d| d.config())
    }
}

/// The text side of one generation: tokens become text, stop strings end it, the caller's
/// callback may cancel it.
struct Output {
    stream: TextStream,
    failed: Option<s4c_models::ModelError>,
    cancelled: bool,
}

impl Output {
    fn new(stop: &[String]) -> Self {
        Output {
            stream: TextStream::new(stop),
            failed: None,
            cancelled: false,
        }
    }

    /// New tokens: their text goes to `on_text`; `Break` at a stop string, a cancellation or a
    /// decoding error.
    fn push(
        &mut self,
        tok: &s4c_models::Tokenizer,
        ids: &[u32],
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        match self.stream.push(tok, ids) {
            Ok(piece) if !piece.is_empty() => {
                if on_text(&piece).is_break() {
                    self.cancelled = true;
                    return ControlFlow::Break(());
                }
            }
            Ok(_) => {}
            Err(e) => {
                self.failed = Some(e);
                return ControlFlow::Break(());
            }
        }
        if self.stream.stopped() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// The completion of a finished generation; the text held back goes to `on_text`.
    fn complete(
        self,
        tokenizer: &Tokenizer,
        mode: Mode,
        prompt: Vec<u32>,
        run: TokenRun,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        if let Some(e) = self.failed {
            return Err(e.into());
        }
        let stopped = self.stream.stopped();
        let (rest, text) = self.stream.finish(tokenizer)?;
        if !rest.is_empty() && !self.cancelled {
            // The end of the answer: no stop string followed what was held back.
            let _ = on_text(&rest);
        }
        let finish = match run.stop {
            StopReason::Interrupted if stopped => FinishReason::Stop,
            StopReason::Interrupted => FinishReason::Cancelled,
            StopReason::StopToken => FinishReason::Stop,
            StopReason::MaxTokens | StopReason::ContextFull => FinishReason::Length,
        };
        Ok(Completion {
            text,
            timings: Timings::new(mode, prompt.len(), &run),
            prompt_ids: prompt,
            new_ids: run.new_ids,
            finish,
            stop: run.stop,
            spec: run.spec,
        })
    }
}

/// An [`Engine`] whose backend was chosen at run time ([`EngineBuilder::open`]).
pub trait TextEngine {
    /// What the engine runs.
    fn info(&self) -> &EngineInfo;
    /// The token ids of a prompt ([`Engine::prompt_ids`]).
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>>;
    /// Generates the answer to `request` ([`Engine::generate`]).
    fn generate(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion>;
    /// Where two greedy answers first differ ([`Engine::divergence`]).
    fn divergence(
        &self,
        prompt: &[u32],
        reference: &[u32],
        other: &[u32],
        max_new_tokens: usize,
    ) -> Result<Option<Divergence>>;
    /// Answers requests together ([`Engine::generate_batch`]).
    fn generate_batch(
        &self,
        jobs: Vec<BatchJob>,
        max_running: usize,
        admit: &mut dyn FnMut(usize) -> Vec<BatchJob>,
    );
}

impl<B: Backend> TextEngine for Engine<B> {
    fn info(&self) -> &EngineInfo {
        Engine::info(self)
    }
    fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        Engine::prompt_ids(self, prompt)
    }
    fn generate(
        &self,
        request: &Request,
        on_text: &mut dyn FnMut(&str) -> ControlFlow<()>,
    ) -> Result<Completion> {
        Engine::generate(self, request, on_text)
    }
    fn divergence(
        &self,
        prompt: &[u32],
        reference: &[u32],
        other: &[u32],
        max_new_tokens: usize,
    ) -> Result<Option<Divergence>> {
        Engine::divergence(self, prompt, reference, other, max_new_tokens)
    }
    fn generate_batch(
        &self,
        jobs: Vec<BatchJob>,
        max_running: usize,
        admit: &mut dyn FnMut(usize) -> Vec<BatchJob>,
    ) {
        Engine::generate_batch(self, jobs, max_running, admit)
    }
}

/// The tokens that end an answer: the model's EOS ids and `template`'s end-of-turn tokens.
pub(crate) fn stop_tokens<B: Backend>(
    m: &LoadedModel<B>,
    template: Option<&ChatTemplate>,
) -> Vec<u32> {
    let mut v = m.model.config().eos_token_ids.clone();
    if let Some(t) = template {
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

fn check_dtype<B: Backend>(device: &B::Device, dtype: DType) -> Result<()> {
    let usage = B::dtype_usage(device, dtype);
    if !usage.contains(burn::tensor::backend::DTypeUsage::Arithmetic) {
        return Err(EngineError::Model(
            s4c_models::ModelError::UnsupportedDtype {
                dtype: format!("{dtype:?}"),
                backend: B::name(device),
                supported: "f32",
            },
        ));
    }
    Ok(())
}

/// Everything a latency curve depends on besides the drafter: the engine's version and the
/// forward's revision (either may change what a forward costs), the machine, backend, dtypes and
/// model shape.
fn model_key<B: Backend>(m: &LoadedModel<B>, backend: &str, weight_types: &str) -> String {
    let model = &m.model;
    format!(
        "{}r{}-{}-{}-{}-c{:?}-kv{:?}-{}{}-{}l-{}h-{}",
        env!("CARGO_PKG_VERSION"),
        s4c_models::FORWARD_REVISION,
        crate::cost::machine_tag(),
        backend,
        weight_types,
        model.compute_dtype(),
        model.kv_dtype(),
        model.engine(),
        model
            .threads()
            .map(|t| format!("-{}t-{}", t.count(), t.isa().name()))
            .unwrap_or_default(),
        model.config().num_layers,
        model.config().hidden_size,
        model.config().vocab_size,
    )
}
