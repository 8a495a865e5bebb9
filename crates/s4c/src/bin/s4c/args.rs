//! Options shared by the subcommands: the model and how it is loaded, and the S4C tree.

use std::path::PathBuf;

use burn::tensor::DType;
use clap::{Args, ValueEnum};
use s4c::{BackendKind, EngineBuilder, HeadsChoice, TreeKind, TreeOptions};
use s4c_models::{EngineKind, LoadOptions};

/// The default model: `./scripts/fetch-default-model.sh` puts it there.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum DtypeArg {
    /// The file's own storage types (GGUF quantizations stay quantized; f32 on GPU backends).
    Native,
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
pub enum EngineArg {
    /// s4c's CPU kernels on flex, Burn tensor operations on GPU backends.
    Auto,
    /// s4c's CPU kernels (weights in their file's types; outputs on the backend).
    Cpu,
    /// Burn tensor operations on the backend's device.
    Tensors,
}

#[derive(Args, Clone)]
pub struct SpecArgs {
    /// Draft heads (`.safetensors` with its `.json`); default: heads found for the model.
    #[arg(long)]
    pub heads: Option<PathBuf>,
    /// Tree shape.
    #[arg(long, value_enum, default_value_t = TreeKind::Cost)]
    pub tree: TreeKind,
    /// Most draft nodes per tree.
    #[arg(long, default_value_t = 64)]
    pub tree_nodes: usize,
    /// Deepest draft depth (default: the number of heads; 0 with `--tree cost`: the heads never
    /// draft, context lookup alone).
    #[arg(long)]
    pub tree_depth: Option<usize>,
    /// Candidates per expanded node of a dynamic tree.
    #[arg(long, default_value_t = 8)]
    pub tree_top_k: usize,
    /// A static template file (JSON list of top-k paths, Medusa format).
    #[arg(long)]
    pub template_file: Option<PathBuf>,
    /// Most tokens copied from the context per step (context lookup: the continuation of the
    /// latest earlier occurrence of the last 1–8 tokens, verified with the heads' tree); 0 turns
    /// it off.
    #[arg(long, default_value_t = 16)]
    pub lookup: usize,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A GGUF file or a Hugging Face folder.
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Compute backend.
    #[arg(long, value_enum, default_value_t = BackendKind::Flex)]
    pub backend: BackendKind,
    /// Storage type of the weight matrices: the file's own (default), or converted.
    #[arg(long, value_enum, default_value_t = DtypeArg::Native)]
    pub dtype: DtypeArg,
    /// Which engine runs the forward.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// CPU engine: threads (default: one per physical core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Tensor engine: type of activations and the KV cache (default f32; f16 on GPUs for speed).
    #[arg(long, value_enum)]
    pub compute_dtype: Option<DtypeArg>,
    /// CPU engine: storage type of the KV cache (default: f16 beside quantized weights, as
    /// llama.cpp's cache; f32 beside dense ones). The tensor engine's is its compute dtype.
    #[arg(long, value_enum)]
    pub kv_dtype: Option<DtypeArg>,
    /// Tensor engine: weight shards multiplied concurrently when decoding (default 1).
    #[arg(long, default_value_t = 1)]
    pub shards: usize,
    /// Longest context to support (prompt plus new tokens).
    #[arg(long, default_value_t = 4096)]
    pub context: usize,
}

impl ModelArgs {
    /// How the model is loaded.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            engine: match self.engine {
                EngineArg::Auto => EngineKind::Auto,
                EngineArg::Cpu => EngineKind::Cpu,
                EngineArg::Tensors => EngineKind::Tensors,
            },
            dtype: dtype(self.dtype),
            compute_dtype: self.compute_dtype.and_then(dtype).unwrap_or(DType::F32),
            shards: self.shards,
            threads: self.threads,
            kv_dtype: self.kv_dtype.and_then(dtype),
            max_context: self.context,
        }
    }

    /// An engine builder for this model with `spec`'s heads and tree.
    pub fn engine(&self, spec: &SpecArgs) -> EngineBuilder {
        EngineBuilder::new(&self.model)
            .load_options(self.load_options())
            .heads(match &spec.heads {
                Some(h) => HeadsChoice::File(h.clone()),
                None => HeadsChoice::Search,
            })
            .tree(spec.tree_options())
    }
}

impl SpecArgs {
    /// The tree options.
    pub fn tree_options(&self) -> TreeOptions {
        TreeOptions {
            kind: self.tree,
            nodes: self.tree_nodes,
            depth: self.tree_depth,
            top_k: self.tree_top_k,
            template_file: self.template_file.clone(),
            lookup: self.lookup,
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

/// The tokio runtime of the server commands (two threads for I/O; the engines have their own).
pub fn runtime() -> s4c::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| s4c::EngineError::Io {
            path: "tokio runtime".into(),
            source,
        })
}

/// Writes `text` to `path`, making its folder first.
pub fn write_file(path: &std::path::Path, text: &str) -> s4c::Result<()> {
    if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(d).map_err(|source| s4c::EngineError::Io {
            path: d.to_path_buf(),
            source,
        })?;
    }
    std::fs::write(path, text).map_err(|source| s4c::EngineError::Io {
        path: path.to_path_buf(),
        source,
    })
}
