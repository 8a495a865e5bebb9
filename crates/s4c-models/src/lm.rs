//! The backend-generic interface every target model implements.

use burn::tensor::{backend::Backend, Int, Tensor};

use crate::cache::KvCache;
use crate::error::Result;
use crate::mask::AttentionMask;
use crate::quant::QMatrix;

/// Which rows of logits a forward pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// One row per new token (verification).
    All,
    /// Only the last new token's row (prefill, plain decoding).
    Last,
}

/// The new tokens of one forward pass.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    /// Token ids.
    pub tokens: &'a [u32],
    /// Rotary position of each token.
    pub positions: Vec<usize>,
    /// Visibility over `[cached ‖ new]`; `None` is causal.
    pub mask: Option<&'a AttentionMask>,
    /// Which logits rows to compute.
    pub logits: Logits,
}

impl<'a> Input<'a> {
    /// A causal block of tokens at positions `start..start + n`.
    pub fn causal(tokens: &'a [u32], start: usize, logits: Logits) -> Self {
        Input {
            tokens,
            positions: (start..start + tokens.len()).collect(),
            mask: None,
            logits,
        }
    }

    /// A verification tree: explicit positions (prefix length + depth) and a tree mask.
    pub fn tree(tokens: &'a [u32], positions: Vec<usize>, mask: &'a AttentionMask) -> Self {
        Input {
            tokens,
            positions,
            mask: Some(mask),
            logits: Logits::All,
        }
    }
}

/// The outputs of a forward pass.
#[derive(Debug, Clone)]
pub struct LmOutput<B: Backend> {
    /// `[rows, vocab]` logits (rows per [`Logits`]).
    pub logits: Tensor<B, 2>,
    /// `[n, hidden]` final-norm hidden states of every new token: the drafter's features.
    pub features: Tensor<B, 2>,
}

/// The sizes every causal language model has, whatever its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDims {
    /// Tokens in the vocabulary (rows of the LM head).
    pub vocab_size: usize,
    /// Width of the features (final-norm hidden states).
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Whether the input embedding is the LM head's matrix (tied weights).
    pub tied_embeddings: bool,
}

/// A causal language model that can verify token trees.
pub trait CausalLm<B: Backend> {
    /// Its vocabulary, feature width and depth.
    fn dims(&self) -> ModelDims;
    /// The device its weights live on.
    fn device(&self) -> &B::Device;
    /// The largest position + 1 this instance supports (the most tokens a cache can hold).
    fn max_positions(&self) -> usize;
    /// A fresh KV cache for up to `capacity` tokens (at most [`CausalLm::max_positions`]).
    fn new_cache(&self, capacity: usize) -> KvCache<B>;
    /// Token embeddings, `[n, hidden]`.
    fn embed(&self, tokens: Tensor<B, 1, Int>) -> Tensor<B, 2>;
    /// LM head: features `[n, hidden]` → logits `[n, vocab]`.
    fn lm_head(&self, features: Tensor<B, 2>) -> Tensor<B, 2>;
    /// The LM head's weights `[vocab, hidden]` in the compute type (drafters share them).
    fn lm_head_weight(&self) -> Tensor<B, 2>;
    /// The LM head's weights `[vocab, hidden]` in their storage type on the host, where the
    /// model keeps them there (the CPU engine): drafters then read its rows as they need them
    /// instead of holding an `f32` copy. `None` by default.
    fn lm_head_matrix(&self) -> Option<&QMatrix> {
        None
    }
    /// Runs the new tokens against the cache, appends their keys and values, and returns their
    /// logits and features. No host synchronisation happens inside.
    fn forward(&self, input: &Input<'_>, cache: &mut KvCache<B>) -> Result<LmOutput<B>>;
    /// Several sequences' forwards, each with its own input and cache; the outputs in order.
    /// Models may run them as one pass (the CPU engine does, for causal blocks and trees alike:
    /// every weight is read once for all rows), but each output must be what
    /// [`CausalLm::forward`] gives.
    fn forward_batch(&self, items: &mut [SequenceInput<'_, B>]) -> Result<Vec<LmOutput<B>>> {
        items
            .iter_mut()
            .map(|s| self.forward(s.input, s.cache))
            .collect()
    }
}

/// One sequence of [`CausalLm::forward_batch`]: its new tokens and its cache.
pub struct SequenceInput<'a, B: Backend> {
    /// The new tokens.
    pub input: &'a Input<'a>,
    /// The sequence's cache.
    pub cache: &'a mut KvCache<B>,
}
