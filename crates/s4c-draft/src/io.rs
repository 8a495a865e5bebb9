//! Heads on disk: `NAME.safetensors` (parameters and the draft vocabulary) and `NAME.json`
//! ([`DrafterConfig`], with the target's fingerprint).

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{backend::Backend, Tensor, TensorData};
use s4c_models::CausalLm;
use safetensors::{tensor::TensorView, Dtype};

use crate::config::DrafterConfig;
use crate::drafter::{fingerprint, MultiHeadDrafter};
use crate::error::{DraftError, Result};
use crate::heads::{Block, Heads, Residual};

/// The JSON config path that goes with a heads file.
pub fn config_path(heads: &Path) -> PathBuf {
    heads.with_extension("json")
}

fn linears<B: Backend>(heads: &Heads<B>) -> Vec<(String, &Linear<B>)> {
    let mut v = vec![
        ("ctx_q".to_string(), &heads.ctx_q),
        ("ctx_k".to_string(), &heads.ctx_k),
        ("ctx_out".to_string(), &heads.ctx_out),
    ];
    for (i, b) in heads.blocks.iter().enumerate() {
        v.push((format!("blocks.{i}.inp"), &b.inp));
        v.push((format!("blocks.{i}.out"), &b.out));
        for (j, r) in b.more.iter().enumerate() {
            v.push((format!("blocks.{i}.more.{j}.inp"), &r.inp));
            v.push((format!("blocks.{i}.more.{j}.out"), &r.out));
        }
        if let Some(c) = &b.copy {
            v.push((format!("blocks.{i}.copy"), c));
        }
    }
    v
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<(Vec<usize>, Vec<f32>)> {
    let dims = t.dims().to_vec();
    let v = t
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DraftError::Read(format!("{e:?}")))?;
    Ok((dims, v))
}

/// Writes `drafter`'s heads to `path` and its config next to it.
pub fn save<B: Backend>(drafter: &MultiHeadDrafter<B>, path: &Path) -> Result<()> {
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, l) in linears(drafter.heads()) {
        let (dims, v) = host(l.weight.val())?;
        tensors.push((
            format!("{name}.weight"),
            Dtype::F32,
            dims,
            v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ));
        if let Some(b) = &l.bias {
            let (dims, v) = host(b.val())?;
            tensors.push((
                format!("{name}.bias"),
                Dtype::F32,
                dims,
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ));
        }
    }
    let vocab = drafter.vocab();
    tensors.push((
        "vocab".into(),
        Dtype::U32,
        vec![vocab.len()],
        vocab.iter().flat_map(|x| x.to_le_bytes()).collect(),
    ));
    let views = tensors
        .iter()
        .map(|(n, dt, dims, b)| {
            TensorView::new(*dt, dims.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| DraftError::InvalidOption(format!("internal: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| DraftError::io(dir, e))?;
    }
    safetensors::serialize_to_file(views, None, path).map_err(|e| DraftError::InvalidHeads {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let json = serde_json::to_string_pretty(drafter.config())
        .map_err(|e| DraftError::InvalidOption(format!("internal: {e}")))?;
    let cpath = config_path(path);
    std::fs::write(&cpath, json).map_err(|e| DraftError::io(&cpath, e))
}

/// Reads the config stored next to a heads file.
pub fn load_config(path: &Path) -> Result<DrafterConfig> {
    let cpath = config_path(path);
    let text = std::fs::read_to_string(&cpath).map_err(|e| DraftError::io(&cpath, e))?;
    let config: DrafterConfig =
        serde_json::from_str(&text).map_err(|e| DraftError::InvalidHeads {
            path: cpath.clone(),
            reason: e.to_string(),
        })?;
    config
        .validate()
        .map_err(|reason| DraftError::InvalidHeads {
            path: cpath,
            reason,
        })?;
    Ok(config)
}

/// Loads heads for `target`, refusing heads trained for another model.
pub fn load<B: Backend, M: CausalLm<B>>(path: &Path, target: &M) -> Result<MultiHeadDrafter<B>> {
    let config = load_config(path)?;
    let mine = fingerprint(target)?;
    if let Some(reason) = config.target.mismatch(&mine) {
        return Err(DraftError::WrongTarget {
            path: path.to_path_buf(),
            reason,
        });
    }
    let (heads, vocab) = read_heads(path, &config, target.device())?;
    MultiHeadDrafter::new(config, heads, vocab, target)
}

/// Reads the weights and the draft vocabulary of the heads at `path`, whose config is `config`,
/// onto `device` of any backend (an autodiff one when training starts from them).
pub(crate) fn read_heads<B: Backend>(
    path: &Path,
    config: &DrafterConfig,
    device: &B::Device,
) -> Result<(Heads<B>, Vec<u32>)> {
    let file = TensorFile::open(path)?;
    let read = |name: &str, dims: &[usize]| -> Result<TensorData> {
        let v: Vec<f32> = file
            .read(name, "F32", dims)?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(TensorData::new(v, dims.to_vec()))
    };
    let linear = |name: &str, d_in: usize, d_out: usize, bias: bool| -> Result<Linear<B>> {
        let w = Tensor::<B, 2>::from_data(read(&format!("{name}.weight"), &[d_in, d_out])?, device);
        let b = if bias {
            Some(Param::from_tensor(Tensor::<B, 1>::from_data(
                read(&format!("{name}.bias"), &[d_out])?,
                device,
            )))
        } else {
            None
        };
        Ok(Linear {
            weight: Param::from_tensor(w),
            bias: b,
        })
    };
    let (h, i, a) = (config.hidden, config.inner, config.attn_dim);
    let heads = Heads {
        ctx_q: linear("ctx_q", h, a, false)?,
        ctx_k: linear("ctx_k", h, a, false)?,
        ctx_out: linear("ctx_out", h, h, true)?,
        blocks: (0..config.heads)
            .map(|k| {
                Ok(Block {
                    inp: linear(&format!("blocks.{k}.inp"), 2 * h, i, true)?,
                    out: linear(&format!("blocks.{k}.out"), i, h, true)?,
                    more: (1..config.layers)
                        .map(|j| {
                            Ok(Residual {
                                inp: linear(&format!("blocks.{k}.more.{}.inp", j - 1), h, i, true)?,
                                out: linear(&format!("blocks.{k}.more.{}.out", j - 1), i, h, true)?,
                            })
                        })
                        .collect::<Result<Vec<_>>>()?,
                    copy: match config.copy {
                        0 => None,
                        c => Some(linear(&format!("blocks.{k}.copy"), h, c, true)?),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?,
    };
    let vocab = file
        .read("vocab", "U32", &[config.draft_vocab])?
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Ok((heads, vocab))
}

/// A safetensors file whose tensors are read one at a time: only the header is parsed up front
/// (the `safetensors` crate's parser wants the whole file in memory), so loading heads never
/// holds the file and the tensors made from it at once.
struct TensorFile {
    path: std::path::PathBuf,
    file: std::cell::RefCell<std::fs::File>,
    /// Name → (dtype, shape, byte range from the start of the file).
    index: std::collections::HashMap<String, (String, Vec<usize>, std::ops::Range<u64>)>,
}

impl TensorFile {
    fn open(path: &Path) -> Result<Self> {
        use std::io::Read;
        let bad = |reason: String| DraftError::InvalidHeads {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = std::fs::File::open(path).map_err(|e| DraftError::io(path, e))?;
        let len = file.metadata().map_err(|e| DraftError::io(path, e))?.len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad("shorter than a safetensors header".into()))?;
        let n = u64::from_le_bytes(n);
        if n > (len - 8).min(100 << 20) {
            return Err(bad(format!("header of {n} bytes in a file of {len}")));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| DraftError::io(path, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        let mut index = std::collections::HashMap::new();
        for (name, info) in header.into_iter().filter(|(k, _)| k != "__metadata__") {
            let entry = (|| {
                let dtype = info.get("dtype")?.as_str()?.to_string();
                let shape = info
                    .get("shape")?
                    .as_array()?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<Vec<_>>>()?;
                let at = info.get("data_offsets")?.as_array()?;
                let (a, b) = (at.first()?.as_u64()?, at.get(1)?.as_u64()?);
                let start = 8 + n;
                (a <= b && start + b <= len).then(|| (dtype, shape, start + a..start + b))
            })()
            .ok_or_else(|| bad(format!("tensor {name}: malformed or out-of-file entry")))?;
            index.insert(name, entry);
        }
        Ok(TensorFile {
            path: path.to_path_buf(),
            file: std::cell::RefCell::new(file),
            index,
        })
    }

    /// The bytes of tensor `name`, which must be of `dtype` (4-byte elements) and `shape`.
    fn read(&self, name: &str, dtype: &str, shape: &[usize]) -> Result<Vec<u8>> {
        use std::io::{Read, Seek, SeekFrom};
        let bad = |reason: String| DraftError::InvalidHeads {
            path: self.path.clone(),
            reason,
        };
        let (ty, dims, range) = self
            .index
            .get(name)
            .ok_or_else(|| bad(format!("tensor {name} missing")))?;
        let elements: usize = shape.iter().product();
        if ty != dtype || dims != shape || range.end - range.start != 4 * elements as u64 {
            return Err(bad(format!(
                "tensor {name} is {ty} {dims:?}, expected {dtype} {shape:?}"
            )));
        }
        let mut bytes = vec![0u8; 4 * elements];
        let mut file = self.file.borrow_mut();
        file.seek(SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| DraftError::io(&self.path, e))?;
        Ok(bytes)
    }
}
