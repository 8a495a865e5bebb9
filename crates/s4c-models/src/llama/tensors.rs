//! The Llama decoder in Burn tensor operations, for GPU backends: RMSNorm, rotate-half rotary
//! embeddings, grouped-query attention with an arbitrary mask over `[cached ‖ new]`, SwiGLU MLP,
//! optional tied embeddings.

use burn::tensor::{
    activation::silu, backend::Backend, module::attention, ops::AttentionModuleOptions, DType, Int,
    Tensor, TensorData,
};

use super::inv_frequencies;
use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::host::HostTensor;
use crate::lm::{Input, Logits};
use crate::weights::WeightSource;

/// A weight matrix stored `[out, in]`, split by output rows into shards that decode steps
/// multiply concurrently (a matrix-vector product is memory-bound, and one CPU thread does not
/// saturate memory bandwidth).
struct Linear<B: Backend>(Vec<Tensor<B, 2>>);

impl<B: Backend> Linear<B> {
    fn new(w: Tensor<B, 2>, shards: usize) -> Self {
        let [out, inp] = w.dims();
        let shards = shards.clamp(1, out.max(1));
        if shards == 1 {
            return Linear(vec![w]);
        }
        let step = out.div_ceil(shards);
        let parts = (0..out)
            .step_by(step)
            .map(|s| w.clone().slice([s..(s + step).min(out), 0..inp]))
            .collect();
        Linear(parts)
    }

    /// The whole matrix `[out, in]` (in the storage type).
    fn weight(&self) -> Tensor<B, 2> {
        Tensor::cat(self.0.clone(), 0)
    }

    /// `x · Wᵀ`. Shards run in parallel for a few rows (decode), one after another otherwise
    /// (the backend's matmul already parallelises large products).
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let shards = &self.0;
        if shards.len() == 1 {
            return x.matmul(shards[0].clone().transpose());
        }
        let one = |w: &Tensor<B, 2>| x.clone().matmul(w.clone().transpose());
        let outs: Vec<Tensor<B, 2>> = if x.dims()[0] <= PARALLEL_ROWS {
            use rayon::prelude::*;
            shards.par_iter().map(one).collect()
        } else {
            shards.iter().map(one).collect()
        };
        Tensor::cat(outs, 1)
    }
}

/// Up to this many rows, the shards of a [`Linear`] are multiplied concurrently.
const PARALLEL_ROWS: usize = 4;

struct Layer<B: Backend> {
    attn_norm: Tensor<B, 2>,
    /// `[q + 2·kv, hidden]`: query, key and value projections fused (rows `[out, in]`, as in files).
    wqkv: Linear<B>,
    /// `[hidden, q]`
    wo: Linear<B>,
    mlp_norm: Tensor<B, 2>,
    /// `[2·intermediate, hidden]`: gate and up projections fused.
    w_gate_up: Linear<B>,
    /// `[hidden, intermediate]`
    w_down: Linear<B>,
}

/// A Llama-family model in Burn tensors on backend `B`.
pub(crate) struct TensorLlama<B: Backend> {
    config: LlamaConfig,
    device: B::Device,
    /// Storage type of the weight matrices and the embedding.
    dtype: DType,
    /// Type of activations, norms, the KV cache and the returned logits and features.
    compute_dtype: DType,
    /// `[vocab, hidden]`
    embed: Tensor<B, 2>,
    /// `[vocab, hidden]`; the same tensor as `embed` when embeddings are tied.
    lm_head: Linear<B>,
    layers: Vec<Layer<B>>,
    final_norm: Tensor<B, 2>,
    /// `[max_positions, head_dim]` cosines and sign-folded sines (rotate-half convention).
    rope_cos: Tensor<B, 2>,
    rope_sin: Tensor<B, 2>,
}

/// One forward's rotary tables: cosines and sines `[n, heads + kv_heads, head_dim]`, one row per
/// (token, query or key head), so `rope`'s products are elementwise (broadcasting over heads is
/// ~40× slower on flex).
struct Rotary<B: Backend>(Tensor<B, 3>, Tensor<B, 3>);

impl<B: Backend> TensorLlama<B> {
    /// Builds the model from a weight source, checking every shape against `config`.
    ///
    /// Weights are stored in `dtype` and activations (norms, attention, KV cache, outputs)
    /// computed in `compute_dtype`. `shards > 1` splits every weight matrix into that many row
    /// blocks multiplied concurrently during decoding. `max_positions` bounds the positions the
    /// rotary table covers.
    pub(crate) fn build(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        dtype: DType,
        compute_dtype: DType,
        max_positions: usize,
        shards: usize,
    ) -> Result<Self> {
        let c = config;
        let (h, q, kv, inter) = c.widths();
        let get = |name: &str, shape: &[usize]| -> Result<HostTensor> {
            let t = weights.tensor(name)?;
            if t.shape != shape {
                return Err(ModelError::ShapeMismatch {
                    tensor: name.into(),
                    found: t.shape,
                    expected: shape.to_vec(),
                });
            }
            Ok(t)
        };
        let up = |t: HostTensor| -> Tensor<B, 2> {
            let shape = [t.shape[0], t.shape.get(1).copied().unwrap_or(1)];
            Tensor::from_data(TensorData::new(t.data, shape), (device, dtype))
        };
        let norm = |t: HostTensor| -> Tensor<B, 2> {
            let n = t.len();
            Tensor::from_data(TensorData::new(t.data, [1, n]), (device, compute_dtype))
        };
        // Linear weights stay `[out, in]` as in the files (x·Wᵀ through a transposed view was the
        // faster layout on flex); fused projections stack their rows.
        let fused = |parts: Vec<HostTensor>| -> Linear<B> {
            let rows: usize = parts.iter().map(|p| p.shape[0]).sum();
            let cols = parts[0].shape[1];
            let mut data = Vec::with_capacity(rows * cols);
            for p in parts {
                data.extend(p.data);
            }
            Linear::new(
                Tensor::from_data(TensorData::new(data, [rows, cols]), (device, dtype)),
                shards,
            )
        };
        let embed = up(get("model.embed_tokens.weight", &[c.vocab_size, h])?);
        let lm_head = if c.tie_word_embeddings || !weights.has("lm_head.weight") {
            Linear::new(embed.clone(), shards)
        } else {
            Linear::new(up(get("lm_head.weight", &[c.vocab_size, h])?), shards)
        };
        let mut layers = Vec::with_capacity(c.num_layers);
        for l in 0..c.num_layers {
            let p = |t: &str| format!("model.layers.{l}.{t}.weight");
            layers.push(Layer {
                attn_norm: norm(get(&p("input_layernorm"), &[h])?),
                wqkv: fused(vec![
                    get(&p("self_attn.q_proj"), &[q, h])?,
                    get(&p("self_attn.k_proj"), &[kv, h])?,
                    get(&p("self_attn.v_proj"), &[kv, h])?,
                ]),
                wo: fused(vec![get(&p("self_attn.o_proj"), &[h, q])?]),
                mlp_norm: norm(get(&p("post_attention_layernorm"), &[h])?),
                w_gate_up: fused(vec![
                    get(&p("mlp.gate_proj"), &[inter, h])?,
                    get(&p("mlp.up_proj"), &[inter, h])?,
                ]),
                w_down: fused(vec![get(&p("mlp.down_proj"), &[h, inter])?]),
            });
        }
        let final_norm = norm(get("model.norm.weight", &[h])?);
        let (cos, sin) = rotary_tables(&inv_frequencies(c), max_positions);
        let table = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(
                TensorData::new(v, [max_positions, c.head_dim]),
                (device, compute_dtype),
            )
        };
        Ok(TensorLlama {
            config: c.clone(),
            device: device.clone(),
            dtype,
            compute_dtype,
            embed,
            lm_head,
            layers,
            final_norm,
            rope_cos: table(cos),
            rope_sin: table(sin),
        })
    }

    /// The storage type of the weight matrices.
    pub(crate) fn dtype(&self) -> DType {
        self.dtype
    }

    /// The type of activations, the KV cache, logits and features.
    pub(crate) fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// `x · Wᵀ` for a weight stored `[out, in]`, casting around it when the weights are stored
    /// in another type than activations.
    fn linear(&self, x: Tensor<B, 2>, w: &Linear<B>) -> Tensor<B, 2> {
        if self.dtype == self.compute_dtype {
            w.forward(x)
        } else {
            w.forward(x.cast(self.dtype)).cast(self.compute_dtype)
        }
    }

    /// RMSNorm; half-precision activations are normalised in `f32` (their squares overflow f16).
    fn rms_norm(&self, x: Tensor<B, 2>, w: &Tensor<B, 2>) -> Tensor<B, 2> {
        let half = matches!(self.compute_dtype, DType::F16 | DType::BF16);
        let xf = if half { x.cast(DType::F32) } else { x };
        let ms = (xf.clone() * xf.clone()).mean_dim(1);
        let inv = (ms + self.config.rms_norm_eps).sqrt().recip();
        let y = xf * inv;
        let y = if half { y.cast(self.compute_dtype) } else { y };
        y * w.clone()
    }

    /// `x·cos + swap_halves(x)·sin`, with `x` and both tables `[n, heads, head_dim]`.
    fn rope(x: Tensor<B, 3>, rotary: &Rotary<B>) -> Tensor<B, 3> {
        let [n, heads, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().slice([0..n, 0..heads, 0..half]);
        let x2 = x.clone().slice([0..n, 0..heads, half..hd]);
        let swapped = Tensor::cat(vec![x2, x1], 2);
        x * rotary.0.clone() + swapped * rotary.1.clone()
    }

    /// Queries `[1, kv_heads, group·n, head_dim]` (a key head's queries side by side), keys and
    /// values `[1, kv_heads, n, head_dim]` of `n` normalised rows, queries and keys rotated.
    fn qkv_heads(
        &self,
        xn: Tensor<B, 2>,
        layer: &Layer<B>,
        rotary: &Rotary<B>,
    ) -> [Tensor<B, 4>; 3] {
        let c = &self.config;
        let [n, _] = xn.dims();
        let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = c.group_size();
        let (qd, kvd) = (heads * hd, kvh * hd);
        let qkv = self.linear(xn, &layer.wqkv);
        // Queries and keys are rotated together, as `heads + kv_heads` heads.
        let qk = qkv
            .clone()
            .slice([0..n, 0..qd + kvd])
            .reshape([n, heads + kvh, hd]);
        let qk = Self::rope(qk, rotary);
        let q = qk.clone().slice([0..n, 0..heads, 0..hd]);
        let k = qk.slice([0..n, heads..heads + kvh, 0..hd]);
        let v = qkv
            .slice([0..n, qd + kvd..qd + 2 * kvd])
            .reshape([n, kvh, hd]);
        [
            q.swap_dims(0, 1).reshape([1, kvh, group * n, hd]),
            k.swap_dims(0, 1).reshape([1, kvh, n, hd]),
            v.swap_dims(0, 1).reshape([1, kvh, n, hd]),
        ]
    }

    /// The attention output `[1, kv_heads, group·n, head_dim]` through the output projection.
    fn attention_out(&self, att: Tensor<B, 4>, layer: &Layer<B>, n: usize) -> Tensor<B, 2> {
        let c = &self.config;
        let (heads, hd) = (c.num_heads, c.head_dim);
        let att = att
            .reshape([heads, n, hd])
            .swap_dims(0, 1)
            .reshape([n, heads * hd]);
        self.linear(att, &layer.wo)
    }

    /// The SwiGLU MLP of `n` normalised rows.
    fn mlp(&self, xn: Tensor<B, 2>, layer: &Layer<B>) -> Tensor<B, 2> {
        let [n, _] = xn.dims();
        let inter = self.config.intermediate_size;
        let gu = self.linear(xn, &layer.w_gate_up);
        let gate = gu.clone().slice([0..n, 0..inter]);
        let up = gu.slice([0..n, inter..2 * inter]);
        self.linear(silu(gate) * up, &layer.w_down)
    }

    fn ids(&self, v: impl Iterator<Item = i64>) -> Tensor<B, 1, Int> {
        let v: Vec<i64> = v.collect();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &self.device)
    }

    /// Token embeddings in the compute type.
    pub(crate) fn embed(&self, tokens: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let e = self.embed.clone().select(0, tokens);
        if self.dtype == self.compute_dtype {
            e
        } else {
            e.cast(self.compute_dtype)
        }
    }

    /// The LM head's logits of `features`.
    pub(crate) fn lm_head(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear(features, &self.lm_head)
    }

    /// The LM head's weights in the compute type.
    pub(crate) fn lm_head_weight(&self) -> Tensor<B, 2> {
        let w = self.lm_head.weight();
        if self.dtype == self.compute_dtype {
            w
        } else {
            w.cast(self.compute_dtype)
        }
    }

    /// A validated input: returns its logits (per [`Logits`]) and features `[n, hidden]`.
    pub(crate) fn forward(
        &self,
        input: &Input<'_>,
        cache: &mut KvCache<B>,
    ) -> Result<(Tensor<B, 2>, Tensor<B, 2>)> {
        let n = input.tokens.len();
        let features = self.layers_forward(input, cache)?;
        let logits = match input.logits {
            Logits::All => self.lm_head(features.clone()),
            Logits::Last => {
                let h = self.config.hidden_size;
                self.lm_head(features.clone().slice([n - 1..n, 0..h]))
            }
        };
        Ok((logits, features))
    }

    /// The decoder layers over the new tokens: appends their keys and values to the cache and
    /// returns their final-norm features `[n, hidden]`.
    fn layers_forward(&self, input: &Input<'_>, cache: &mut KvCache<B>) -> Result<Tensor<B, 2>> {
        let c = &self.config;
        let n = input.tokens.len();
        let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = c.group_size();
        let cached = cache.len();

        let mut x = self.embed(self.ids(input.tokens.iter().map(|&t| t as i64)));
        let pos = self.ids(input.positions.iter().map(|&p| p as i64));
        let table = |t: &Tensor<B, 2>, pos| {
            t.clone()
                .select(0, pos)
                .reshape([n, 1, hd])
                .repeat_dim(1, heads + kvh)
        };
        let rotary = Rotary(
            table(&self.rope_cos, pos.clone()),
            table(&self.rope_sin, pos),
        );
        let mask = match input.mask {
            Some(m) => Some(m.to_burn::<B>(kvh, group, &self.device)),
            None if n > 1 => Some(crate::mask::AttentionMask::causal(cached, n).to_burn::<B>(
                kvh,
                group,
                &self.device,
            )),
            None => None,
        };

        for (l, layer) in self.layers.iter().enumerate() {
            let xn = self.rms_norm(x.clone(), &layer.attn_norm);
            let [q, k, v] = self.qkv_heads(xn, layer, &rotary);
            let (k_all, v_all) = cache.append(l, k, v)?;
            let att = attention(
                q,
                k_all,
                v_all,
                mask.clone(),
                None,
                AttentionModuleOptions::default(),
            );
            x = x + self.attention_out(att, layer, n);
            let xn = self.rms_norm(x.clone(), &layer.mlp_norm);
            x = x + self.mlp(xn, layer);
        }
        cache.advance(n);
        Ok(self.rms_norm(x, &self.final_norm))
    }
}

/// Rotary cosines and sign-folded sines `[positions, head_dim]` (rotate-half convention:
/// `rotate_half(x) = [-x2, x1]` is `swap(x) = [x2, x1]` times the sine row, whose first half is
/// negated).
fn rotary_tables(inv_freq: &[f64], positions: usize) -> (Vec<f32>, Vec<f32>) {
    let hd = inv_freq.len() * 2;
    let mut cos = Vec::with_capacity(positions * hd);
    let mut sin = Vec::with_capacity(positions * hd);
    for p in 0..positions {
        for s in 0..2 {
            for f in inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(if s == 0 { -a.sin() } else { a.sin() } as f32);
            }
        }
    }
    (cos, sin)
}
