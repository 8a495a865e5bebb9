//! Tiny random models for tests and examples (no download needed).

use std::collections::BTreeMap;

use burn::tensor::{backend::Backend, DType};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::host::HostTensor;
use crate::llama::Llama;
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
    let (h, q, kv, i) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
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

/// A tiny random Llama (see [`LlamaConfig::tiny`]) in `f32`.
pub fn tiny_model<B: Backend>(vocab_size: usize, seed: u64, device: &B::Device) -> Llama<B> {
    let config = LlamaConfig::tiny(vocab_size);
    let w = random_weights(&config, seed);
    Llama::from_weights(
        &config,
        &w,
        device,
        DType::F32,
        config.max_position_embeddings,
    )
    .expect("random weights match their own config")
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
    Llama::from_weights(
        &config,
        &w,
        device,
        DType::F32,
        config.max_position_embeddings,
    )
    .expect("counting weights match their own config")
}
