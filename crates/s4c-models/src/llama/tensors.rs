//! The Llama decoder on Burn: RMSNorm, rotate-half rotary embeddings, grouped-query attention with
//! an arbitrary mask over `[cached ‖ new]`, SwiGLU MLP, optional tied embeddings.

use burn::tensor::{
    activation::silu, backend::Backend, module::attention, ops::AttentionModuleOptions, DType, Int,
    Tensor, TensorData,
};

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::host::HostTensor;
use crate::host_matmul::{HostLinear, HostWeights};
use crate::host_ops::{self, Heads};
use crate::lm::{CausalLm, Input, LmOutput, Logits};
use crate::weights::WeightSource;

/// A weight matrix stored `[out, in]`: on the backend, split by output rows into shards that
/// decode steps multiply concurrently (a matrix-vector product is memory-bound, and one CPU
/// thread does not saturate memory bandwidth), or in host memory for the CPU kernel of
/// [`crate::host_matmul`] (see [`Llama::with_host_matmul`]).
enum Linear<B: Backend> {
    Device(Vec<Tensor<B, 2>>),
    /// Both copies: the host kernel for `HOST_ROWS` rows, the backend otherwise (one row is a
    /// memory-bound product the backend does well).
    Dual(Vec<Tensor<B, 2>>, HostLinear),
}

/// Row counts the host kernel handles when weights are on both sides (see the benchmarks);
/// longer causal blocks (prompts) run in blocks of the largest.
const HOST_ROWS: std::ops::RangeInclusive<usize> = 2..=64;

impl<B: Backend> Linear<B> {
    fn new(w: Tensor<B, 2>, shards: usize) -> Self {
        let [out, inp] = w.dims();
        let shards = shards.clamp(1, out.max(1));
        if shards == 1 {
            return Linear::Device(vec![w]);
        }
        let step = out.div_ceil(shards);
        let parts = (0..out)
            .step_by(step)
            .map(|s| w.clone().slice([s..(s + step).min(out), 0..inp]))
            .collect();
        Linear::Device(parts)
    }

    /// The whole matrix `[out, in]` on the backend (in the storage type).
    fn weight(&self) -> Tensor<B, 2> {
        match self {
            Linear::Device(shards) | Linear::Dual(shards, _) => Tensor::cat(shards.clone(), 0),
        }
    }

    /// The same matrix with a host copy in `dtype` (f16 stays f16, anything else is f32).
    fn with_host(&self, dtype: DType) -> Result<Self> {
        let (Linear::Device(shards) | Linear::Dual(shards, _)) = self;
        let w = self.weight();
        let [out, inp] = w.dims();
        let data = w.into_data();
        let read = |e| ModelError::InvalidInput(format!("reading weights to the host: {e:?}"));
        let weights = if dtype == DType::F16 {
            HostWeights::F16(data.convert::<half::f16>().to_vec().map_err(read)?)
        } else {
            HostWeights::F32(data.convert::<f32>().to_vec().map_err(read)?)
        };
        Ok(Linear::Dual(
            shards.clone(),
            HostLinear::new(out, inp, weights),
        ))
    }

    /// The host copy, when it serves a product of `rows` rows.
    fn host_for(&self, rows: usize) -> Option<&HostLinear> {
        match self {
            Linear::Dual(_, h) if HOST_ROWS.contains(&rows) => Some(h),
            _ => None,
        }
    }

    /// `x · Wᵀ`. Device shards run in parallel for a few rows (decode), one after another
    /// otherwise (the backend's matmul already parallelises large products).
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        if let Some(h) = self.host_for(x.dims()[0]) {
            let [m, _] = x.dims();
            let (device, dtype) = (x.device(), x.dtype());
            let y = h.matmul(&host_values(x), m);
            return Tensor::from_data(TensorData::new(y, [m, h.out_features()]), (&device, dtype));
        }
        let (Linear::Device(shards) | Linear::Dual(shards, _)) = self;
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

/// A tensor's values on the host, as `f32`.
fn host_values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Vec<f32> {
    x.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .expect("converted to f32 just before")
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

/// A Llama-family causal language model on backend `B`.
pub struct Llama<B: Backend> {
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
    /// Inverse rotary frequencies (for the host path's tables).
    inv_freq: Vec<f64>,
    max_positions: usize,
}

/// One forward's rotary tables, on the side its layers run on.
enum Rotary<B: Backend> {
    /// Cosines and sines `[n, heads + kv_heads, head_dim]`: one row per (token, query or key
    /// head), so `rope`'s products are elementwise (broadcasting over heads is ~40× slower on
    /// flex).
    Device(Tensor<B, 3>, Tensor<B, 3>),
    /// Cosines and sines `[n, head_dim]` on the host ([`host_ops::rotary_tables`]): the block's
    /// weight products run in [`crate::host_matmul`] and the steps between them on the host.
    Host(Vec<f32>, Vec<f32>),
}

/// Inverse rotary frequencies, with Llama 3 scaling when configured.
pub fn inv_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    let Some(rs) = config.rope_scaling else {
        return base;
    };
    let old = rs.original_max_position_embeddings as f64;
    let low_wavelen = old / rs.low_freq_factor;
    let high_wavelen = old / rs.high_freq_factor;
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / rs.factor
            } else {
                let smooth = (old / wavelen - rs.low_freq_factor)
                    / (rs.high_freq_factor - rs.low_freq_factor);
                (1.0 - smooth) * f / rs.factor + smooth * f
            }
        })
        .collect()
}

impl<B: Backend> Llama<B> {
    /// Builds the model from a weight source, checking every shape against `config`.
    ///
    /// `max_positions` bounds the positions the rotary table covers (and so the context). Weight
    /// matrices and activations both use `dtype` (see [`Llama::build`] for mixed precision).
    pub fn from_weights(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        dtype: DType,
        max_positions: usize,
    ) -> Result<Self> {
        Self::build(config, weights, device, dtype, dtype, max_positions, 1)
    }

    /// The full constructor. Weights are stored in `dtype` and activations (norms, attention, KV
    /// cache, outputs) computed in `compute_dtype`: `f16` weights with `f32` compute halve the
    /// bytes a memory-bound decode step reads. `shards > 1` splits every weight matrix into that
    /// many row blocks multiplied concurrently during decoding (CPU cores on `flex`; 1 on GPUs).
    pub fn build(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        dtype: DType,
        compute_dtype: DType,
        max_positions: usize,
        shards: usize,
    ) -> Result<Self> {
        let c = config;
        let (h, q, kv, inter) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
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
            let p = format!("model.layers.{l}");
            layers.push(Layer {
                attn_norm: norm(get(&format!("{p}.input_layernorm.weight"), &[h])?),
                wqkv: fused(vec![
                    get(&format!("{p}.self_attn.q_proj.weight"), &[q, h])?,
                    get(&format!("{p}.self_attn.k_proj.weight"), &[kv, h])?,
                    get(&format!("{p}.self_attn.v_proj.weight"), &[kv, h])?,
                ]),
                wo: fused(vec![get(&format!("{p}.self_attn.o_proj.weight"), &[h, q])?]),
                mlp_norm: norm(get(&format!("{p}.post_attention_layernorm.weight"), &[h])?),
                w_gate_up: fused(vec![
                    get(&format!("{p}.mlp.gate_proj.weight"), &[inter, h])?,
                    get(&format!("{p}.mlp.up_proj.weight"), &[inter, h])?,
                ]),
                w_down: fused(vec![get(
                    &format!("{p}.mlp.down_proj.weight"),
                    &[h, inter],
                )?]),
            });
        }
        let final_norm = norm(get("model.norm.weight", &[h])?);
        let max_positions = max_positions.max(1);
        let inv = inv_frequencies(c);
        let (cos, sin) = host_ops::rotary_tables(&inv, 0..max_positions);
        let table = |v: Vec<f32>| {
            Tensor::<B, 2>::from_data(
                TensorData::new(v, [max_positions, c.head_dim]),
                (device, compute_dtype),
            )
        };
        Ok(Llama {
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
            inv_freq: inv,
            max_positions,
        })
    }

    /// Adds a host copy of every weight matrix (and the LM head), multiplied by the CPU kernel
    /// of [`crate::host_matmul`] for blocks of 2–64 rows (verification trees; prompts run in
    /// blocks of 64), where Burn's CPU matmul is slow; the steps between the products of such a
    /// block run on the host too ([`crate::host_ops`]). One-row decode steps keep the backend.
    /// Costs a second copy of the weights (in their storage type). Not for GPUs (it reads the
    /// activations back to the host).
    pub fn with_host_matmul(mut self) -> Result<Self> {
        for l in self.layers.iter_mut() {
            for w in [&mut l.wqkv, &mut l.wo, &mut l.w_gate_up, &mut l.w_down] {
                *w = w.with_host(self.dtype)?;
            }
        }
        self.lm_head = self.lm_head.with_host(self.dtype)?;
        Ok(self)
    }

    /// Whether the weight matrices are multiplied on the host ([`Llama::with_host_matmul`]).
    pub fn host_matmul(&self) -> bool {
        matches!(self.lm_head, Linear::Dual(..))
    }

    /// The storage type of the weight matrices.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The type of activations, the KV cache, logits and features.
    pub fn compute_dtype(&self) -> DType {
        self.compute_dtype
    }

    /// `x · Wᵀ` for a weight stored `[out, in]`, casting around it when the weights are stored
    /// in another type than activations.
    fn linear(&self, x: Tensor<B, 2>, w: &Linear<B>) -> Tensor<B, 2> {
        // The host kernel takes activations in any type and returns them in the same type.
        if self.dtype == self.compute_dtype || w.host_for(x.dims()[0]).is_some() {
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
    fn rope(x: Tensor<B, 3>, cos: &Tensor<B, 3>, sin: &Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, heads, hd] = x.dims();
        let half = hd / 2;
        let x1 = x.clone().slice([0..n, 0..heads, 0..half]);
        let x2 = x.clone().slice([0..n, 0..heads, half..hd]);
        let swapped = Tensor::cat(vec![x2, x1], 2);
        x * cos.clone() + swapped * sin.clone()
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
        match rotary {
            Rotary::Host(cos, sin) => {
                let w = layer.wqkv.host_for(n).expect("host path chosen for n rows");
                let qkv = w.matmul(&host_values(xn), n);
                let shape = Heads {
                    q: heads,
                    kv: kvh,
                    dim: hd,
                };
                let (q, k, v) = host_ops::split_heads(&qkv, n, shape, cos, sin);
                [
                    self.activation(q, [1, kvh, group * n, hd]),
                    self.activation(k, [1, kvh, n, hd]),
                    self.activation(v, [1, kvh, n, hd]),
                ]
            }
            Rotary::Device(cos, sin) => {
                let (qd, kvd) = (heads * hd, kvh * hd);
                let qkv = self.linear(xn, &layer.wqkv);
                // Queries and keys are rotated together, as `heads + kv_heads` heads.
                let qk = qkv
                    .clone()
                    .slice([0..n, 0..qd + kvd])
                    .reshape([n, heads + kvh, hd]);
                let qk = Self::rope(qk, cos, sin);
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
        }
    }

    /// The attention output `[1, kv_heads, group·n, head_dim]` through the output projection.
    fn attention_out(&self, att: Tensor<B, 4>, layer: &Layer<B>, n: usize) -> Tensor<B, 2> {
        let c = &self.config;
        let (heads, hd) = (c.num_heads, c.head_dim);
        if let Some(w) = layer.wo.host_for(n) {
            let rows = host_ops::merge_heads(&host_values(att), n, heads, hd);
            return self.activation(w.matmul(&rows, n), [n, w.out_features()]);
        }
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
        if let (Some(gate_up), Some(down)) = (layer.w_gate_up.host_for(n), layer.w_down.host_for(n))
        {
            let h = host_ops::swiglu(&gate_up.matmul(&host_values(xn), n), n, inter);
            return self.activation(down.matmul(&h, n), [n, down.out_features()]);
        }
        let gu = self.linear(xn, &layer.w_gate_up);
        let gate = gu.clone().slice([0..n, 0..inter]);
        let up = gu.slice([0..n, inter..2 * inter]);
        self.linear(silu(gate) * up, &layer.w_down)
    }

    /// A host buffer as an activation tensor.
    fn activation<const D: usize>(&self, v: Vec<f32>, shape: [usize; D]) -> Tensor<B, D> {
        Tensor::from_data(
            TensorData::new(v, shape),
            (&self.device, self.compute_dtype),
        )
    }

    fn validate(&self, input: &Input<'_>, cache: &KvCache<B>) -> Result<()> {
        let n = input.tokens.len();
        if n == 0 {
            return Err(ModelError::InvalidInput(
                "forward called with no tokens".into(),
            ));
        }
        if input.positions.len() != n {
            return Err(ModelError::InvalidInput(format!(
                "{} positions for {n} tokens",
                input.positions.len()
            )));
        }
        if cache.len() + n > cache.capacity() {
            return Err(ModelError::InvalidInput(format!(
                "context full: {} cached + {n} new tokens exceed the cache capacity of {}; \
                 use a shorter prompt or fewer new tokens",
                cache.len(),
                cache.capacity()
            )));
        }
        if let Some(&p) = input.positions.iter().find(|&&p| p >= self.max_positions) {
            return Err(ModelError::InvalidInput(format!(
                "position {p} is beyond the model's context of {} tokens",
                self.max_positions
            )));
        }
        if let Some(&t) = input
            .tokens
            .iter()
            .find(|&&t| t as usize >= self.config.vocab_size)
        {
            return Err(ModelError::InvalidInput(format!(
                "token id {t} is outside the vocabulary of {}",
                self.config.vocab_size
            )));
        }
        if let Some(m) = input.mask {
            if m.rows() != n || m.cols() != cache.len() + n {
                return Err(ModelError::InvalidInput(format!(
                    "mask is {}×{}, expected {n}×{}",
                    m.rows(),
                    m.cols(),
                    cache.len() + n
                )));
            }
        }
        Ok(())
    }

    fn ids(&self, v: impl Iterator<Item = i64>) -> Tensor<B, 1, Int> {
        let v: Vec<i64> = v.collect();
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [n]), &self.device)
    }
}

impl<B: Backend> CausalLm<B> for Llama<B> {
    fn config(&self) -> &LlamaConfig {
        &self.config
    }

    fn device(&self) -> &B::Device {
        &self.device
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self, capacity: usize) -> KvCache<B> {
        KvCache::new(
            &self.config,
            capacity.min(self.max_positions),
            &self.device,
            self.compute_dtype,
        )
    }

    fn embed(&self, tokens: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let e = self.embed.clone().select(0, tokens);
        if self.dtype == self.compute_dtype {
            e
        } else {
            e.cast(self.compute_dtype)
        }
    }

    fn lm_head(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        self.linear(features, &self.lm_head)
    }

    fn lm_head_weight(&self) -> Tensor<B, 2> {
        let w = self.lm_head.weight();
        if self.dtype == self.compute_dtype {
            w
        } else {
            w.cast(self.compute_dtype)
        }
    }

    fn forward(&self, input: &Input<'_>, cache: &mut KvCache<B>) -> Result<LmOutput<B>> {
        self.validate(input, cache)?;
        let n = input.tokens.len();
        // A long causal block (a prompt) runs in blocks the host kernel serves, when there is
        // one: on flex about twice as fast as one backend pass over 1,024 tokens
        // (docs/benchmarks.md, `prefill_latency`).
        let block = match (input.mask, self.host_matmul()) {
            (None, true) => *HOST_ROWS.end(),
            _ => n,
        };
        let mut parts = Vec::with_capacity(n.div_ceil(block));
        for s in (0..n).step_by(block) {
            let e = (s + block).min(n);
            let part = Input {
                tokens: &input.tokens[s..e],
                positions: input.positions[s..e].to_vec(),
                mask: input.mask,
                logits: input.logits,
            };
            parts.push(self.layers_forward(&part, cache));
        }
        let features = if parts.len() == 1 {
            parts.remove(0)
        } else {
            Tensor::cat(parts, 0)
        };
        let logits = match input.logits {
            Logits::All => self.lm_head(features.clone()),
            Logits::Last => {
                let h = self.config.hidden_size;
                self.lm_head(features.clone().slice([n - 1..n, 0..h]))
            }
        };
        Ok(LmOutput { logits, features })
    }
}

impl<B: Backend> Llama<B> {
    /// The decoder layers over one block of new tokens (validated): appends their keys and
    /// values to the cache and returns their final-norm features `[n, hidden]`.
    fn layers_forward(&self, input: &Input<'_>, cache: &mut KvCache<B>) -> Tensor<B, 2> {
        let c = &self.config;
        let n = input.tokens.len();
        let (heads, kvh, hd) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = c.group_size();
        let cached = cache.len();

        let mut x = self.embed(self.ids(input.tokens.iter().map(|&t| t as i64)));
        // Blocks the host kernel serves run their layers' other steps on the host too.
        let host = self
            .layers
            .first()
            .is_some_and(|l| l.wqkv.host_for(n).is_some());
        let rotary = if host {
            let (cos, sin) =
                host_ops::rotary_tables(&self.inv_freq, input.positions.iter().copied());
            Rotary::Host(cos, sin)
        } else {
            let pos = self.ids(input.positions.iter().map(|&p| p as i64));
            let table = |t: &Tensor<B, 2>, pos| {
                t.clone()
                    .select(0, pos)
                    .reshape([n, 1, hd])
                    .repeat_dim(1, heads + kvh)
            };
            Rotary::Device(
                table(&self.rope_cos, pos.clone()),
                table(&self.rope_sin, pos),
            )
        };
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
            let (k_all, v_all) = cache.append(l, k, v);
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
        self.rms_norm(x, &self.final_norm)
    }
}
