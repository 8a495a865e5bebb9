//! The drafter's hyper-parameters and the fingerprint of the target it was trained for.

use serde::{Deserialize, Serialize};

/// Which coherence components the drafter uses (the ablation switches).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Coherence {
    /// Medusa-style: every head reads only the feature; the heads are independent guesses.
    Independent,
    /// Adds syntactic coherence: head `k` reads head `k−1`'s state and the embedding of the
    /// token chosen at depth `k−1` (the root token for head 1), so each branch is a sequence.
    Tokens,
    /// Adds semantic coherence: the initial state also attends over the last `window` features.
    Full,
}

impl Coherence {
    /// Whether heads are chained and conditioned on their parent's token.
    pub fn chains_tokens(self) -> bool {
        !matches!(self, Coherence::Independent)
    }

    /// Whether the initial state attends over the feature window.
    pub fn uses_window(self) -> bool {
        matches!(self, Coherence::Full)
    }

    /// All three, weakest first (the ablation order).
    pub const ALL: [Coherence; 3] = [Coherence::Independent, Coherence::Tokens, Coherence::Full];
}

impl std::str::FromStr for Coherence {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "independent" => Ok(Coherence::Independent),
            "tokens" => Ok(Coherence::Tokens),
            "full" => Ok(Coherence::Full),
            _ => Err(format!(
                "unknown coherence `{s}`; use independent, tokens or full"
            )),
        }
    }
}

impl std::fmt::Display for Coherence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Coherence::Independent => "independent",
            Coherence::Tokens => "tokens",
            Coherence::Full => "full",
        })
    }
}

/// What identifies the target model heads were trained for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Architecture name (`llama`).
    pub architecture: String,
    /// Hidden size.
    pub hidden_size: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// A few LM-head values at fixed positions (`probe_positions`); compared with a tolerance
    /// so the same model loaded as f32, f16 or from a converted folder still matches.
    pub lm_head_probe: Vec<f32>,
}

impl Fingerprint {
    /// Why `other` (the model being used) is not this fingerprint's model, if it is not.
    pub fn mismatch(&self, other: &Fingerprint) -> Option<String> {
        if self.architecture != other.architecture {
            return Some(format!(
                "architecture {} vs {}",
                self.architecture, other.architecture
            ));
        }
        for (what, a, b) in [
            ("hidden size", self.hidden_size, other.hidden_size),
            ("vocabulary size", self.vocab_size, other.vocab_size),
            ("layers", self.num_layers, other.num_layers),
        ] {
            if a != b {
                return Some(format!("{what} {a} vs {b}"));
            }
        }
        let close = self.lm_head_probe.len() == other.lm_head_probe.len()
            && self
                .lm_head_probe
                .iter()
                .zip(&other.lm_head_probe)
                .all(|(a, b)| (a - b).abs() <= 1e-2 * (1.0 + a.abs()));
        (!close).then(|| "LM head weights differ".to_string())
    }
}

/// Positions `(row, col)` of the LM head sampled by the fingerprint.
pub fn probe_positions(vocab: usize, hidden: usize) -> Vec<(usize, usize)> {
    (0..32usize)
        .map(|i| {
            let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            ((h as usize) % vocab, ((h >> 32) as usize) % hidden)
        })
        .collect()
}

/// The longest suffix [`DrafterConfig::copy`] may match.
pub const MAX_COPY: usize = 8;

fn one() -> usize {
    1
}

/// The drafter's hyper-parameters, stored as JSON next to the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrafterConfig {
    /// Number of heads = maximum draft depth.
    pub heads: usize,
    /// Feature width (the target's hidden size).
    pub hidden: usize,
    /// Inner width of each head's block.
    pub inner: usize,
    /// Residual MLP layers per head (the first reads the parent's token too); 1 in heads made
    /// before the option existed.
    #[serde(default = "one")]
    pub layers: usize,
    /// Number of past target features the initial state attends over.
    pub window: usize,
    /// Width of the window attention's queries and keys.
    pub attn_dim: usize,
    /// Which coherence components are on.
    pub coherence: Coherence,
    /// Context copy: each head adds a bonus, read from its state, to the token that followed the
    /// most recent earlier occurrence of its branch's last `copy` tokens (or fewer) in the text
    /// ([`crate::copy_candidate`]); 0 = off (heads made before the option existed, and
    /// [`DrafterConfig::new`]; `s4c train-heads` uses 8).
    #[serde(default)]
    pub copy: usize,
    /// Number of draft-vocabulary tokens (the first `draft_vocab` of the frequency ranking);
    /// equal to the target's vocabulary when the full LM head is used.
    pub draft_vocab: usize,
    /// The target these heads belong to.
    pub target: Fingerprint,
    /// Held-out acceptance rates per (depth, rank), measured after training: what cost-aware
    /// tree sizing reads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<s4c_tree::AcceptanceStats>,
}

impl DrafterConfig {
    /// A configuration for a target of `hidden` width and `vocab` tokens, with the defaults:
    /// 4 heads, inner width = hidden, window 8, full coherence, full vocabulary.
    pub fn new(target: Fingerprint) -> Self {
        DrafterConfig {
            heads: 4,
            hidden: target.hidden_size,
            inner: target.hidden_size,
            layers: 1,
            window: 8,
            attn_dim: 64,
            coherence: Coherence::Full,
            copy: 0,
            draft_vocab: target.vocab_size,
            target,
            acceptance: None,
        }
    }

    /// Checks the sizes.
    pub fn validate(&self) -> Result<(), String> {
        if self.heads == 0 || self.inner == 0 || self.layers == 0 || self.attn_dim == 0 {
            return Err("heads, inner, layers and attn_dim must be at least 1".into());
        }
        if self.copy > MAX_COPY {
            return Err(format!(
                "copy {} is longer than the {MAX_COPY} tokens a match is compared over",
                self.copy
            ));
        }
        if self.hidden != self.target.hidden_size {
            return Err(format!(
                "hidden {} differs from the target's {}",
                self.hidden, self.target.hidden_size
            ));
        }
        if self.draft_vocab == 0 || self.draft_vocab > self.target.vocab_size {
            return Err(format!(
                "draft vocabulary {} must be in 1..={}",
                self.draft_vocab, self.target.vocab_size
            ));
        }
        Ok(())
    }
}
