//! Weight sources: Hugging Face safetensors folders and GGUF files, both seen through Hugging
//! Face tensor names and the rotate-half rotary layout.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::config::LlamaConfig;
use crate::cpu::RotaryLayout;
use crate::error::{ModelError, Result};
use crate::gguf::{GgmlType, GgufFile};
use crate::host::HostTensor;
use crate::quant::{QMatrix, WeightBytes};

/// Anything that yields weights by Hugging Face name.
pub trait WeightSource {
    /// Reads one tensor, dequantized to `f32`, query and key projections in the rotate-half
    /// rotary layout.
    fn tensor(&self, name: &str) -> Result<HostTensor>;
    /// Whether a tensor of that name exists.
    fn has(&self, name: &str) -> bool;
    /// One 2-D tensor as stored (block-quantized or dense, mapped from the file where it can
    /// be), query and key projections in [`WeightSource::rotary_layout`]. By default: the `f32`
    /// values of [`WeightSource::tensor`].
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let t = self.tensor(name)?;
        let [rows, cols] = t.shape[..] else {
            return Err(ModelError::InvalidInput(format!(
                "tensor {name} has shape {:?}, expected a matrix",
                t.shape
            )));
        };
        QMatrix::from_f32(rows, cols, &t.data, GgmlType::F32)
    }
    /// The rotary layout of the query and key rows [`WeightSource::matrix`] returns.
    fn rotary_layout(&self) -> RotaryLayout {
        RotaryLayout::Halves
    }
}

/// A folder of (possibly sharded) `.safetensors` files, memory-mapped.
pub struct SafetensorsWeights {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    /// tensor name → index into `files`
    index: HashMap<String, usize>,
}

impl SafetensorsWeights {
    /// Opens `model.safetensors` or the shards named by `model.safetensors.index.json` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let shard_names: Vec<String> = if index_path.exists() {
            let text = std::fs::read_to_string(&index_path)
                .map_err(|e| ModelError::io(&index_path, "safetensors index", e))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| ModelError::InvalidSafetensors {
                    path: index_path.clone(),
                    reason: format!("index is not valid JSON: {e}"),
                })?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| ModelError::InvalidSafetensors {
                    path: index_path.clone(),
                    reason: "index has no \"weight_map\" object".into(),
                })?;
            let mut names: Vec<String> = map
                .values()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            names.sort();
            names.dedup();
            names
        } else if single.exists() {
            vec!["model.safetensors".into()]
        } else {
            return Err(ModelError::NotFound {
                path: single,
                what: "model.safetensors or model.safetensors.index.json",
            });
        };
        let mut weights = Self::empty();
        for name in shard_names {
            let path = dir.join(&name);
            let file =
                File::open(&path).map_err(|e| ModelError::io(&path, "safetensors shard", e))?;
            // SAFETY: read-only map kept alive with the struct.
            let mmap =
                unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, "shard", e))?;
            weights.add_shard(path, mmap)?;
        }
        Ok(weights)
    }

    /// One safetensors file held in memory (copied into an anonymous map); `name` stands for its
    /// path in errors. For weights that are not on disk, and for fuzzing the reader.
    pub fn from_bytes(bytes: &[u8], name: impl Into<PathBuf>) -> Result<Self> {
        let path = name.into();
        let map = crate::gguf::map_bytes(bytes, &path, "safetensors")?;
        let mut weights = Self::empty();
        weights.add_shard(path, map)?;
        Ok(weights)
    }

    /// The names of all tensors, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.index.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// No shard yet.
    fn empty() -> Self {
        SafetensorsWeights {
            files: vec![],
            index: HashMap::new(),
        }
    }

    /// Checks one shard's header and indexes its tensors.
    fn add_shard(&mut self, path: PathBuf, mmap: Mmap) -> Result<()> {
        let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::InvalidSafetensors {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        for n in st.names() {
            self.index.insert(n.to_string(), self.files.len());
        }
        self.files.push((path, Arc::new(mmap)));
        Ok(())
    }
}

/// Where a tensor sits in a mapped safetensors shard.
struct StView {
    map: Arc<Mmap>,
    dtype: Dtype,
    shape: Vec<usize>,
    offset: usize,
    len: usize,
}

impl SafetensorsWeights {
    fn view(&self, name: &str) -> Result<StView> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let (path, mmap) = &self.files[i];
        let bad = |e: safetensors::SafeTensorError| ModelError::InvalidSafetensors {
            path: path.clone(),
            reason: e.to_string(),
        };
        let st = SafeTensors::deserialize(mmap).map_err(bad)?;
        let view = st.tensor(name).map_err(bad)?;
        let data = view.data();
        Ok(StView {
            map: mmap.clone(),
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            offset: data.as_ptr() as usize - mmap.as_ptr() as usize,
            len: data.len(),
        })
    }
}

impl WeightSource for SafetensorsWeights {
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let v = self.view(name)?;
        let bytes = &v.map[v.offset..v.offset + v.len];
        let data: Vec<f32> = match v.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
                .collect(),
            other => {
                return Err(ModelError::UnsupportedTensorType {
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16",
                })
            }
        };
        Ok(HostTensor::new(v.shape, data))
    }

    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let v = self.view(name)?;
        let ty = match v.dtype {
            Dtype::F32 => GgmlType::F32,
            Dtype::F16 => GgmlType::F16,
            Dtype::BF16 => GgmlType::BF16,
            other => {
                return Err(ModelError::UnsupportedTensorType {
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                    supported: "F32, F16, BF16",
                })
            }
        };
        let [rows, cols] = v.shape[..] else {
            return Err(ModelError::InvalidInput(format!(
                "tensor {name} has shape {:?}, expected a matrix",
                v.shape
            )));
        };
        let bytes = WeightBytes::Mapped {
            map: v.map,
            offset: v.offset,
            len: v.len,
        };
        QMatrix::new(ty, rows, cols, bytes)
    }
}

/// A GGUF file seen through Hugging Face names, with Q/K rows permuted back to rotate-half.
pub struct GgufWeights {
    file: GgufFile,
    num_heads: usize,
    num_kv_heads: usize,
}

impl GgufWeights {
    /// Wraps an opened GGUF file.
    pub fn new(file: GgufFile, config: &LlamaConfig) -> Self {
        GgufWeights {
            file,
            num_heads: config.num_heads,
            num_kv_heads: config.num_kv_heads,
        }
    }

    /// The underlying file.
    pub fn file(&self) -> &GgufFile {
        &self.file
    }

    /// The GGUF name of a Hugging Face tensor name.
    pub fn gguf_name(hf: &str) -> Option<String> {
        let direct = [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("model.norm.weight", "output_norm.weight"),
            ("lm_head.weight", "output.weight"),
        ];
        if let Some((_, g)) = direct.iter().find(|(h, _)| *h == hf) {
            return Some(g.to_string());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, tail) = rest.split_once('.')?;
        let g = match tail {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{g}"))
    }
}

impl WeightSource for GgufWeights {
    fn has(&self, name: &str) -> bool {
        Self::gguf_name(name).is_some_and(|g| self.file.has_tensor(&g))
    }

    fn tensor(&self, name: &str) -> Result<HostTensor> {
        let g = Self::gguf_name(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        let t = self.file.tensor(&g).map_err(|e| match e {
            ModelError::MissingTensor(_) => ModelError::MissingTensor(format!("{name} (GGUF {g})")),
            ModelError::UnsupportedTensorType {
                dtype, supported, ..
            } => ModelError::UnsupportedTensorType {
                tensor: g.clone(),
                dtype,
                supported,
            },
            e => e,
        })?;
        Ok(if name.ends_with("q_proj.weight") {
            t.permute_rotary_rows(self.num_heads, true)
        } else if name.ends_with("k_proj.weight") {
            t.permute_rotary_rows(self.num_kv_heads, true)
        } else {
            t
        })
    }

    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let g = Self::gguf_name(name).ok_or_else(|| ModelError::MissingTensor(name.into()))?;
        self.file.matrix(&g)
    }

    fn rotary_layout(&self) -> RotaryLayout {
        RotaryLayout::Interleaved
    }
}

/// Writes tensors (Hugging Face names) as one `model.safetensors` in `f32`.
pub fn write_safetensors(path: &Path, tensors: &BTreeMap<String, HostTensor>) -> Result<()> {
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let b: Vec<u8> = t.data.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), b, t.shape.clone())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(n, b, s)| {
            let v = safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .expect("shape and byte length agree by construction");
            (n.clone(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).map_err(|e| ModelError::InvalidSafetensors {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}
