//! The trainable part of the drafter: the window attention of the initial state and one block
//! per head. The target's embedding and LM head are shared and frozen, so they are inputs here.

use burn::module::{Module, Param};
use burn::nn::loss::HuberLossConfig;
use burn::nn::{DropoutConfig, Linear};
use burn::tensor::{
    activation, backend::Backend, BasicOps, IndexingUpdateOp, Int, Tensor, TensorData,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::{Coherence, DrafterConfig};

/// One head: `s = s_{k-1} + W_out · silu(W_in · [s_{k-1} ; e])`, then `s = s + W'_out ·
/// silu(W'_in · s)` for each further residual layer in `more` (none by default).
#[derive(Module, Debug)]
pub struct Block<B: Backend> {
    /// `[2·hidden → inner]`
    pub inp: Linear<B>,
    /// `[inner → hidden]`, zero at initialisation (the block starts as the identity).
    pub out: Linear<B>,
    /// Further residual MLP layers on the state (`DrafterConfig::layers` − 1 of them).
    pub more: Vec<Residual<B>>,
    /// Context copy `[hidden → copy]`: the bonus of the copied token per matched suffix length,
    /// read from the block's output state; at initialisation the weights are zero and the bias
    /// is [`COPY_PRIOR`] × the length (`None`: no copy).
    pub copy: Option<Linear<B>>,
}

/// A residual MLP layer on the state: `s + W_out · silu(W_in · s)`.
#[derive(Module, Debug)]
pub struct Residual<B: Backend> {
    /// `[hidden → inner]`
    pub inp: Linear<B>,
    /// `[inner → hidden]`, zero at initialisation.
    pub out: Linear<B>,
}

impl<B: Backend> Block<B> {
    /// The block on `state` and the parent token's embedding `emb`; `dropout` > 0 zeroes that
    /// fraction of the inner activations while training (a no-op without autodiff).
    fn forward(&self, state: Tensor<B, 2>, emb: Tensor<B, 2>, dropout: f64) -> Tensor<B, 2> {
        let drop = |x: Tensor<B, 2>| {
            if dropout > 0.0 {
                DropoutConfig::new(dropout).init().forward(x)
            } else {
                x
            }
        };
        let x = Tensor::cat(vec![state.clone(), emb], 1);
        let mut s = state
            + self
                .out
                .forward(drop(activation::silu(self.inp.forward(x))));
        for r in &self.more {
            s = s.clone() + r.out.forward(drop(activation::silu(r.inp.forward(s))));
        }
        s
    }
}

/// The drafter's parameters.
#[derive(Module, Debug)]
pub struct Heads<B: Backend> {
    /// Window-attention query projection `[hidden → attn_dim]`.
    pub ctx_q: Linear<B>,
    /// Window-attention key projection `[hidden → attn_dim]`.
    pub ctx_k: Linear<B>,
    /// Mixes the attended context into the state `[hidden → hidden]`, zero at initialisation.
    pub ctx_out: Linear<B>,
    /// One block per head.
    pub blocks: Vec<Block<B>>,
}

impl<B: Backend> Heads<B> {
    /// Fresh parameters from `seed` (host-side RNG: the same seed gives the same heads on every
    /// backend, whatever else runs): uniform ±1/√fan_in inputs, zero output layers, so every
    /// block starts as the identity.
    pub fn init(config: &DrafterConfig, device: &B::Device, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let (h, i, a) = (config.hidden, config.inner, config.attn_dim);
        let mut linear = |d_in: usize, d_out: usize, bias: bool, zero: bool| {
            let bound = 1.0 / (d_in as f32).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| {
                        if zero {
                            0.0
                        } else {
                            rng.random_range(-bound..bound)
                        }
                    })
                    .collect()
            };
            let w = Tensor::<B, 2>::from_data(
                TensorData::new(draw(d_in * d_out), [d_in, d_out]),
                device,
            );
            let b = bias.then(|| {
                Param::from_tensor(Tensor::<B, 1>::from_data(
                    TensorData::new(draw(d_out), [d_out]),
                    device,
                ))
            });
            Linear {
                weight: Param::from_tensor(w),
                bias: b,
            }
        };
        let ctx_q = linear(h, a, false, false);
        let ctx_k = linear(h, a, false, false);
        let ctx_out = linear(h, h, true, true);
        let blocks = (0..config.heads)
            .map(|_| Block {
                inp: linear(2 * h, i, true, false),
                out: linear(i, h, true, true),
                more: (1..config.layers)
                    .map(|_| Residual {
                        inp: linear(h, i, true, false),
                        out: linear(i, h, true, true),
                    })
                    .collect(),
                copy: (config.copy > 0).then(|| copy_layer(h, config.copy, device)),
            })
            .collect();
        Heads {
            ctx_q,
            ctx_k,
            ctx_out,
            blocks,
        }
    }

    /// Initial states `[n, hidden]` of `features` `[n, hidden]`, each attending over its
    /// `window` `[n, W, hidden]` of preceding features where `valid` `[n, W]` is 1 (0 = padding).
    /// Without semantic coherence (or with `W = 0`) the state is the feature itself.
    pub fn initial(
        &self,
        coherence: Coherence,
        features: Tensor<B, 2>,
        window: Tensor<B, 3>,
        valid: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        let [n, w, h] = window.dims();
        if !coherence.uses_window() || w == 0 {
            return features;
        }
        let a = self.ctx_q.weight.dims()[1];
        let q = self.ctx_q.forward(features.clone()).reshape([n, 1, a]);
        let k = self.ctx_k.forward(window.clone());
        let scores = q.matmul(k.swap_dims(1, 2)) / (a as f64).sqrt();
        // Padding gets −1e4 (a softmax weight of ~0; rows with no valid entry attend to zeros).
        let scores = scores + (valid.reshape([n, 1, w]) - 1.0) * 1e4;
        let weights = activation::softmax(scores, 2);
        let context = weights.matmul(window).reshape([n, h]);
        features + self.ctx_out.forward(context)
    }

    /// Head `k`'s (0-based) state from its parent state and the embedding of the parent node's
    /// token. Independent heads read the initial state and no token: pass them here as they are
    /// (the caller supplies the initial state and zeros).
    pub fn step(&self, k: usize, parent: Tensor<B, 2>, emb: Tensor<B, 2>) -> Tensor<B, 2> {
        self.blocks[k].forward(parent, emb, 0.0)
    }

    /// Head `k`'s copy bonuses `[n, copy]` (one per matched suffix length) of its `states`, if
    /// it copies ([`crate::copy_candidate`]).
    pub fn copy_bonus(&self, k: usize, states: Tensor<B, 2>) -> Option<Tensor<B, 2>> {
        self.blocks[k].copy.as_ref().map(|l| l.forward(states))
    }

    /// Adds fresh copy layers of `copy` lengths to heads that have none (fine-tuning heads made
    /// without context copy).
    pub fn with_copy(mut self, copy: usize, device: &B::Device) -> Self {
        for b in self.blocks.iter_mut().filter(|b| b.copy.is_none()) {
            let hidden = b.out.weight.dims()[1];
            b.copy = (copy > 0).then(|| copy_layer(hidden, copy, device));
        }
        self
    }

    /// Number of heads.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether there are no heads.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }
}

/// The initial copy bonus per token of matched suffix: a match of `m` tokens starts at
/// `COPY_PRIOR · m`. On held-out answers these fixed bonuses (matches of up to 8 tokens) lift
/// head-1 top-1 from 0.50 to 0.73, and training the copy layers did not beat them
/// (docs/training.md, "What happens" and "Ablations").
pub const COPY_PRIOR: f32 = 2.0;

/// A fresh copy layer `[hidden → copy]`: zero weights, bias [`COPY_PRIOR`] × length.
fn copy_layer<B: Backend>(hidden: usize, copy: usize, device: &B::Device) -> Linear<B> {
    let bias: Vec<f32> = (1..=copy).map(|m| COPY_PRIOR * m as f32).collect();
    Linear {
        weight: Param::from_tensor(Tensor::zeros([hidden, copy], device)),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [copy]),
            device,
        ))),
    }
}

/// One training batch, built on the host by training (`crate::train`).
#[derive(Debug, Clone)]
pub struct Batch<B: Backend> {
    /// `[n, hidden]` features of the last accepted token.
    pub features: Tensor<B, 2>,
    /// `[n, W, hidden]` preceding features (zero-padded).
    pub window: Tensor<B, 3>,
    /// `[n, W]` 1 where `window` is real.
    pub valid: Tensor<B, 2>,
    /// `[n, K, hidden]` embeddings of the tokens heads condition on (head `k` reads token
    /// `t + k + 1`; head 1 reads the root = the target's next token).
    pub cond: Tensor<B, 3>,
    /// `[n, K, T]` draft-vocabulary indices of the target's top-`T` next tokens at offset `k`.
    pub target_idx: Tensor<B, 3, Int>,
    /// `[n, K, T]` their probabilities (0 where the head has no label or the token is outside
    /// the draft vocabulary).
    pub target_w: Tensor<B, 3>,
    /// `[n, K, hidden]` the target's feature at head `k`'s offset (`t + k + 1`: the feature whose
    /// next-token distribution head `k` learns), zero where the head has no label.
    pub target_features: Tensor<B, 3>,
    /// `[n, K]` 1 where head `k` has a label, else 0.
    pub labelled: Tensor<B, 2>,
    /// `[n, K, 1]` draft-vocabulary column of head `k`'s copy candidate (0 without one).
    pub copy_column: Tensor<B, 3, Int>,
    /// `[n, K, copy]` one-hot of the candidate's matched suffix length (zeros without one).
    pub copy_matched: Tensor<B, 3>,
    /// `[n, K, hidden]` the LM head's row of a candidate outside the draft vocabulary (zeros
    /// otherwise; `[n, K, 0]` without context copy): its logit, in a column after the draft
    /// vocabulary.
    pub copy_rows: Tensor<B, 3>,
    /// `[n, K, 1]` 0 where that column holds a candidate, −1e4 where it is empty.
    pub copy_offset: Tensor<B, 3>,
    /// `[K]` how many rows have a label per head.
    pub rows_per_head: Vec<usize>,
}

/// Draft states of every head for a batch: `K` tensors `[n, hidden]`. `dropout` is the
/// fraction of the blocks' inner activations zeroed while training (0 = none; it only acts on
/// an autodiff backend).
pub fn batch_states<B: Backend>(
    heads: &Heads<B>,
    coherence: Coherence,
    batch: &Batch<B>,
    dropout: f64,
) -> Vec<Tensor<B, 2>> {
    let k = batch.cond.dims()[1];
    let s0 = heads.initial(
        coherence,
        batch.features.clone(),
        batch.window.clone(),
        batch.valid.clone(),
    );
    let mut state = s0.clone();
    (0..k.min(heads.len()))
        .map(|j| {
            let block = &heads.blocks[j];
            state = if coherence.chains_tokens() {
                block.forward(state.clone(), head_rows(&batch.cond, j), dropout)
            } else {
                block.forward(s0.clone(), s0.zeros_like(), dropout)
            };
            state.clone()
        })
        .collect()
}

/// Draft logits of every head for a batch: `K` tensors `[n, draft_vocab]` (one more column with
/// context copy: a candidate outside the draft vocabulary). `lm_head` is the frozen
/// `[draft_vocab, hidden]` LM head.
pub fn batch_logits<B: Backend>(
    heads: &Heads<B>,
    coherence: Coherence,
    lm_head: &Tensor<B, 2>,
    batch: &Batch<B>,
) -> Vec<Tensor<B, 2>> {
    let head_t = lm_head.clone().transpose();
    batch_states(heads, coherence, batch, 0.0)
        .into_iter()
        .enumerate()
        .map(|(j, s)| head_logits(heads, j, s, &head_t, batch))
        .collect()
}

/// Head `j`'s logits of its `state` for a batch: `[n, draft_vocab]`, and with context copy
/// `[n, draft_vocab + 1]` — the last column scores a candidate outside the draft vocabulary —
/// with the copy bonus added.
fn head_logits<B: Backend>(
    heads: &Heads<B>,
    j: usize,
    state: Tensor<B, 2>,
    head_t: &Tensor<B, 2>,
    batch: &Batch<B>,
) -> Tensor<B, 2> {
    let logits = state.clone().matmul(head_t.clone());
    match heads.copy_bonus(j, state.clone()) {
        Some(bonus) => {
            let outside = (state * head_rows(&batch.copy_rows, j)).sum_dim(1)
                + head_rows(&batch.copy_offset, j);
            add_copy_bonus(
                Tensor::cat(vec![logits, outside], 1),
                bonus,
                head_rows(&batch.copy_matched, j),
                head_rows(&batch.copy_column, j),
            )
        }
        None => logits,
    }
}

/// `logits` `[n, V]` with each row's copy bonus added at its candidate's `column` `[n, 1]`: the
/// entry of `bonus` `[n, copy]` that the one-hot `matched` `[n, copy]` picks (a row of zeros —
/// no candidate — adds nothing).
pub fn add_copy_bonus<B: Backend>(
    logits: Tensor<B, 2>,
    bonus: Tensor<B, 2>,
    matched: Tensor<B, 2>,
    column: Tensor<B, 2, Int>,
) -> Tensor<B, 2> {
    let picked = (bonus * matched).sum_dim(1);
    logits.scatter(1, column, picked, IndexingUpdateOp::Add)
}

/// How the training loss is formed: its terms' weights and the dropout applied on the way.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossWeights {
    /// Head `k`'s terms are weighted by `decay^k`.
    pub decay: f32,
    /// Weight of the feature regression (smooth L1 between a head's state and the target's
    /// feature at its offset, averaged over the hidden dimensions) next to the cross-entropy
    /// (weight 1); 0 leaves it out.
    pub feature: f32,
    /// Fraction of the blocks' inner activations zeroed while training (0 = no dropout).
    pub dropout: f64,
}

/// The training loss: per head, cross-entropy to the target's top-`T` distribution at its
/// offset plus `weights.feature` × the smooth-L1 distance of its state to the target's feature
/// there (EAGLE's feature regression), weighted by `weights.decay^k`; also returns each head's
/// loss value tensor.
pub fn batch_loss<B: Backend>(
    heads: &Heads<B>,
    coherence: Coherence,
    lm_head: &Tensor<B, 2>,
    batch: &Batch<B>,
    weights: LossWeights,
) -> (Tensor<B, 1>, Vec<Tensor<B, 1>>) {
    let [n, k, _] = batch.target_idx.dims();
    let head_t = lm_head.clone().transpose();
    let states = batch_states(heads, coherence, batch, weights.dropout);
    let mut per_head = Vec::with_capacity(k);
    let mut total: Option<Tensor<B, 1>> = None;
    for (j, state) in states.into_iter().enumerate() {
        let logq = activation::log_softmax(head_logits(heads, j, state.clone(), &head_t, batch), 1);
        let (idx, w) = (
            head_rows(&batch.target_idx, j),
            head_rows(&batch.target_w, j),
        );
        let rows = batch.rows_per_head[j].max(1) as f64;
        let mut loss = (logq.gather(1, idx) * w).sum().neg() / rows;
        if weights.feature > 0.0 {
            let target = head_rows(&batch.target_features, j);
            let mask = batch
                .labelled
                .clone()
                .slice([0..n, j..j + 1])
                .reshape([n, 1]);
            // Smooth L1 is Huber's loss with δ = 1.
            let per_row = HuberLossConfig::new(1.0)
                .init()
                .forward_no_reduction(state, target)
                .mean_dim(1);
            loss = loss + (per_row * mask).sum() * (weights.feature as f64 / rows);
        }
        let weighted = loss.clone() * (weights.decay.powi(j as i32) as f64);
        total = Some(match total {
            None => weighted,
            Some(s) => s + weighted,
        });
        per_head.push(loss);
    }
    let total = total.unwrap_or_else(|| Tensor::zeros([1], &batch.features.device()));
    (total, per_head)
}

/// Head `j`'s rows `[n, d]` of a per-head batch tensor `[n, K, d]`.
fn head_rows<B: Backend, K: BasicOps<B>>(x: &Tensor<B, 3, K>, j: usize) -> Tensor<B, 2, K> {
    let [n, _, d] = x.dims();
    x.clone().slice([0..n, j..j + 1, 0..d]).reshape([n, d])
}

/// Token id → draft-vocabulary index (−1 outside it).
pub fn draft_index(vocab: &[u32], vocab_size: usize) -> Vec<i32> {
    let mut m = vec![-1i32; vocab_size];
    for (i, &t) in vocab.iter().enumerate() {
        m[t as usize] = i as i32;
    }
    m
}

/// The target's tensors the heads read, frozen.
#[derive(Debug, Clone)]
pub struct Frozen<B: Backend> {
    /// The input embedding `[vocab, hidden]`.
    pub embed: Tensor<B, 2>,
    /// The LM head's rows of the draft vocabulary `[draft_vocab, hidden]`.
    pub head: Tensor<B, 2>,
    /// The whole LM head `[vocab, hidden]`: context copy scores candidates outside the draft
    /// vocabulary with it.
    pub full_head: Tensor<B, 2>,
}
