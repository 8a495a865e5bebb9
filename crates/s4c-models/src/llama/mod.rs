//! [`Llama`]: a Llama-family causal language model on backend `B`, run by one of two engines —
//! s4c's CPU kernels with the weights in their file's storage type (for CPU backends), or Burn
//! tensor operations on the backend's device (for GPUs).

mod tensors;

use burn::tensor::{backend::Backend, DType, Int, Tensor, TensorData};

use crate::cache::KvCache;
use crate::config::LlamaConfig;
use crate::cpu::{CpuModel, WeightFormat};
use crate::error::{ModelError, Result};
use crate::lm::{CausalLm, Input, LmOutput, ModelDims, SequenceInput};
use crate::quant::{QMatrix, Threads};
use crate::weights::WeightSource;
use tensors::TensorLlama;

/// Inverse rotary frequencies, with Llama 3 scaling when configured.
pub fn inv_frequencies(config: &LlamaConfig) -> Vec<f64> {
    let d = config.head_dim;
    let base: Vec<f64> = (0..d / 2)
        .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / d as f64))
        .collect();
    match config.rope_scaling {
        Some(rs) => base.into_iter().map(|f| f / rs.divisor(f)).collect(),
        None => base,
    }
}

enum Engine<B: Backend> {
    Cpu(CpuModel),
    Tensors(TensorLlama<B>),
}

/// A Llama-family causal language model on backend `B`.
///
/// Built with [`Llama::cpu`] it runs on the host CPU with s4c's kernels and returns its outputs
/// as tensors of `B` (a CPU backend such as `Flex`); built with [`Llama::tensors`] it runs in
/// Burn tensor operations on `B`'s device. [`crate::load`] picks by backend.
pub struct Llama<B: Backend> {
    config: LlamaConfig,
    device: B::Device,
    max_positions: usize,
    engine: Engine<B>,
}

impl<B: Backend> Llama<B> {
    /// A model on the host CPU: weights in `format` (the file's own types, or a dense type),
    /// multiplied by the kernels of [`crate::quant`] on `threads`, its KV cache in `kv_dtype`
    /// (`f32` or `f16`; `None`: f16 beside block-quantized weights, f32 beside dense ones).
    /// Outputs are tensors on `device`. `max_positions` bounds the context.
    pub fn cpu(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        format: WeightFormat,
        threads: Threads,
        kv_dtype: Option<DType>,
        device: &B::Device,
        max_positions: usize,
    ) -> Result<Self> {
        Ok(Llama {
            config: config.clone(),
            device: device.clone(),
            max_positions: max_positions.max(1),
            engine: Engine::Cpu(CpuModel::new(config, weights, format, threads, kv_dtype)?),
        })
    }

    /// A model in Burn tensor operations on `device`: weight matrices stored in `dtype`,
    /// activations, the KV cache and outputs in `compute_dtype`; `shards > 1` splits every weight
    /// matrix into that many row blocks multiplied concurrently when decoding.
    pub fn tensors(
        config: &LlamaConfig,
        weights: &dyn WeightSource,
        device: &B::Device,
        dtype: DType,
        compute_dtype: DType,
        max_positions: usize,
        shards: usize,
    ) -> Result<Self> {
        let max_positions = max_positions.max(1);
        let t = TensorLlama::build(
            config,
            weights,
            device,
            dtype,
            compute_dtype,
            max_positions,
            shards,
        )?;
        Ok(Llama {
            config: config.clone(),
            device: device.clone(),
            max_positions,
            engine: Engine::Tensors(t),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Which engine runs the forward: `cpu` or `tensors`.
    pub fn engine(&self) -> &'static str {
        match self.engine {
            Engine::Cpu(_) => "cpu",
            Engine::Tensors(_) => "tensors",
        }
    }

    /// The storage types of the weight matrices (`["Q4_1", "Q8_0"]`, `["F32"]`, …).
    pub fn weight_types(&self) -> Vec<String> {
        match &self.engine {
            Engine::Cpu(m) => m.weight_types(),
            Engine::Tensors(t) => vec![format!("{:?}", t.dtype())],
        }
    }

    /// The type of activations, the KV cache, logits and features.
    pub fn compute_dtype(&self) -> DType {
        match &self.engine {
            Engine::Cpu(_) => DType::F32,
            Engine::Tensors(t) => t.compute_dtype(),
        }
    }

    /// The storage type of the KV cache (the tensor engine's is its compute dtype).
    pub fn kv_dtype(&self) -> DType {
        match &self.engine {
            Engine::Cpu(m) => m.kv_dtype(),
            Engine::Tensors(t) => t.compute_dtype(),
        }
    }

    /// The CPU engine's threads and instruction set (`None` for the tensor engine).
    pub fn threads(&self) -> Option<&Threads> {
        match &self.engine {
            Engine::Cpu(m) => Some(m.threads()),
            Engine::Tensors(_) => None,
        }
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

    /// Host values as a `[rows, cols]` tensor on the model's device.
    fn tensor(&self, v: Vec<f32>, rows: usize, cols: usize) -> Tensor<B, 2> {
        Tensor::from_data(TensorData::new(v, [rows, cols]), &self.device)
    }
}

/// A tensor's values on the host, as `f32`.
fn host_values<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<Vec<f32>> {
    x.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| ModelError::InvalidInput(format!("reading a tensor to the host: {e:?}")))
}

impl<B: Backend> CausalLm<B> for Llama<B> {
    fn dims(&self) -> ModelDims {
        ModelDims {
            vocab_size: self.config.vocab_size,
            hidden_size: self.config.hidden_size,
            num_layers: self.config.num_layers,
            tied_embeddings: self.config.tie_word_embeddings,
        }
    }

    fn device(&self) -> &B::Device {
        &self.device
    }

    fn max_positions(&self) -> usize {
        self.max_positions
    }

    fn new_cache(&self, capacity: usize) -> KvCache<B> {
        let capacity = capacity.min(self.max_positions);
        match &self.engine {
            Engine::Cpu(m) => KvCache::host(m.new_cache(capacity)),
            Engine::Tensors(t) => {
                KvCache::new(&self.config, capacity, &self.device, t.compute_dtype())
            }
        }
    }

    fn embed(&self, tokens: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        match &self.engine {
            Engine::Cpu(m) => {
                let ids: Vec<usize> = tokens
                    .into_data()
                    .convert::<i64>()
                    .to_vec::<i64>()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| t as usize)
                    .collect();
                let n = ids.len();
                // Ids outside the vocabulary embed as zeros rather than panicking.
                let h = self.config.hidden_size;
                let rows = m.embed(&ids).unwrap_or_else(|_| vec![0.0; n * h]);
                self.tensor(rows, n, h)
            }
            Engine::Tensors(t) => t.embed(tokens),
        }
    }

    fn lm_head(&self, features: Tensor<B, 2>) -> Tensor<B, 2> {
        match &self.engine {
            Engine::Cpu(m) => {
                let [n, h] = features.dims();
                let x = host_values(features).unwrap_or_else(|_| vec![0.0; n * h]);
                self.tensor(m.lm_head(&x, n), n, self.config.vocab_size)
            }
            Engine::Tensors(t) => t.lm_head(features),
        }
    }

    fn lm_head_matrix(&self) -> Option<&QMatrix> {
        match &self.engine {
            Engine::Cpu(m) => Some(m.lm_head_matrix()),
            Engine::Tensors(_) => None,
        }
    }

    fn lm_head_weight(&self) -> Tensor<B, 2> {
        match &self.engine {
            Engine::Cpu(m) => {
                let c = &self.config;
                self.tensor(m.lm_head_weight(), c.vocab_size, c.hidden_size)
            }
            Engine::Tensors(t) => t.lm_head_weight(),
        }
    }

    fn forward_batch(&self, items: &mut [SequenceInput<'_, B>]) -> Result<Vec<LmOutput<B>>> {
        let Engine::Cpu(m) = &self.engine else {
            return items
                .iter_mut()
                .map(|s| self.forward(s.input, s.cache))
                .collect();
        };
        if items.len() < 2 {
            return items
                .iter_mut()
                .map(|s| self.forward(s.input, s.cache))
                .collect();
        }
        for s in items.iter() {
            self.validate(s.input, s.cache)?;
        }
        let mut rows = vec![];
        for s in items.iter_mut() {
            let cached = s.cache.len();
            let kv = s.cache.host_mut().ok_or_else(|| {
                ModelError::InvalidInput(
                    "a device cache was given to a CPU model; use the model's own new_cache".into(),
                )
            })?;
            rows.push(crate::cpu::BatchRows {
                tokens: s.input.tokens,
                positions: &s.input.positions,
                mask: s.input.mask,
                all: s.input.logits == crate::lm::Logits::All,
                cache: kv,
                cached,
            });
        }
        let outs = m.forward_batch(&mut rows)?;
        drop(rows);
        let c = &self.config;
        items
            .iter_mut()
            .zip(outs)
            .map(|(s, out)| {
                s.cache.advance(s.input.tokens.len());
                Ok(LmOutput {
                    logits: self.tensor(out.logits, out.rows, c.vocab_size),
                    features: self.tensor(out.features, s.input.tokens.len(), c.hidden_size),
                })
            })
            .collect()
    }

    fn forward(&self, input: &Input<'_>, cache: &mut KvCache<B>) -> Result<LmOutput<B>> {
        self.validate(input, cache)?;
        match &self.engine {
            Engine::Cpu(m) => {
                let n = input.tokens.len();
                let cached = cache.len();
                let kv = cache.host_mut().ok_or_else(|| {
                    ModelError::InvalidInput(
                        "a device cache was given to a CPU model; use the model's own new_cache"
                            .into(),
                    )
                })?;
                let out = m.forward(
                    input.tokens,
                    &input.positions,
                    input.mask,
                    input.logits == crate::lm::Logits::All,
                    kv,
                    cached,
                )?;
                cache.advance(n);
                let c = &self.config;
                Ok(LmOutput {
                    logits: self.tensor(out.logits, out.rows, c.vocab_size),
                    features: self.tensor(out.features, n, c.hidden_size),
                })
            }
            Engine::Tensors(t) => {
                let (logits, features) = t.forward(input, cache)?;
                Ok(LmOutput { logits, features })
            }
        }
    }
}
