//! Model configuration: the hyper-parameters of a Llama-family model.
//!
//! Read from a Hugging Face `config.json` ([`LlamaConfig::from_hf_json`]) or from GGUF metadata
//! ([`LlamaConfig::from_gguf`]), and written back as `config.json` by `s4c convert`.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// Llama 3 style rotary frequency scaling (`rope_scaling.rope_type = "llama3"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Llama3RopeScaling {
    /// Overall scale factor.
    pub factor: f64,
    /// Wavelengths longer than `original_max_position_embeddings / low_freq_factor` are scaled fully.
    pub low_freq_factor: f64,
    /// Wavelengths shorter than `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f64,
    /// Context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

impl Llama3RopeScaling {
    /// What a rotary frequency `freq` (radians per position) is divided by: 1 for short
    /// wavelengths, `factor` for long ones, a smooth blend between.
    pub fn divisor(&self, freq: f64) -> f64 {
        let old = self.original_max_position_embeddings as f64;
        let wavelen = 2.0 * std::f64::consts::PI / freq;
        if wavelen < old / self.high_freq_factor {
            1.0
        } else if wavelen > old / self.low_freq_factor {
            self.factor
        } else {
            let smooth = (old / wavelen - self.low_freq_factor)
                / (self.high_freq_factor - self.low_freq_factor);
            1.0 / ((1.0 - smooth) / self.factor + smooth)
        }
    }

    /// The Llama 3.x scaling whose divisors are `factors` (one per rotary frequency of
    /// `rope_theta` and `head_dim`), as llama.cpp stores it in GGUF files (`rope_freqs.weight`):
    /// `None` when every factor is 1, an error when they are not Llama 3.x's.
    fn from_factors(
        factors: &[f32],
        rope_theta: f64,
        head_dim: usize,
    ) -> std::result::Result<Option<Self>, String> {
        if factors.len() != head_dim / 2 {
            return Err(format!(
                "rope_freqs.weight has {} factors, expected head_dim / 2 = {}",
                factors.len(),
                head_dim / 2
            ));
        }
        if factors.iter().all(|&f| f == 1.0) {
            return Ok(None);
        }
        let scaling = Llama3RopeScaling {
            factor: factors.iter().fold(1f32, |a, &b| a.max(b)) as f64,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let matches = factors.iter().enumerate().all(|(i, &f)| {
            let freq = 1.0 / rope_theta.powf(2.0 * i as f64 / head_dim as f64);
            (scaling.divisor(freq) - f as f64).abs() <= 1e-5 * scaling.factor
        });
        if matches {
            Ok(Some(scaling))
        } else {
            Err(
                "rope_freqs.weight holds rotary factors other than Llama 3.x scaling \
                 (factor, low_freq_factor 1, high_freq_factor 4, 8192 positions); \
                 use the model's Hugging Face folder instead"
                    .into(),
            )
        }
    }
}

/// Hyper-parameters of a Llama-family decoder (Llama 1/2/3, Vicuna, SmolLM2, TinyLlama).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_layers: usize,
    /// Number of query heads.
    pub num_heads: usize,
    /// Number of key/value heads (grouped-query attention when smaller than `num_heads`).
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// Rotary base frequency.
    pub rope_theta: f64,
    /// Optional Llama 3 rotary scaling.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Longest context the model supports.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token id, if any.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids.
    pub eos_token_ids: Vec<u32>,
}

/// The context s4c supports for a model of context `context` whose attention may be limited
/// to a sliding window (Mistral): within the window, attending over everything is the same
/// computation, so the usable context is cut to the window (longer prompts are refused with the
/// context-length error) instead of answering differently from the model past it.
fn within_window(context: usize, window: Option<u64>) -> usize {
    match window {
        Some(w) if w > 0 && (w as usize) < context => w as usize,
        _ => context,
    }
}

fn invalid(source_name: &str, reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        source_name: source_name.to_string(),
        reason: reason.into(),
    }
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json` (as text).
    pub fn from_hf_json(text: &str, source_name: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| invalid(source_name, format!("not valid JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(source_name, "expected a JSON object"))?;
        if let Some(mt) = obj.get("model_type").and_then(Value::as_str) {
            if !matches!(mt, "llama" | "mistral") {
                return Err(invalid(
                    source_name,
                    format!("model_type {mt:?} is not a Llama-family model; s4c runs Llama, Vicuna, SmolLM2 and TinyLlama"),
                ));
            }
        }
        let req = |k: &str| -> Result<usize> {
            obj.get(k)
                .and_then(Value::as_u64)
                .map(|x| x as usize)
                .ok_or_else(|| invalid(source_name, format!("missing or non-integer field {k:?}")))
        };
        let hidden_size = req("hidden_size")?;
        let num_heads = req("num_attention_heads")?;
        let num_kv_heads = obj
            .get("num_key_value_heads")
            .and_then(Value::as_u64)
            .map(|x| x as usize)
            .unwrap_or(num_heads);
        let head_dim = match obj.get("head_dim").and_then(Value::as_u64) {
            Some(h) => h as usize,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let rope_scaling = match obj.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let ty = rs
                    .get("rope_type")
                    .or_else(|| rs.get("type"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if ty != "llama3" {
                    return Err(invalid(
                        source_name,
                        format!("rope_scaling type {ty:?} is not supported (only \"llama3\")"),
                    ));
                }
                let f = |k: &str| {
                    rs.get(k)
                        .and_then(Value::as_f64)
                        .ok_or_else(|| invalid(source_name, format!("rope_scaling.{k} missing")))
                };
                Some(Llama3RopeScaling {
                    factor: f("factor")?,
                    low_freq_factor: f("low_freq_factor")?,
                    high_freq_factor: f("high_freq_factor")?,
                    original_max_position_embeddings: f("original_max_position_embeddings")?
                        as usize,
                })
            }
        };
        let eos_token_ids = match obj.get("eos_token_id") {
            Some(Value::Number(n)) => n.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_u64)
                .map(|x| x as u32)
                .collect(),
            _ => vec![],
        };
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: req("intermediate_size")?,
            num_layers: req("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size: req("vocab_size")?,
            rms_norm_eps: obj
                .get("rms_norm_eps")
                .and_then(Value::as_f64)
                .unwrap_or(1e-6),
            rope_theta: obj
                .get("rope_theta")
                .and_then(Value::as_f64)
                .unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: within_window(
                obj.get("max_position_embeddings")
                    .and_then(Value::as_u64)
                    .unwrap_or(2048) as usize,
                obj.get("sliding_window").and_then(Value::as_u64),
            ),
            tie_word_embeddings: obj
                .get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            bos_token_id: obj
                .get("bos_token_id")
                .and_then(Value::as_u64)
                .map(|x| x as u32),
            eos_token_ids,
        };
        cfg.validate(source_name)?;
        Ok(cfg)
    }

    /// Reads the configuration from GGUF metadata (`llama.*` keys).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let name = gguf.path().display().to_string();
        let arch = gguf.meta_str("general.architecture").unwrap_or("llama");
        if arch != "llama" {
            return Err(invalid(
                &name,
                format!("GGUF architecture {arch:?} is not supported (only \"llama\")"),
            ));
        }
        let u = |k: &str| -> Result<usize> {
            gguf.meta_u64(&format!("llama.{k}"))
                .map(|x| x as usize)
                .ok_or_else(|| invalid(&name, format!("missing metadata llama.{k}")))
        };
        let hidden_size = u("embedding_length")?;
        let num_heads = u("attention.head_count")?;
        let num_kv_heads = u("attention.head_count_kv").unwrap_or(num_heads);
        let head_dim = match gguf.meta_u64("llama.rope.dimension_count") {
            Some(d) => d as usize,
            None if num_heads > 0 => hidden_size / num_heads,
            None => 0,
        };
        let vocab_size = match gguf.meta_u64("llama.vocab_size") {
            Some(v) => v as usize,
            None => gguf.meta_array_len("tokenizer.ggml.tokens").unwrap_or(0),
        };
        let rope_scaling = match gguf.meta_str("llama.rope.scaling.type") {
            Some("llama3") => Some(Llama3RopeScaling {
                factor: gguf.meta_f64("llama.rope.scaling.factor").unwrap_or(8.0),
                low_freq_factor: gguf
                    .meta_f64("llama.rope.scaling.low_freq_factor")
                    .unwrap_or(1.0),
                high_freq_factor: gguf
                    .meta_f64("llama.rope.scaling.high_freq_factor")
                    .unwrap_or(4.0),
                original_max_position_embeddings: gguf
                    .meta_u64("llama.rope.scaling.original_context_length")
                    .unwrap_or(8192) as usize,
            }),
            _ if gguf.has_tensor("rope_freqs.weight") => {
                let factors = gguf.tensor("rope_freqs.weight")?;
                Llama3RopeScaling::from_factors(
                    &factors.data,
                    gguf.meta_f64("llama.rope.freq_base").unwrap_or(10_000.0),
                    head_dim,
                )
                .map_err(|reason| invalid(&name, reason))?
            }
            _ => None,
        };
        let cfg = LlamaConfig {
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_layers: u("block_count")?,
            num_heads,
            num_kv_heads,
            head_dim,
            vocab_size,
            rms_norm_eps: gguf
                .meta_f64("llama.attention.layer_norm_rms_epsilon")
                .unwrap_or(1e-5),
            rope_theta: gguf.meta_f64("llama.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: within_window(
                u("context_length").unwrap_or(2048),
                gguf.meta_u64("llama.attention.sliding_window"),
            ),
            tie_word_embeddings: !gguf.has_tensor("output.weight"),
            bos_token_id: gguf
                .meta_u64("tokenizer.ggml.bos_token_id")
                .map(|x| x as u32),
            eos_token_ids: gguf
                .meta_u64("tokenizer.ggml.eos_token_id")
                .map(|x| vec![x as u32])
                .unwrap_or_default(),
        };
        cfg.validate(&name)?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self, source_name: &str) -> Result<()> {
        let checks: [(bool, &str); 8] = [
            (self.hidden_size > 0, "hidden_size must be positive"),
            (self.num_layers > 0, "num_hidden_layers must be positive"),
            (self.num_heads > 0, "num_attention_heads must be positive"),
            (
                self.num_kv_heads > 0,
                "num_key_value_heads must be positive",
            ),
            (
                self.num_heads.is_multiple_of(self.num_kv_heads.max(1)),
                "num_attention_heads must be a multiple of num_key_value_heads",
            ),
            (
                self.head_dim > 0 && self.head_dim.is_multiple_of(2),
                "head_dim must be positive and even",
            ),
            (self.vocab_size > 0, "vocab_size must be positive"),
            (
                self.intermediate_size > 0,
                "intermediate_size must be positive",
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(invalid(source_name, msg));
            }
        }
        Ok(())
    }

    /// Number of query heads that share one key/value head.
    pub fn group_size(&self) -> usize {
        self.num_heads / self.num_kv_heads
    }

    /// Total number of parameters (embedding and LM head counted once when tied).
    pub fn parameter_count(&self) -> usize {
        let h = self.hidden_size;
        let q = self.num_heads * self.head_dim;
        let kv = self.num_kv_heads * self.head_dim;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size + 2 * h;
        let emb = self.vocab_size * h;
        let head = if self.tie_word_embeddings { 0 } else { emb };
        emb + head + self.num_layers * layer + h
    }

    /// The configuration as a Hugging Face `config.json` value.
    pub fn to_hf_json(&self) -> Value {
        let mut v = json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = json!(b);
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [one] => v["eos_token_id"] = json!(one),
            many => v["eos_token_id"] = json!(many),
        }
        if let Some(rs) = &self.rope_scaling {
            v["rope_scaling"] = json!({
                "rope_type": "llama3",
                "factor": rs.factor,
                "low_freq_factor": rs.low_freq_factor,
                "high_freq_factor": rs.high_freq_factor,
                "original_max_position_embeddings": rs.original_max_position_embeddings,
            });
        }
        v
    }

    /// Widths of the residual stream, the query projection, each of the key and value
    /// projections, and the MLP: `(hidden, heads · head_dim, kv_heads · head_dim, intermediate)`.
    pub fn widths(&self) -> (usize, usize, usize, usize) {
        (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
    }

    /// A tiny random-model configuration for tests and examples.
    pub fn tiny(vocab_size: usize) -> Self {
        LlamaConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 4,
            num_kv_heads: 2,
            head_dim: 8,
            vocab_size,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: None,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_freq_factors_are_recognised_as_llama3_scaling_or_refused() {
        // Llama 3.1 8B: head_dim 128, theta 500000, factor 8.
        let want = Llama3RopeScaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let factors: Vec<f32> = (0..64)
            .map(|i| want.divisor(1.0 / 500_000f64.powf(2.0 * i as f64 / 128.0)) as f32)
            .collect();
        assert!(factors.contains(&1.0) && factors.contains(&8.0));
        assert!(
            factors.iter().any(|&f| f > 1.0 && f < 8.0),
            "the blend is exercised"
        );
        let got = Llama3RopeScaling::from_factors(&factors, 500_000.0, 128).unwrap();
        assert_eq!(got, Some(want));
        assert_eq!(
            Llama3RopeScaling::from_factors(&[1.0; 64], 500_000.0, 128),
            Ok(None)
        );
        assert!(Llama3RopeScaling::from_factors(&factors[..32], 500_000.0, 128).is_err());
        let mut other = factors.clone();
        other[40] *= 1.5;
        assert!(Llama3RopeScaling::from_factors(&other, 500_000.0, 128).is_err());
    }

    #[test]
    fn a_sliding_window_bounds_the_context() {
        let text = |window: &str| {
            format!(
                r#"{{"hidden_size":64,"intermediate_size":128,"num_hidden_layers":1,
                "num_attention_heads":4,"num_key_value_heads":1,"vocab_size":32,
                "max_position_embeddings":32768,"sliding_window":{window}}}"#
            )
        };
        let ctx = |w: &str| {
            LlamaConfig::from_hf_json(&text(w), "config.json")
                .unwrap()
                .max_position_embeddings
        };
        assert_eq!(ctx("4096"), 4096);
        assert_eq!(ctx("null"), 32768);
        assert_eq!(ctx("65536"), 32768);
    }

    #[test]
    fn reads_smollm2_style_config() {
        let text = r#"{"model_type":"llama","hidden_size":576,"intermediate_size":1536,
            "num_hidden_layers":30,"num_attention_heads":9,"num_key_value_heads":3,
            "vocab_size":49152,"rms_norm_eps":1e-5,"rope_theta":100000.0,
            "max_position_embeddings":8192,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":2}"#;
        let c = LlamaConfig::from_hf_json(text, "test").unwrap();
        assert_eq!(c.head_dim, 64);
        assert_eq!(c.group_size(), 3);
        assert_eq!(c.eos_token_ids, vec![2]);
        // SmolLM2-135M has 134,515,008 parameters.
        assert_eq!(c.parameter_count(), 134_515_008);
        let back = LlamaConfig::from_hf_json(&c.to_hf_json().to_string(), "rt").unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn reads_llama3_rope_scaling_and_eos_list() {
        let text = r#"{"model_type":"llama","hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":10,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,
            "high_freq_factor":4.0,"original_max_position_embeddings":8192},"eos_token_id":[3,4]}"#;
        let c = LlamaConfig::from_hf_json(text, "test").unwrap();
        assert_eq!(c.rope_scaling.unwrap().factor, 8.0);
        assert_eq!(c.eos_token_ids, vec![3, 4]);
    }

    #[test]
    fn malformed_configs_are_typed_errors() {
        for bad in [
            "{not json",
            "[]",
            r#"{"hidden_size":64}"#,
            r#"{"model_type":"gpt2","hidden_size":64}"#,
            r#"{"hidden_size":64,"intermediate_size":1,"num_hidden_layers":1,"num_attention_heads":3,"num_key_value_heads":2,"vocab_size":4}"#,
        ] {
            let err = LlamaConfig::from_hf_json(bad, "cfg").unwrap_err();
            assert!(
                matches!(err, ModelError::InvalidConfig { .. }),
                "{bad}: {err}"
            );
        }
    }
}
