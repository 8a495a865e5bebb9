//! The `s4c` command-line program.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use burn::tensor::{backend::Backend, DType};
use clap::{Args, Parser, Subcommand, ValueEnum};
use s4c::divergence::{first_divergence, Divergence};
use s4c::plain::{generate_plain, GenerateOptions};
use s4c::{stop_tokens, template_ids, EngineError, Result};
use s4c_models::{
    load, CausalLm, EngineKind, LoadOptions, LoadedModel, Message, ModelFiles, StreamDecoder,
    TemplateKind,
};
use s4c_verify::SamplingParams;
use serde_json::json;

mod bench_cmd;
mod spec_cmd;
mod synth_cmd;
mod train_cmd;

const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Parser)]
#[command(
    name = "s4c",
    version,
    about = "Fast, lossless speculative decoding for Llama-family models (S4C)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt (streams it, or prints JSON with --json).
    Generate(GenerateArgs),
    /// Print the token ids of a text (no special tokens added).
    Tokenize {
        #[command(flatten)]
        model: ModelArgs,
        /// Print `{"ids": [...]}`.
        #[arg(long)]
        json: bool,
        /// The text.
        text: String,
    },
    /// Write a Hugging Face folder (config.json, model.safetensors, tokenizer.json) from a GGUF file.
    Convert {
        /// The GGUF file.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
        /// The output folder.
        #[arg(long)]
        out: PathBuf,
    },
    /// Spec-Bench protocol: every question in plain and S4C mode in one process; JSON, Markdown
    /// and an SVG chart.
    Bench(BenchArgs),
    /// Train S4C draft heads for a model by self-distillation (data generation, then training).
    TrainHeads(TrainHeadsArgs),
    /// Write training prompts with the model itself: it continues its chat template opened at a
    /// user turn (Magpie-style prompt synthesis); JSON lines for `train-heads --prompts`.
    SynthPrompts(SynthPromptsArgs),
    /// Show a model's configuration, storage types and parameter count.
    Info {
        /// A GGUF file or a Hugging Face folder.
        #[arg(long, default_value = DEFAULT_MODEL)]
        model: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum BackendKind {
    Flex,
    Wgpu,
    Cuda,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum DtypeArg {
    /// The file's own storage types (GGUF quantizations stay quantized; f32 on GPU backends).
    Native,
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum EngineArg {
    /// s4c's CPU kernels on flex, Burn tensor operations on GPU backends.
    Auto,
    /// s4c's CPU kernels (weights in their file's types; outputs on the backend).
    Cpu,
    /// Burn tensor operations on the backend's device.
    Tensors,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Mode {
    /// One forward per token (the baseline).
    Plain,
    /// S4C speculative decoding with draft heads.
    S4c,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum TreeKind {
    /// A fixed template (`--template-file`, default mc_sim_7b_63), cut to `--tree-nodes`.
    Static,
    /// Best-first expansion by draft probability (EAGLE-2 style).
    Dynamic,
    /// Sized before every step for the most expected tok/s: from the heads' held-out acceptance
    /// and this backend's latency curve (measured once, cached) at first, then from the
    /// acceptance and step times measured while generating; plain steps when no tree pays.
    Cost,
}

#[derive(Args, Clone)]
struct SpecArgs {
    /// Draft heads (`.safetensors` with its `.json`); default: heads found for the model.
    #[arg(long)]
    heads: Option<PathBuf>,
    /// Tree shape.
    #[arg(long, value_enum, default_value_t = TreeKind::Cost)]
    tree: TreeKind,
    /// Most draft nodes per tree.
    #[arg(long, default_value_t = 64)]
    tree_nodes: usize,
    /// Deepest draft depth (default: the number of heads; 0 with `--tree cost`: the heads never
    /// draft, context lookup alone).
    #[arg(long)]
    tree_depth: Option<usize>,
    /// Candidates per expanded node of a dynamic tree.
    #[arg(long, default_value_t = 8)]
    tree_top_k: usize,
    /// A static template file (JSON list of top-k paths, Medusa format).
    #[arg(long)]
    template_file: Option<PathBuf>,
    /// Most tokens copied from the context per step (context lookup: the continuation of the
    /// latest earlier occurrence of the last 1–8 tokens, verified with the heads' tree); 0 turns
    /// it off.
    #[arg(long, default_value_t = 16)]
    lookup: usize,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// A GGUF file or a Hugging Face folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    model: PathBuf,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    backend: BackendKind,
    /// Storage type of the weight matrices: the file's own (default), or converted.
    #[arg(long, value_enum, default_value_t = DtypeArg::Native)]
    dtype: DtypeArg,
    /// Which engine runs the forward.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    engine: EngineArg,
    /// CPU engine: threads (default: one per physical core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Tensor engine: type of activations and the KV cache (default f32; f16 on GPUs for speed).
    #[arg(long, value_enum)]
    compute_dtype: Option<DtypeArg>,
    /// Tensor engine: weight shards multiplied concurrently when decoding (default 1).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// Longest context to support (prompt plus new tokens).
    #[arg(long, default_value_t = 4096)]
    context: usize,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// Chat template to use instead of the model's own (chatml, vicuna, llama2, llama3).
    #[arg(long)]
    template: Option<String>,
    /// The prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// A file holding the prompt text.
    #[arg(long)]
    prompt_file: Option<PathBuf>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Decoding mode (default: s4c when heads for the model are found, plain otherwise).
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    #[command(flatten)]
    spec: SpecArgs,
    /// Also run plain decoding on the same prompt and report the speedup.
    #[arg(long)]
    compare: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    json: bool,
    /// Do not stop at end-of-sequence tokens (benchmarks with a fixed token count).
    #[arg(long)]
    ignore_eos: bool,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    spec: SpecArgs,
    /// Questions, JSON lines with `turns` (list of user turns) and `task`.
    #[arg(long)]
    questions: PathBuf,
    /// Use only the first N questions of each task.
    #[arg(long)]
    limit_per_task: Option<usize>,
    /// Maximum new tokens per answer.
    #[arg(long, default_value_t = 256)]
    max_new_tokens: usize,
    /// Where to write the JSON results (the Markdown table and SVG chart go next to it).
    #[arg(long, default_value = "runs/bench.json")]
    json: PathBuf,
    /// Generate the first question's first turn this many times in both modes before measuring
    /// (GPU backends compile and tune their kernels on first use; the latency curve of `--tree
    /// cost` is measured before either way).
    #[arg(long, default_value_t = 0)]
    warmup: usize,
}

#[derive(Args)]
struct TrainHeadsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training prompts, JSON lines with a `prompt` field (never the benchmark questions).
    #[arg(long)]
    prompts: PathBuf,
    /// Where to write the heads (`.safetensors`; the JSON config goes next to it).
    #[arg(long, default_value = "heads.safetensors")]
    out: PathBuf,
    /// Folder of the self-distillation data: chunks of 32 prompts, each reused when it holds the
    /// same prompts and answer length (so runs resume and extend; other chunks are regenerated).
    #[arg(long, default_value = "runs/distill")]
    data_dir: PathBuf,
    /// Use only the first N prompts.
    #[arg(long)]
    limit_prompts: Option<usize>,
    /// Answer length per prompt when generating the data.
    #[arg(long, default_value_t = 128)]
    answer_tokens: usize,
    /// Sequences decoded together when generating the data.
    #[arg(long, default_value_t = 16)]
    data_batch: usize,
    /// Sample the answers at this temperature instead of greedily (0 = greedy): more varied
    /// data from the same prompts, especially with --samples.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Answers per prompt (more than one needs --temperature above 0).
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Seed of the sampled answers.
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    /// More data folders to train on, made by earlier `--data-only` runs (e.g. sampled answers
    /// to the same prompts, or answers to `synth-prompts`' prompts). The held-out split stays
    /// that of --data-dir: their sequences of its held-out prompts, and of those their own
    /// folder's split holds out, are left out.
    #[arg(long)]
    extra_data: Vec<PathBuf>,
    /// Stop after generating the data.
    #[arg(long)]
    data_only: bool,
    /// Do not train: evaluate the heads at --out on the held-out split of the data, and record
    /// the acceptance statistics measured on the target's answers in the heads' JSON.
    #[arg(long)]
    eval_only: bool,
    /// Keep only the held-out prompts (every 20th usable one, as the split of the full data
    /// holds out): with --data-only, make their data alone (minutes, in a folder of its own);
    /// with --eval-only, evaluate on such a folder as a whole — the held-out report without the
    /// training data.
    #[arg(long, conflicts_with = "eval_training")]
    held_out_only: bool,
    /// With --eval-only: evaluate on as many training sequences as are held out (every 19th
    /// one) instead, to see how much the heads memorise; the heads' JSON is left as it is.
    #[arg(long, requires = "eval_only")]
    eval_training: bool,
    #[command(flatten)]
    train: TrainArgs,
}

#[derive(Args)]
struct SynthPromptsArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Where to write the prompts (JSON lines with a `prompt` field).
    #[arg(long)]
    out: PathBuf,
    /// Distinct prompts to write.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Sampling temperature of the user messages (above 0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Seed of the draws (message `s` of round `r` draws from its own generator).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Longest message in tokens; longer ones are dropped, not cut.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Shortest message kept, in words.
    #[arg(long, default_value_t = 4)]
    min_words: usize,
    /// Messages decoded together.
    #[arg(long, default_value_t = 24)]
    batch: usize,
    /// Prompt files (JSON lines) whose prompts are not written again, e.g. an earlier run's.
    #[arg(long)]
    exclude: Vec<PathBuf>,
}

#[derive(Args)]
struct TrainArgs {
    /// Number of heads (maximum draft depth).
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Past target features the initial state attends over.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Inner width of each head's block (0 = the target's hidden size).
    #[arg(long, default_value_t = 0)]
    inner: usize,
    /// Fraction of the heads' inner activations zeroed at each training step (dropout, against
    /// memorising the data); 0 = none.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Residual MLP layers per head (the first also reads the parent's token).
    #[arg(long, default_value_t = 1)]
    layers: usize,
    /// Draft vocabulary: the N most frequent tokens of the data (0 = the full vocabulary).
    #[arg(long, default_value_t = 0)]
    draft_vocab: usize,
    /// Context copy: each head adds a bonus, read from its state, to the token that followed the
    /// most recent earlier occurrence of its branch's last N tokens (or fewer) in the text; 0 =
    /// off. With --init, heads made without it gain it.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=8))]
    copy: u64,
    /// Train only the copy layers (with --init: the heads stay as they are), on text the heads
    /// have not memorised — answers to prompts they were not trained on.
    #[arg(long)]
    only_copy: bool,
    /// Coherence components: independent (Medusa), tokens, full (S4C).
    #[arg(long, default_value = "full")]
    coherence: s4c_draft::Coherence,
    /// Passes over the training data; 0 (with --init) takes no step: the heads are written to
    /// --out as they start — with context copy added by --copy — and evaluated.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// AdamW learning rate (cosine decay to 10%).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Examples per optimisation step.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,
    /// Amplitude of the uniform noise added to the input features while training (a
    /// regulariser; 0 = none).
    #[arg(long, default_value_t = 0.0)]
    feature_noise: f32,
    /// Weight of the feature regression (smooth L1 from each head's state to the target's
    /// feature at its offset) next to the cross-entropy; 0 = cross-entropy only.
    #[arg(long, default_value_t = 0.0)]
    feature_loss: f32,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Folder of resumable checkpoints and the loss log.
    #[arg(long, default_value = "runs/train-heads")]
    checkpoint_dir: PathBuf,
    /// Start from these heads (`.safetensors` with its `.json`) instead of a random
    /// initialisation: fine-tune them, e.g. on more data. Their shape and draft vocabulary are
    /// kept (--heads, --window, --inner, --layers, --coherence and --draft-vocab are ignored;
    /// --copy only adds context copy to heads without it).
    #[arg(long)]
    init: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate(args) => {
            let m = args.model.clone();
            dispatch(&m, |loaded| cmd_generate(loaded, &args))
        }
        Command::Tokenize { model, json, text } => {
            let files = ModelFiles::open(&model.model)?;
            let ids = files.tokenizer.encode(&text)?;
            if json {
                println!("{}", json!({ "ids": ids }));
            } else {
                println!("{ids:?}");
            }
            Ok(())
        }
        Command::Convert { model, out } => {
            s4c_models::convert_to_hf(&model, &out)?;
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        Command::Info { model } => cmd_info(&model),
        Command::Bench(args) => {
            let m = args.model.clone();
            dispatch(&m, |loaded| loaded.bench(&args))
        }
        Command::TrainHeads(args) => {
            let m = args.model.clone();
            dispatch(&m, |loaded| loaded.train_heads(&args))
        }
        Command::SynthPrompts(args) => {
            let m = args.model.clone();
            dispatch(&m, |loaded| loaded.synth_prompts(&args))
        }
    }
}

fn dtype(d: DtypeArg) -> Option<DType> {
    match d {
        DtypeArg::Native => None,
        DtypeArg::F32 => Some(DType::F32),
        DtypeArg::F16 => Some(DType::F16),
        DtypeArg::Bf16 => Some(DType::BF16),
    }
}

/// Loads the model on the chosen backend and runs `f` with it.
fn dispatch(args: &ModelArgs, f: impl FnOnce(&dyn Runner) -> Result<()>) -> Result<()> {
    if args.context < 2 {
        return Err(EngineError::InvalidOption(
            "--context must be at least 2".into(),
        ));
    }
    let options = LoadOptions {
        engine: match args.engine {
            EngineArg::Auto => EngineKind::Auto,
            EngineArg::Cpu => EngineKind::Cpu,
            EngineArg::Tensors => EngineKind::Tensors,
        },
        dtype: dtype(args.dtype),
        compute_dtype: args.compute_dtype.and_then(dtype).unwrap_or(DType::F32),
        shards: args.shards,
        threads: args.threads,
        max_context: args.context,
    };
    match args.backend {
        BackendKind::Flex => {
            #[cfg(feature = "flex")]
            {
                let device = burn::backend::flex::FlexDevice;
                return f(&Loaded::<burn::backend::Flex>::new(
                    &args.model,
                    &device,
                    &options,
                )?);
            }
        }
        BackendKind::Wgpu => {
            #[cfg(feature = "wgpu")]
            {
                let device = burn::backend::wgpu::WgpuDevice::default();
                return f(&Loaded::<burn::backend::Wgpu>::new(
                    &args.model,
                    &device,
                    &options,
                )?);
            }
        }
        BackendKind::Cuda => {
            #[cfg(feature = "cuda")]
            {
                let device = burn::backend::cuda::CudaDevice::default();
                return f(&Loaded::<burn::backend::Cuda>::new(
                    &args.model,
                    &device,
                    &options,
                )?);
            }
        }
    }
    #[allow(unreachable_code)]
    Err(EngineError::InvalidOption(format!(
        "backend {:?} is not compiled into this binary; rebuild with `cargo build --release --features {}`",
        args.backend,
        format!("{:?}", args.backend).to_lowercase()
    )))
}

/// A loaded model behind a backend-erased interface, so commands are written once.
trait Runner {
    fn loaded_prompt(&self, args: &GenerateArgs) -> Result<Vec<u32>>;
    fn stop_tokens(&self) -> Vec<u32>;
    /// Heads for this model, if the user named them or they sit in a known place.
    fn find_heads(&self, spec: &SpecArgs) -> Option<PathBuf>;
    fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        stream: bool,
        mode: Mode,
        spec: &SpecArgs,
    ) -> Result<serde_json::Value>;
    /// Where `other` first differs from `reference` (greedy outputs of `prompt`), with the
    /// target's logits there (`s4c::divergence`).
    fn divergence(
        &self,
        prompt: &[u32],
        reference: &[u32],
        other: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Option<Divergence>>;
    fn train_heads(&self, args: &TrainHeadsArgs) -> Result<()>;
    fn synth_prompts(&self, args: &SynthPromptsArgs) -> Result<()>;
    fn bench(&self, args: &BenchArgs) -> Result<()>;
}

struct Loaded<B: Backend> {
    m: LoadedModel<B>,
    backend: String,
    path: PathBuf,
}

impl<B: Backend> Loaded<B> {
    fn new(path: &Path, device: &B::Device, options: &LoadOptions) -> Result<Self> {
        if options.engine.resolve::<B>(device) == EngineKind::Tensors {
            check_dtype::<B>(device, options.dtype.unwrap_or(DType::F32))?;
            check_dtype::<B>(device, options.compute_dtype)?;
        }
        Ok(Loaded {
            m: load::<B>(path, device, options)?,
            backend: B::name(device),
            path: path.to_path_buf(),
        })
    }

    /// The weight matrices' storage types, e.g. `q4_1+q8_0` or `f32`.
    fn dtype_name(&self) -> String {
        self.m.model.weight_types().join("+").to_lowercase()
    }
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

/// Where heads for a model are looked for: `heads.safetensors` in an HF folder,
/// `<file stem>.heads.safetensors` next to a GGUF file or under `assets/`.
fn heads_candidates(model: &Path) -> Vec<PathBuf> {
    let mut v = vec![];
    if model.is_dir() {
        v.push(model.join("heads.safetensors"));
    }
    if let Some(stem) = model.file_stem().and_then(|s| s.to_str()) {
        let stem = stem.split('.').next().unwrap_or(stem);
        let name = format!("{stem}.heads.safetensors");
        if let Some(dir) = model.parent() {
            v.push(dir.join(&name));
        }
        v.push(Path::new("assets").join(&name));
        v.push(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../assets")
                .join(&name),
        );
    }
    v
}

impl<B: Backend> Runner for Loaded<B> {
    fn loaded_prompt(&self, args: &GenerateArgs) -> Result<Vec<u32>> {
        let text = match (&args.prompt, &args.prompt_file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| EngineError::Io {
                path: f.clone(),
                source,
            })?,
            (None, None) => {
                return Err(EngineError::InvalidOption(
                    "give --prompt or --prompt-file".into(),
                ))
            }
        };
        let m = &self.m;
        if !args.chat {
            return Ok(m.tokenizer.encode(&text)?);
        }
        let template = match &args.template {
            Some(name) => s4c_models::ChatTemplate::new(
                name.parse::<TemplateKind>()
                    .map_err(EngineError::InvalidOption)?,
            ),
            None => m.template.clone().ok_or_else(|| {
                EngineError::InvalidOption(
                    "the model names no chat template; pass --template chatml|vicuna|llama2|llama3"
                        .into(),
                )
            })?,
        };
        template_ids(
            m,
            &template,
            &template.render(&[Message::new("user", &text)]),
        )
    }

    fn stop_tokens(&self) -> Vec<u32> {
        stop_tokens(&self.m)
    }

    fn find_heads(&self, spec: &SpecArgs) -> Option<PathBuf> {
        if let Some(h) = &spec.heads {
            return Some(h.clone());
        }
        heads_candidates(&self.path)
            .into_iter()
            .find(|p| p.exists() && s4c_draft::io::load::<B, _>(p, &self.m.model).is_ok())
    }

    fn generate(
        &self,
        prompt: &[u32],
        opts: &GenerateOptions,
        stream: bool,
        mode: Mode,
        spec: &SpecArgs,
    ) -> Result<serde_json::Value> {
        let m = &self.m;
        let mut decoder = StreamDecoder::new();
        let mut out = std::io::stdout();
        let mut on_tokens = |ids: &[u32]| {
            if stream {
                if let Ok(piece) = decoder.push(&m.tokenizer, ids) {
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                }
            }
        };
        let mut result = json!({
            "prompt_ids": prompt,
            "backend": self.backend,
            "dtype": self.dtype_name(),
            "compute_dtype": format!("{:?}", m.model.compute_dtype()).to_lowercase(),
        });
        let context = m.model.max_positions();
        let (new_ids, stop, elapsed, prefill) = match mode {
            Mode::Plain => {
                let g = generate_plain(&m.model, prompt, opts, context, &mut on_tokens)?;
                result["steps"] = json!(g.steps);
                result["mode"] = json!("plain");
                (g.new_ids, g.stop, g.elapsed, g.prefill)
            }
            Mode::S4c => {
                let s = spec_cmd::speculation(self, spec)?;
                if s.drafter.is_none() {
                    // No heads: context lookup alone still verifies copied chains.
                    eprintln!(
                        "no draft heads for {}: context lookup alone (train heads with `s4c \
                         train-heads` for more)",
                        self.path.display()
                    );
                }
                let g = spec_cmd::run_spec(
                    &m.model,
                    &s.drafter,
                    s.shape,
                    spec_cmd::lookup(spec),
                    prompt,
                    opts,
                    context,
                    &mut on_tokens,
                )?;
                result["steps"] = json!(g.stats.steps);
                result["tau"] = json!(g.stats.tau);
                result["stats"] = json!(g.stats);
                result["tree"] = s.info;
                result["heads"] = json!(s.heads.map(|h| h.display().to_string()));
                result["mode"] = json!("s4c");
                (g.new_ids, g.stop, g.elapsed, g.prefill)
            }
        };
        if stream {
            println!();
        }
        result["new_ids"] = json!(new_ids);
        result["text"] = json!(m.tokenizer.decode(&new_ids, true)?);
        result["new_tokens"] = json!(new_ids.len());
        result["tok_per_s"] = json!(new_ids.len() as f64 / elapsed.as_secs_f64().max(1e-9));
        result["elapsed_s"] = json!(elapsed.as_secs_f64());
        result["prefill_s"] = json!(prefill.as_secs_f64());
        result["peak_rss_mib"] = json!(s4c::memory::peak_rss_mib());
        result["stop"] = json!(stop);
        Ok(result)
    }

    fn divergence(
        &self,
        prompt: &[u32],
        reference: &[u32],
        other: &[u32],
        opts: &GenerateOptions,
    ) -> Result<Option<Divergence>> {
        let model = &self.m.model;
        let capacity = opts.cache_capacity(prompt.len(), model.max_positions());
        first_divergence(model, prompt, reference, other, capacity)
    }

    fn train_heads(&self, args: &TrainHeadsArgs) -> Result<()> {
        train_cmd::train_heads(&self.m, args)
    }

    fn synth_prompts(&self, args: &SynthPromptsArgs) -> Result<()> {
        synth_cmd::synth_prompts(&self.m, args)
    }

    fn bench(&self, args: &BenchArgs) -> Result<()> {
        bench_cmd::bench(self, args)
    }
}

fn cmd_generate(r: &dyn Runner, args: &GenerateArgs) -> Result<()> {
    let prompt = r.loaded_prompt(args)?;
    let opts = GenerateOptions {
        max_new_tokens: args.max_new_tokens,
        sampling: SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
        },
        seed: args.seed,
        stop_tokens: if args.ignore_eos {
            vec![]
        } else {
            r.stop_tokens()
        },
    };
    let mode = args.mode.unwrap_or_else(|| {
        if r.find_heads(&args.spec).is_some() {
            Mode::S4c
        } else {
            Mode::Plain
        }
    });
    let mut result = r.generate(&prompt, &opts, !args.json, mode, &args.spec)?;
    if args.compare {
        let other = if mode == Mode::Plain {
            Mode::S4c
        } else {
            Mode::Plain
        };
        let base = r.generate(&prompt, &opts, false, other, &args.spec)?;
        let (s4c, plain) = if mode == Mode::Plain {
            (&base, &result)
        } else {
            (&result, &base)
        };
        let speedup = s4c["tok_per_s"].as_f64().unwrap_or(0.0)
            / plain["tok_per_s"].as_f64().unwrap_or(1.0).max(1e-9);
        let same = s4c["new_ids"] == plain["new_ids"];
        // A greedy mismatch: where it begins and how close the target's choice was there.
        let divergence = if same || !opts.sampling.is_greedy() {
            None
        } else {
            let ids = |v: &serde_json::Value| -> Vec<u32> {
                serde_json::from_value(v["new_ids"].clone()).unwrap_or_default()
            };
            r.divergence(&prompt, &ids(plain), &ids(s4c), &opts)?
        };
        if let Some(d) = &divergence {
            eprintln!("greedy mismatch at {d}");
        }
        let cmp = json!({
            "plain_tok_per_s": plain["tok_per_s"],
            "s4c_tok_per_s": s4c["tok_per_s"],
            "speedup": speedup,
            "same_output": same,
            "divergence": divergence,
        });
        result["compare"] = cmp;
    }
    if args.json {
        println!("{result}");
    } else {
        let tau = result["tau"]
            .as_f64()
            .map(|t| format!(", τ {t:.2}"))
            .unwrap_or_default();
        eprintln!(
            "[{} new tokens, {:.1} tok/s, {} mode{tau}]",
            result["new_tokens"],
            result["tok_per_s"].as_f64().unwrap_or(0.0),
            result["mode"].as_str().unwrap_or("")
        );
        if let Some(c) = result.get("compare") {
            eprintln!(
                "[plain {:.1} tok/s, s4c {:.1} tok/s: speedup {:.2}×, same output: {}]",
                c["plain_tok_per_s"].as_f64().unwrap_or(0.0),
                c["s4c_tok_per_s"].as_f64().unwrap_or(0.0),
                c["speedup"].as_f64().unwrap_or(0.0),
                c["same_output"]
            );
        }
    }
    Ok(())
}

fn cmd_info(path: &Path) -> Result<()> {
    let files = ModelFiles::open(path)?;
    let c = &files.config;
    let info = json!({
        "path": path.display().to_string(),
        "architecture": "llama",
        "config": c,
        "file_dtypes": files.file_dtypes,
        "parameters": c.parameter_count(),
        "chat_template": files.template.as_ref().map(|t| format!("{:?}", t.kind)),
        "vocab_size_tokenizer": files.tokenizer.vocab_size(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&info).unwrap_or_default()
    );
    Ok(())
}
