//! Tiny random models for tests and examples (no download needed).

use std::collections::BTreeMap;
use std::sync::Arc;

use burn::tensor::{backend::Backend, DType};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::gguf::GgmlType;
use crate::host::HostTensor;
use crate::llama::Llama;
use crate::loader::{build_model, EngineKind, LoadOptions};
use crate::quant::{QMatrix, WeightBytes};
use crate::weights::WeightSource;

/// Weights held in memory, by Hugging Face name.
#[derive(Debug, Clone, Default)]
pub struct MemoryWeights(pub BTreeMap<String, HostTensor>);

impl WeightSource for MemoryWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.0
            .get(name)
            .cloned()
            .ok_or_else(|| ModelError::MissingTensor(name.into()))
    }
    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
}

/// A small deterministic generator (SplitMix64), so tests need no RNG crate.
#[derive(Debug, Clone)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `[-1, 1)`.
    pub fn symmetric(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random weights for `config` (scaled like a trained model's, so activations stay sane).
pub fn random_weights(config: &LlamaConfig, seed: u64) -> MemoryWeights {
    let c = config;
    let mut rng = SplitMix(seed);
    let mut m = BTreeMap::new();
    let mut mat = |rows: usize, cols: usize, scale: f32| {
        let data = (0..rows * cols).map(|_| rng.symmetric() * scale).collect();
        HostTensor::new(vec![rows, cols], data)
    };
    let (h, q, kv, i) = c.widths();
    let s = |fan_in: usize| 1.7 / (fan_in as f32).sqrt();
    m.insert(
        "model.embed_tokens.weight".into(),
        mat(c.vocab_size, h, 1.0),
    );
    if !c.tie_word_embeddings {
        m.insert("lm_head.weight".into(), mat(c.vocab_size, h, s(h)));
    }
    for l in 0..c.num_layers {
        let p = format!("model.layers.{l}");
        m.insert(format!("{p}.self_attn.q_proj.weight"), mat(q, h, s(h)));
        m.insert(format!("{p}.self_attn.k_proj.weight"), mat(kv, h, s(h)));
        m.insert(format!("{p}.self_attn.v_proj.weight"), mat(kv, h, s(h)));
        m.insert(format!("{p}.self_attn.o_proj.weight"), mat(h, q, s(q)));
        m.insert(format!("{p}.mlp.gate_proj.weight"), mat(i, h, s(h)));
        m.insert(format!("{p}.mlp.up_proj.weight"), mat(i, h, s(h)));
        m.insert(format!("{p}.mlp.down_proj.weight"), mat(h, i, s(i)));
        let ones = |n: usize, rng: &mut SplitMix| {
            HostTensor::new(
                vec![n],
                (0..n).map(|_| 1.0 + 0.1 * rng.symmetric()).collect(),
            )
        };
        let mut r2 = SplitMix(seed ^ l as u64);
        m.insert(format!("{p}.input_layernorm.weight"), ones(h, &mut r2));
        m.insert(
            format!("{p}.post_attention_layernorm.weight"),
            ones(h, &mut r2),
        );
    }
    m.insert(
        "model.norm.weight".into(),
        HostTensor::new(vec![h], vec![1.0; h]),
    );
    MemoryWeights(m)
}

/// A random `[rows, cols]` weight matrix of type `ty`: for block types random quantized values
/// (every bit pattern occurs) with scales of a trained model's size, for dense types uniform
/// values in `[-0.1, 0.1)`.
pub fn random_matrix(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Result<QMatrix> {
    let mut rng = SplitMix(seed);
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.symmetric() * 0.1).collect();
        return QMatrix::from_f32(rows, cols, &v, ty);
    }
    let (per, bytes) = ty
        .block()
        .ok_or_else(|| ModelError::UnsupportedTensorType {
            tensor: "random matrix".into(),
            dtype: ty.name(),
            supported: crate::quant::KERNEL_TYPES,
        })?;
    let f16_bytes = |x: f32| half::f16::from_f32(x).to_le_bytes();
    let mut out = Vec::with_capacity(rows * cols / per * bytes);
    for _ in 0..rows * cols / per {
        let mut b: Vec<u8> = (0..bytes).map(|_| rng.next_u64() as u8).collect();
        let mut scale = || f16_bytes(rng.symmetric().abs() * 0.01 + 1e-4);
        // Where each type keeps its f16 scales (and minimums).
        let (d, m): (usize, Option<usize>) = match ty {
            GgmlType::Q4_0 | GgmlType::Q8_0 => (0, None),
            GgmlType::Q4_1 | GgmlType::Q4K => (0, Some(2)),
            _ => (208, None),
        };
        b[d..d + 2].copy_from_slice(&scale());
        if let Some(m) = m {
            b[m..m + 2].copy_from_slice(&scale());
        }
        out.extend(b);
    }
    QMatrix::new(ty, rows, cols, WeightBytes::Owned(Arc::new(out)))
}

/// `f32` weights, the engine `B` runs by default ([`EngineKind::Auto`]), two threads.
fn f32_options(engine: EngineKind) -> LoadOptions {
    LoadOptions {
        engine,
        dtype: Some(DType::F32),
        threads: 2,
        ..LoadOptions::default()
    }
}

/// Weights whose matrices are random block-quantized ones of one type (seeded by name), for the
/// CPU engine ([`WeightSource::matrix`]); vectors (norms) come from the inner source.
pub struct QuantizedWeights {
    /// Norms and shapes.
    pub inner: MemoryWeights,
    /// The matrices' storage type.
    pub ty: GgmlType,
}

impl WeightSource for QuantizedWeights {
    fn tensor(&self, name: &str) -> Result<HostTensor> {
        self.inner.tensor(name)
    }
    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
    fn matrix(&self, name: &str) -> Result<QMatrix> {
        let t = self.inner.tensor(name)?;
        let seed = name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        random_matrix(self.ty, t.shape[0], t.shape[1], seed)
    }
}

/// A tiny random model on the CPU engine whose weight matrices are random blocks of type `ty`.
pub fn tiny_quantized_model<B: Backend>(
    vocab_size: usize,
    seed: u64,
    ty: GgmlType,
    device: &B::Device,
) -> Result<Llama<B>> {
    let config = LlamaConfig::tiny(vocab_size);
    let w = QuantizedWeights {
        inner: random_weights(&config, seed),
        ty,
    };
    let options = LoadOptions {
        engine: EngineKind::Cpu,
        threads: 2,
        ..LoadOptions::default()
    };
    build_model(&config, &w, device, &options)
}

/// A tiny random Llama (see [`LlamaConfig::tiny`]) in `f32`, on `B`'s default engine.
pub fn tiny_model<B: Backend>(vocab_size: usize, seed: u64, device: &B::Device) -> Llama<B> {
    tiny_model_on(vocab_size, seed, device, EngineKind::Auto)
}

/// [`tiny_model`] on a given engine.
pub fn tiny_model_on<B: Backend>(
    vocab_size: usize,
    seed: u64,
    device: &B::Device,
    engine: EngineKind,
) -> Llama<B> {
    let config = LlamaConfig::tiny(vocab_size);
    let w = random_weights(&config, seed);
    build_model(&config, &w, device, &f32_options(engine))
        .expect("random weights match their own config")
}

/// [`tiny_model`]'s weights loaded with `options`.
pub fn tiny_model_with<B: Backend>(
    vocab_size: usize,
    seed: u64,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<Llama<B>> {
    let config = LlamaConfig::tiny(vocab_size);
    build_model(&config, &random_weights(&config, seed), device, options)
}

/// A tiny model whose greedy next token is always `token + 1` (mod the vocabulary): its layers
/// add nothing (zero output projections) and its untied LM head maps each token's embedding to
/// the next id. Speculative-decoding tests use it with a drafter that knows the rule, so long
/// branches are accepted.
pub fn counting_model<B: Backend>(vocab_size: usize, seed: u64, device: &B::Device) -> Llama<B> {
    let mut config = LlamaConfig::tiny(vocab_size);
    config.tie_word_embeddings = false;
    let mut w = random_weights(&config, seed);
    let h = config.hidden_size;
    let embed = w.0["model.embed_tokens.weight"].clone();
    let mut head = vec![0.0f32; vocab_size * h];
    for t in 0..vocab_size {
        let next = (t + 1) % vocab_size;
        head[next * h..(next + 1) * h].copy_from_slice(&embed.data[t * h..(t + 1) * h]);
    }
    w.0.insert(
        "lm_head.weight".into(),
        HostTensor::new(vec![vocab_size, h], head),
    );
    for (name, t) in w.0.iter_mut() {
        if name.ends_with("o_proj.weight") || name.ends_with("down_proj.weight") {
            t.data.iter_mut().for_each(|x| *x = 0.0);
        }
    }
    build_model(&config, &w, device, &f32_options(EngineKind::Auto))
        .expect("counting weights match their own config")
}
