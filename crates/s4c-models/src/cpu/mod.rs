//! The Llama decoder on the host CPU, with weights in their file's storage type
//! ([`crate::quant`]): what [`crate::Llama`] runs on CPU backends.
//!
//! Every step of a forward computes each token's row on its own — the weight products
//! ([`crate::quant::Linear`]), norms, rotary embeddings, attention over the keys the row sees
//! and the MLP — so a token's logits are bit-identical whether it is decoded alone, verified in a
//! tree of 64 or prefilled in a block: greedy speculative decoding reproduces plain greedy
//! decoding exactly.

mod attention;
mod ops;

pub use ops::RotaryLayout;

pub(crate) use attention::HostKv;
use attention::{attend, Heads, KvType, SeenKeys, Visibility};

use burn::tensor::DType;
use rayon::prelude::*;

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::llama::inv_frequencies;
use crate::mask::AttentionMask;
use crate::quant::{Linear, QMatrix, Threads};
use crate::weights::WeightSource;

/// Storage of the weight matrices on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightFormat {
    /// As stored in the file (GGUF block quantizations stay quantized; no copy where the file
    /// can be mapped).
    Native,
    /// Converted to a dense type: F32, F16 or BF16.
    Dense(GgmlType),
}

struct Layer {
    attn_norm: Vec<f32>,
    /// Query, key and value projections stacked.
    wqkv: Linear,
    wo: Linear,
    mlp_norm: Vec<f32>,
    /// Gate and up projections stacked.
    w_gate_up: Linear,
    w_down: Linear,
}

/// A Llama-family model on the host CPU.
pub(crate) struct CpuModel {
    config: LlamaConfig,
    threads: Threads,
    /// Storage type of the KV cache.
    kv: KvType,
    rotary: RotaryLayout,
    inv_freq: Vec<f64>,
    embed: QMatrix,
    lm_head: Linear,
    layers: Vec<Layer>,
    final_norm: Vec<f32>,
}

/// Rows per block of a long causal input (a prompt): the weight products' tiles stay in cache.
pub(crate) const BLOCK_ROWS: usize = 64;

/// The outputs of a host forward.
pub(crate) struct HostOutput {
    /// `[rows][vocab]` logits.
    pub logits: Vec<f32>,
    /// Rows of logits.
    pub rows: usize,
    /// `[n][hidden]` final-norm features.
    pub features: Vec<f32>,
}

impl CpuModel {
    /// Builds the model from `weights`, checking every shape against `config`.
    pub(crate) fn new(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        format: WeightFormat,
        threads: Threads,
        kv_dtype: Option<DType>,
    ) -> Result<Self> {
        let c = config;
        let (h, q, kv, inter) = c.widths();
        let matrix = |name: &str, rows: usize, cols: usize| -> Result<QMatrix> {
            let m = weights.matrix(name)?;
            if (m.rows(), m.cols()) != (rows, cols) {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.into(),
                    found: vec![m.rows(), m.cols()],
                    expected: vec![rows, cols],
                });
            }
            match format {
                WeightFormat::Native => Ok(m),
                WeightFormat::Dense(ty) => m.to_dense(ty),
            }
        };
        let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
            let t = weights.tensor(name)?;
            if t.shape != [len] {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.into(),
                    found: t.shape,
                    expected: vec![len],
                });
            }
            Ok(t.data)
        };
        let embed = matrix("model.embed_tokens.weight", c.vocab_size, h)?;
        let lm_head = if c.tie_word_embeddings || !weights.has("lm_head.weight") {
            Linear::new(vec![embed.clone()])?
        } else {
            Linear::new(vec![matrix("lm_head.weight", c.vocab_size, h)?])?
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |t: &str| format!("model.layers.{l}.{t}.weight");
            layers.push(Layer {
                attn_norm: vector(&p("input_layernorm"), h)?,
                wqkv: Linear::new(vec![
                    matrix(&p("self_attn.q_proj"), q, h)?,
                    matrix(&p("self_attn.k_proj"), kv, h)?,
                    matrix(&p("self_attn.v_proj"), kv, h)?,
                ])?,
                wo: Linear::new(vec![matrix(&p("self_attn.o_proj"), h, q)?])?,
                mlp_norm: vector(&p("post_attention_layernorm"), h)?,
                w_gate_up: Linear::new(vec![
                    matrix(&p("mlp.gate_proj"), inter, h)?,
                    matrix(&p("mlp.up_proj"), inter, h)?,
                ])?,
                w_down: Linear::new(vec![matrix(&p("mlp.down_proj"), h, inter)?])?,
            });
        }
        // By default the cache is f16 beside block-quantized weights, as llama.cpp's, and f32
        // beside dense ones (an f32 model is the fidelity reference).
        let quantized = layers
            .first()
            .is_some_and(|l| l.wqkv.parts().iter().any(QMatrix::quantized));
        let kv = match kv_dtype {
            None if quantized => KvType::F16,
            None | Some(DType::F32) => KvType::F32,
            Some(DType::F16) => KvType::F16,
            Some(other) => {
                return Err(ModelError::UnsupportedDtype {
                    dtype: format!("{other:?}"),
                    backend: "the CPU engine's KV cache".into(),
                    supported: "f32 or f16",
                })
            }
        };
        Ok(CpuModel {
            config: c.clone(),
            threads,
            kv,
            rotary: weights.rotary_layout(),
            inv_freq: inv_frequencies(c),
            embed,
            lm_head,
            layers,
            final_norm: vector("model.norm.weight", h)?,
        })
    }

    /// The threads and instruction set of the kernels.
    pub(crate) fn threads(&self) -> &Threads {
        &self.threads
    }

    /// The storage types of the weight matrices, deduplicated (e.g. `["Q4_1", "Q8_0"]`).
    pub(crate) fn weight_types(&self) -> Vec<String> {
        let mut v: Vec<String> = std::iter::once(&self.embed)
            .chain(self.lm_head.parts())
            .chain(self.layers.iter().flat_map(|l| {
                [&l.wqkv, &l.wo, &l.w_gate_up, &l.w_down]
                    .into_iter()
                    .flat_map(|w| w.parts())
            }))
            .map(|m| m.ty().name())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// A fresh cache for `capacity` tokens.
    pub(crate) fn new_cache(&self, capacity: usize) -> HostKv {
        let c = &self.config;
        HostKv::new(c.num_layers, c.num_kv_heads, c.head_dim, capacity, self.kv)
    }

    /// The storage type of the KV cache.
    pub(crate) fn kv_dtype(&self) -> DType {
        match self.kv {
            KvType::F32 => DType::F32,
            KvType::F16 => DType::F16,
        }
    }

    /// Embedding rows of `tokens` (`[n][hidden]`).
    pub(crate) fn embed(&self, tokens: &[usize]) -> Result<Vec<f32>> {
        self.embed.dequantize_rows(tokens)
    }

    /// The LM head's logits of `n` feature rows.
    pub(crate) fn lm_head(&self, features: &[f32], n: usize) -> Vec<f32> {
        self.lm_head.forward(features, n, &self.threads)
    }

    /// The LM head's matrix in its storage type.
    pub(crate) fn lm_head_matrix(&self) -> &QMatrix {
        &self.lm_head.parts()[0]
    }

    /// The LM head's weights `[vocab, hidden]` in `f32`.
    pub(crate) fn lm_head_weight(&self) -> Vec<f32> {
        self.lm_head
            .parts()
            .iter()
            .flat_map(QMatrix::dequantize)
            .collect()
    }

    /// Runs `tokens` at `positions` against the first `cached` entries of `cache` (validated by
    /// the caller), writes their keys and values at `cached..`, and returns the logits of every
    /// row (`all`) or of the last one, and every row's features.
    pub(crate) fn forward(
        &self,
        tokens: &[u32],
        positions: &[usize],
        mask: Option<&AttentionMask>,
        all: bool,
        cache: &mut HostKv,
        cached: usize,
    ) -> Result<HostOutput> {
        self.threads.install(|| {
            let n = tokens.len();
            let h = self.config.hidden_size;
            // A long causal input runs in blocks; a masked one (a tree) in one piece.
            let block = if mask.is_some() { n } else { BLOCK_ROWS };
            let mut features = Vec::with_capacity(n * h);
            for s in (0..n).step_by(block.max(1)) {
                let e = (s + block).min(n);
                let visible = match mask {
                    Some(m) => Visibility::Mask { mask: m, offset: s },
                    None => Visibility::Causal { cached: cached + s },
                };
                features.extend(self.layers_forward(&mut [Segment {
                    tokens: &tokens[s..e],
                    positions: &positions[s..e],
                    visible,
                    cache: &mut *cache,
                    start: cached + s,
                }])?);
            }
            let (rows, logits) = if all {
                (n, self.lm_head(&features, n))
            } else {
                (1, self.lm_head(&features[(n - 1) * h..], 1))
            };
            Ok(HostOutput {
                logits,
                rows,
                features,
            })
        })
    }

    /// Several sequences' blocks (causal, or verification trees with their masks) in one pass:
    /// every weight matrix is read once for all their rows, attention runs per sequence on its
    /// own cache. Each row's result is the same bits as in [`Self::forward`] (the kernels
    /// compute every row on its own).
    pub(crate) fn forward_batch(&self, items: &mut [BatchRows<'_>]) -> Result<Vec<HostOutput>> {
        self.threads.install(|| {
            let h = self.config.hidden_size;
            let mut segments: Vec<Segment<'_>> = items
                .iter_mut()
                .map(|b| Segment {
                    tokens: b.tokens,
                    positions: b.positions,
                    visible: match b.mask {
                        Some(mask) => Visibility::Mask { mask, offset: 0 },
                        None => Visibility::Causal { cached: b.cached },
                    },
                    start: b.cached,
                    cache: &mut *b.cache,
                })
                .collect();
            let features = self.layers_forward(&mut segments)?;
            // One LM-head pass over the rows whose logits are wanted.
            let mut wanted = vec![];
            let mut offset = 0;
            let mut spans = vec![];
            for b in items.iter() {
                let n = b.tokens.len();
                let rows = if b.all {
                    offset..offset + n
                } else {
                    offset + n - 1..offset + n
                };
                spans.push((offset, n, rows.len()));
                wanted.extend_from_slice(&features[rows.start * h..rows.end * h]);
                offset += n;
            }
            let total: usize = spans.iter().map(|s| s.2).sum();
            let logits = self.lm_head(&wanted, total);
            let v = logits.len() / total.max(1);
            let mut out = vec![];
            let mut at = 0;
            for (offset, n, rows) in spans {
                out.push(HostOutput {
                    logits: logits[at * v..(at + rows) * v].to_vec(),
                    rows,
                    features: features[offset * h..(offset + n) * h].to_vec(),
                });
                at += rows;
            }
            Ok(out)
        })
    }

    /// The decoder layers over blocks of tokens of one or more sequences (each block's keys go
    /// to its cache's slots `start..`); returns their final-norm features, rows in order.
    fn layers_forward(&self, segments: &mut [Segment<'_>]) -> Result<Vec<f32>> {
        let c = &self.config;
        let n: usize = segments.iter().map(|s| s.tokens.len()).sum();
        let (hd, h) = (c.head_dim, c.hidden_size);
        let heads = Heads {
            q: c.num_heads,
            kv: c.num_kv_heads,
            dim: hd,
        };
        let (qw, kvw) = (heads.q * hd, heads.kv * hd);
        let eps = c.rms_norm_eps as f32;
        let avx2 = self.threads.isa().has_avx2();
        let ids: Vec<usize> = segments
            .iter()
            .flat_map(|s| s.tokens.iter().map(|&t| t as usize))
            .collect();
        let positions: Vec<usize> = segments
            .iter()
            .flat_map(|s| s.positions.iter().copied())
            .collect();
        // The keys each row sees, the same in every layer.
        let seen: Vec<SeenKeys> = segments
            .iter()
            .map(|s| SeenKeys::new(s.visible, s.tokens.len()))
            .collect();
        let mut x = self.embed(&ids)?;
        let (cos, sin) = ops::rotary_angles(&self.inv_freq, &positions);
        let mut xn = vec![0f32; n * h];
        let (mut q, mut k, mut v) = (vec![0f32; n * qw], vec![0f32; n * kvw], vec![0f32; n * kvw]);
        let mut mid = vec![0f32; n * c.intermediate_size];
        let rotary = Rotary {
            cos: &cos,
            sin: &sin,
            layout: self.rotary,
        };
        let first_norm = self
            .layers
            .first()
            .map_or(&self.final_norm, |first| &first.attn_norm);
        norm_rows(&x, first_norm, eps, &mut xn);
        for (l, layer) in self.layers.iter().enumerate() {
            let qkv = layer.wqkv.forward(&xn, n, &self.threads);
            split_rotate_rows(&qkv, heads, rotary, &mut q, &mut k, &mut v);
            let mut att = Vec::with_capacity(n * qw);
            let mut r0 = 0;
            for (seg, seen) in segments.iter_mut().zip(&seen) {
                let r1 = r0 + seg.tokens.len();
                seg.cache
                    .write(l, seg.start, &k[r0 * kvw..r1 * kvw], &v[r0 * kvw..r1 * kvw]);
                att.extend(attend(
                    seg.cache,
                    l,
                    &q[r0 * qw..r1 * qw],
                    heads,
                    seen,
                    avx2,
                ));
                r0 = r1;
            }
            let o = layer.wo.forward(&att, n, &self.threads);
            add_norm_rows(&mut x, &o, &layer.mlp_norm, eps, &mut xn);
            let gu = layer.w_gate_up.forward(&xn, n, &self.threads);
            swiglu_rows(&gu, c.intermediate_size, &mut mid, avx2);
            let down = layer.w_down.forward(&mid, n, &self.threads);
            // The residual, and the next layer's attention norm (the final norm after the last).
            let next = self
                .layers
                .get(l + 1)
                .map_or(&self.final_norm, |next| &next.attn_norm);
            add_norm_rows(&mut x, &down, next, eps, &mut xn);
        }
        Ok(xn)
    }
}

/// Rows one task of the row-wise steps (norms, rotary embeddings, SwiGLU, residual sums) takes:
/// a block of more rows is split over the threads, a decode step or a small tree runs on the
/// calling thread. Each row is computed on its own either way (the same bits).
const ROWS_PER_TASK: usize = 16;

/// [`ops::rms_norm`] of every row of `x` into `out`.
fn norm_rows(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let part = ROWS_PER_TASK * weight.len();
    out.par_chunks_mut(part)
        .zip(x.par_chunks(part))
        .for_each(|(out, x)| ops::rms_norm(x, weight, eps, out));
}

/// `x += d` (a residual sum), then [`ops::rms_norm`] of every row of the new `x` into `out`.
fn add_norm_rows(x: &mut [f32], d: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let part = ROWS_PER_TASK * weight.len();
    x.par_chunks_mut(part)
        .zip(d.par_chunks(part))
        .zip(out.par_chunks_mut(part))
        .for_each(|((x, d), out)| {
            x.iter_mut().zip(d).for_each(|(x, d)| *x += d);
            ops::rms_norm(x, weight, eps, out);
        });
}

/// [`ops::swiglu`] of every row of the fused `[gate ‖ up]` rows into `out`.
fn swiglu_rows(gate_up: &[f32], inter: usize, out: &mut [f32], avx2: bool) {
    out.par_chunks_mut(ROWS_PER_TASK * inter)
        .zip(gate_up.par_chunks(ROWS_PER_TASK * 2 * inter))
        .for_each(|(out, gate_up)| ops::swiglu(gate_up, inter, out, avx2));
}

/// The rotary angles of a block's rows: `cos`/`sin` hold `head_dim / 2` values per row.
#[derive(Clone, Copy)]
struct Rotary<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
    layout: RotaryLayout,
}

/// Splits each row of the fused projection `qkv` (`[q ‖ k ‖ v]`) into `q`, `k` and `v`, and
/// rotates each query and key head by its row's angles.
fn split_rotate_rows(
    qkv: &[f32],
    heads: Heads,
    rotary: Rotary<'_>,
    q: &mut [f32],
    k: &mut [f32],
    v: &mut [f32],
) {
    let hd = heads.dim;
    let (qw, kvw) = (heads.q * hd, heads.kv * hd);
    let r = ROWS_PER_TASK;
    q.par_chunks_mut(r * qw)
        .zip(k.par_chunks_mut(r * kvw))
        .zip(v.par_chunks_mut(r * kvw))
        .zip(qkv.par_chunks(r * (qw + 2 * kvw)))
        .enumerate()
        .for_each(|(t, (((q, k), v), qkv))| {
            let rows = q
                .chunks_exact_mut(qw)
                .zip(k.chunks_exact_mut(kvw))
                .zip(v.chunks_exact_mut(kvw))
                .zip(qkv.chunks_exact(qw + 2 * kvw));
            for (i, (((q, k), v), src)) in rows.enumerate() {
                let at = (t * r + i) * hd / 2;
                let (cos, sin) = (&rotary.cos[at..at + hd / 2], &rotary.sin[at..at + hd / 2]);
                q.copy_from_slice(&src[..qw]);
                k.copy_from_slice(&src[qw..qw + kvw]);
                v.copy_from_slice(&src[qw + kvw..]);
                for head in q.chunks_exact_mut(hd).chain(k.chunks_exact_mut(hd)) {
                    ops::rotate(head, cos, sin, rotary.layout);
                }
            }
        });
}

/// One sequence's block in [`CpuModel::layers_forward`].
struct Segment<'a> {
    tokens: &'a [u32],
    positions: &'a [usize],
    visible: Visibility<'a>,
    cache: &'a mut HostKv,
    start: usize,
}

/// One sequence's block in [`CpuModel::forward_batch`].
pub(crate) struct BatchRows<'a> {
    /// Its new tokens.
    pub tokens: &'a [u32],
    /// Their positions.
    pub positions: &'a [usize],
    /// Visibility over `[cached ‖ new]` (a tree); `None` is causal.
    pub mask: Option<&'a AttentionMask>,
    /// Logits of every row (else of the last).
    pub all: bool,
    /// Its cache.
    pub cache: &'a mut HostKv,
    /// Entries already in the cache.
    pub cached: usize,
}
