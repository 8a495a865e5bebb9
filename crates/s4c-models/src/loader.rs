//! Loading a model by path: a GGUF file or a Hugging Face folder.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::tensor::{backend::Backend, DType};
use serde_json::Value;

use crate::chat::ChatTemplate;
use crate::config::LlamaConfig;
use crate::cpu::WeightFormat;
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::host::HostTensor;
use crate::llama::Llama;
use crate::quant::{Isa, Threads};
use crate::tokenizer::Tokenizer;
use crate::weights::{write_safetensors, GgufWeights, SafetensorsWeights, WeightSource};

/// Which engine runs a model's forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// The CPU engine on CPU backends (`flex`), the tensor engine elsewhere.
    Auto,
    /// s4c's CPU kernels ([`crate::quant`]), weights in their file's storage type.
    Cpu,
    /// Burn tensor operations on the backend's device.
    Tensors,
}

impl EngineKind {
    /// The engine `Auto` stands for on backend `B`.
    pub fn resolve<B: Backend>(self, device: &B::Device) -> EngineKind {
        match self {
            EngineKind::Auto if is_cpu_backend::<B>(device) => EngineKind::Cpu,
            EngineKind::Auto => EngineKind::Tensors,
            e => e,
        }
    }
}

/// Whether `B` computes on the host CPU.
fn is_cpu_backend<B: Backend>(device: &B::Device) -> bool {
    let name = B::name(device).to_lowercase();
    name.starts_with("flex") || name.starts_with("ndarray")
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Which engine runs the forward.
    pub engine: EngineKind,
    /// Storage type of the weight matrices: `None` keeps the file's own types (GGUF
    /// quantizations stay quantized) on the CPU engine and means `f32` on the tensor engine;
    /// `Some(F32 | F16 | BF16)` converts.
    pub dtype: Option<DType>,
    /// Tensor engine: type of activations, KV cache and outputs (`f32` keeps half-precision
    /// weights accurate). The CPU engine computes in `f32`.
    pub compute_dtype: DType,
    /// Tensor engine: row shards per weight matrix multiplied concurrently when decoding.
    pub shards: usize,
    /// CPU engine: threads (0 = one per physical core).
    pub threads: usize,
    /// CPU engine: storage type of the KV cache, `f32` or `f16`; `None` is f16 beside
    /// block-quantized weights (llama.cpp's default cache type: half the memory and traffic) and
    /// f32 beside dense ones. The tensor engine keeps its cache in `compute_dtype`.
    pub kv_dtype: Option<DType>,
    /// Longest context to support (bounded by the model's own).
    pub max_context: usize,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            engine: EngineKind::Auto,
            dtype: None,
            compute_dtype: DType::F32,
            shards: 1,
            threads: 0,
            kv_dtype: None,
            max_context: 4096,
        }
    }
}

/// Builds `B`'s model from `weights` as `options` say.
pub fn build_model<B: Backend>(
    config: &LlamaConfig,
    weights: &dyn WeightSource,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<Llama<B>> {
    let max_positions = options
        .max_context
        .min(config.max_position_embeddings)
        .max(1);
    match options.engine.resolve::<B>(device) {
        EngineKind::Cpu => {
            let format = match options.dtype {
                None => WeightFormat::Native,
                Some(DType::F32) => WeightFormat::Dense(GgmlType::F32),
                Some(DType::F16) => WeightFormat::Dense(GgmlType::F16),
                Some(DType::BF16) => WeightFormat::Dense(GgmlType::BF16),
                Some(other) => {
                    return Err(ModelError::UnsupportedDtype {
                        dtype: format!("{other:?}"),
                        backend: "cpu".into(),
                        supported: "the file's own types, f32, f16 or bf16",
                    })
                }
            };
            let threads = Threads::new(options.threads, Isa::detect())?;
            Llama::cpu(
                config,
                weights,
                format,
                threads,
                options.kv_dtype,
                device,
                max_positions,
            )
        }
        _ if options.kv_dtype.is_some_and(|k| k != options.compute_dtype) => {
            Err(ModelError::InvalidInput(format!(
                "the tensor engine keeps its KV cache in the compute dtype ({:?}): leave the KV \
                 cache type unset or equal to it",
                options.compute_dtype
            )))
        }
        _ => Llama::tensors(
            config,
            weights,
            device,
            options.dtype.unwrap_or(DType::F32),
            options.compute_dtype,
            max_positions,
            options.shards,
        ),
    }
}

/// A model with its tokenizer and chat template.
pub struct LoadedModel<B: Backend> {
    /// The network.
    pub model: Llama<B>,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat template, when the files name one.
    pub template: Option<ChatTemplate>,
    /// Where it came from.
    pub path: PathBuf,
    /// The storage types of the weights on disk (for `s4c info`).
    pub file_dtypes: Vec<String>,
}

/// The parts of a model on disk, before any tensor is read.
pub struct ModelFiles {
    /// Hyper-parameters.
    pub config: LlamaConfig,
    /// Weights by Hugging Face name.
    pub weights: Box<dyn WeightSource>,
    /// Tokenizer.
    pub tokenizer: Tokenizer,
    /// Chat template, if the files name one.
    pub template: Option<ChatTemplate>,
    /// Storage types found on disk.
    pub file_dtypes: Vec<String>,
}

impl ModelFiles {
    /// Opens a GGUF file or a Hugging Face folder (`config.json`, `*.safetensors`,
    /// `tokenizer.json`).
    pub fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            Self::open_hf(path)
        } else if path.exists() {
            Self::open_gguf(path)
        } else {
            Err(ModelError::NotFound {
                path: path.to_path_buf(),
                what: "a GGUF file or a Hugging Face model folder",
            })
        }
    }

    fn open_gguf(path: &Path) -> Result<Self> {
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let template = file
            .meta_str("tokenizer.chat_template")
            .map(|j| model_template(j, &tokenizer, &config))
            .transpose()?;
        let mut file_dtypes: Vec<String> = file.tensors().values().map(|t| t.ty.name()).collect();
        file_dtypes.sort();
        file_dtypes.dedup();
        Ok(ModelFiles {
            weights: Box::new(GgufWeights::new(file, &config)),
            config,
            tokenizer,
            template,
            file_dtypes,
        })
    }

    fn open_hf(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path)
            .map_err(|e| ModelError::io(&cfg_path, "config.json", e))?;
        let config = LlamaConfig::from_hf_json(&text, &cfg_path.display().to_string())?;
        let weights = SafetensorsWeights::open(dir)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
        // transformers saves the template as chat_template.jinja (newer) or inside
        // tokenizer_config.json (older); the file wins, as in transformers.
        let template = std::fs::read_to_string(dir.join("chat_template.jinja"))
            .ok()
            .or_else(|| {
                let text = std::fs::read_to_string(dir.join("tokenizer_config.json")).ok()?;
                match serde_json::from_str::<Value>(&text)
                    .ok()?
                    .get("chat_template")?
                {
                    Value::String(s) => Some(s.clone()),
                    Value::Array(a) => a
                        .iter()
                        .find_map(|t| t.get("template")?.as_str().map(str::to_string)),
                    _ => None,
                }
            })
            .map(|j| model_template(&j, &tokenizer, &config))
            .transpose()?;
        Ok(ModelFiles {
            config,
            weights: Box::new(weights),
            tokenizer,
            template,
            file_dtypes: vec!["safetensors".into()],
        })
    }

    /// Every tensor the Llama architecture needs, by Hugging Face name, in `f32`.
    pub fn all_tensors(&self) -> Result<BTreeMap<String, HostTensor>> {
        let c = &self.config;
        let mut names = vec![
            "model.embed_tokens.weight".to_string(),
            "model.norm.weight".into(),
        ];
        if !c.tie_word_embeddings && self.weights.has("lm_head.weight") {
            names.push("lm_head.weight".into());
        }
        for l in 0..c.num_layers {
            for t in [
                "input_layernorm",
                "post_attention_layernorm",
                "self_attn.q_proj",
                "self_attn.k_proj",
                "self_attn.v_proj",
                "self_attn.o_proj",
                "mlp.gate_proj",
                "mlp.up_proj",
                "mlp.down_proj",
            ] {
                names.push(format!("model.layers.{l}.{t}.weight"));
            }
        }
        names
            .into_iter()
            .map(|n| Ok((n.clone(), self.weights.tensor(&n)?)))
            .collect()
    }
}

/// Loads a model (GGUF file or Hugging Face folder) onto `device`.
pub fn load<B: Backend>(
    path: &Path,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<LoadedModel<B>> {
    let files = ModelFiles::open(path)?;
    let model = build_model(&files.config, files.weights.as_ref(), device, options)?;
    Ok(LoadedModel {
        model,
        tokenizer: files.tokenizer,
        template: files.template,
        path: path.to_path_buf(),
        file_dtypes: files.file_dtypes,
    })
}

/// Writes a Hugging Face folder (`config.json`, `model.safetensors` in f32, `tokenizer.json`,
/// `tokenizer_config.json`) equivalent to the model at `src`.
pub fn convert_to_hf(src: &Path, out: &Path) -> Result<()> {
    let files = ModelFiles::open(src)?;
    std::fs::create_dir_all(out).map_err(|e| ModelError::io(out, "output folder", e))?;
    let w = |name: &str, text: String| -> Result<()> {
        let p = out.join(name);
        std::fs::write(&p, text).map_err(|e| ModelError::io(&p, "output file", e))
    };
    w(
        "config.json",
        serde_json::to_string_pretty(&files.config.to_hf_json()).unwrap_or_default(),
    )?;
    w("tokenizer.json", files.tokenizer.to_json().to_string())?;
    if let Some(jinja) = files.template.as_ref().and_then(|t| t.jinja_source()) {
        w(
            "tokenizer_config.json",
            serde_json::to_string_pretty(&serde_json::json!({ "chat_template": jinja }))
                .unwrap_or_default(),
        )?;
    }
    write_safetensors(&out.join("model.safetensors"), &files.all_tensors()?)
}

/// The model's Jinja chat template, with its BOS and EOS token strings.
fn model_template(
    jinja: &str,
    tokenizer: &Tokenizer,
    config: &LlamaConfig,
) -> Result<ChatTemplate> {
    let token = |id: Option<u32>| id.and_then(|i| tokenizer.token(i)).unwrap_or_default();
    ChatTemplate::from_jinja(
        jinja,
        &token(config.bos_token_id),
        &token(config.eos_token_ids.first().copied()),
    )
}
