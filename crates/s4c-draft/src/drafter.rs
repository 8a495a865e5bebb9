//! Drafting: the [`Drafter`] trait, the S4C [`MultiHeadDrafter`], and [`Drafting`], the
//! candidate provider that grows one verification tree from one initial state.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use burn::tensor::{backend::Backend, Int, Tensor, TensorData};
use s4c_models::gguf::GgmlType;
use s4c_models::quant::{Linear, QMatrix, Threads};
use s4c_models::CausalLm;
use s4c_tree::{Candidate, CandidateProvider, TokenTree, TreeError, ROOT};

use crate::config::{probe_positions, Coherence, DrafterConfig, Fingerprint};
use crate::copy::{copy_candidate, push_copy_inputs, CopyCandidate};
use crate::data::{to_host, top_k_softmax};
use crate::error::{DraftError, Result};
use crate::heads::Heads;
use crate::host::HostBlocks;

/// Proposes draft tokens from the target's features.
///
/// Drafting a tree is two stages: [`Drafter::initial_states`] turns target features (with the
/// window of features before each) into draft states — batched over every node of a
/// verification pass, so whichever node is accepted its state is ready (feature reuse) — then
/// [`Drafter::expand`] runs head `depth` on a batch of nodes.
pub trait Drafter<B: Backend> {
    /// The deepest depth it drafts (its number of heads).
    fn max_depth(&self) -> usize;
    /// How many preceding features the first stage reads.
    fn window(&self) -> usize;
    /// Whether a node's state comes from its parent's (syntactic coherence); when not, every
    /// head reads the initial state (independent, Medusa-style heads).
    fn chains(&self) -> bool {
        true
    }
    /// Initial states `[n, hidden]` of `features` `[n, hidden]`, each with its `window`
    /// `[n, W, hidden]` of preceding features, `valid` `[n, W]` (1 = real, 0 = padding).
    fn initial_states(
        &self,
        features: Tensor<B, 2>,
        window: Tensor<B, 3>,
        valid: Tensor<B, 2>,
    ) -> Tensor<B, 2>;
    /// The longest suffix its context copy matches ([`crate::copy_candidate`]); 0 (the
    /// default): it does not copy, and [`Drafter::expand`] gets no candidates.
    fn copy(&self) -> usize {
        0
    }
    /// Head `depth` (0-based) on nodes whose parents' states are `parents` `[m, hidden]` and
    /// whose tokens are `tokens`: their states and each one's `k` best children, best first.
    /// `copies` holds each node's copy candidate when [`Drafter::copy`] > 0 (empty otherwise:
    /// no candidates).
    fn expand(
        &self,
        depth: usize,
        parents: Tensor<B, 2>,
        tokens: &[u32],
        copies: &[Option<CopyCandidate>],
        k: usize,
    ) -> Result<(Tensor<B, 2>, Vec<Vec<Candidate>>)>;
}

/// A drafter without heads: it drafts nothing. With context lookup
/// ([`s4c_tree::ContextLookup`]) the engine still speeds up a model no heads were trained for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoDrafter;

impl<B: Backend> Drafter<B> for NoDrafter {
    fn max_depth(&self) -> usize {
        0
    }
    fn window(&self) -> usize {
        0
    }
    fn initial_states(
        &self,
        features: Tensor<B, 2>,
        _window: Tensor<B, 3>,
        _valid: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        features
    }
    fn expand(
        &self,
        _depth: usize,
        parents: Tensor<B, 2>,
        tokens: &[u32],
        _copies: &[Option<CopyCandidate>],
        _k: usize,
    ) -> Result<(Tensor<B, 2>, Vec<Vec<Candidate>>)> {
        Ok((parents, vec![Vec::new(); tokens.len()]))
    }
}

/// A drafter if there is one, else [`NoDrafter`]: lets a caller hold "heads, if any were found".
impl<B: Backend, D: Drafter<B>> Drafter<B> for Option<D> {
    fn max_depth(&self) -> usize {
        self.as_ref().map_or(0, D::max_depth)
    }
    fn window(&self) -> usize {
        self.as_ref().map_or(0, D::window)
    }
    fn chains(&self) -> bool {
        self.as_ref().is_none_or(D::chains)
    }
    fn copy(&self) -> usize {
        self.as_ref().map_or(0, D::copy)
    }
    fn initial_states(
        &self,
        features: Tensor<B, 2>,
        window: Tensor<B, 3>,
        valid: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        match self {
            Some(d) => d.initial_states(features, window, valid),
            None => Drafter::<B>::initial_states(&NoDrafter, features, window, valid),
        }
    }
    fn expand(
        &self,
        depth: usize,
        parents: Tensor<B, 2>,
        tokens: &[u32],
        copies: &[Option<CopyCandidate>],
        k: usize,
    ) -> Result<(Tensor<B, 2>, Vec<Vec<Candidate>>)> {
        match self {
            Some(d) => d.expand(depth, parents, tokens, copies, k),
            None => Drafter::<B>::expand(&NoDrafter, depth, parents, tokens, copies, k),
        }
    }
}

/// The S4C drafter: [`Heads`] plus the target's frozen embedding and LM head.
pub struct MultiHeadDrafter<B: Backend> {
    config: DrafterConfig,
    heads: Heads<B>,
    /// `[vocab, hidden]` the target's input embedding.
    embed: TargetRows<B>,
    /// The target's LM head restricted to the draft vocabulary (and, on the host, the heads'
    /// blocks beside it).
    head: DraftHead<B>,
    device: B::Device,
    /// Draft-vocabulary index → token id.
    vocab: Vec<u32>,
    /// Token id → draft-vocabulary index (−1: outside it).
    index: Vec<i32>,
    /// `[vocab, hidden]` the target's whole LM head (context copy scores candidates outside the
    /// draft vocabulary with it).
    full_head: TargetRows<B>,
}

/// Where a drafting level runs.
enum DraftHead<B: Backend> {
    /// On the backend: the LM head `[hidden, draft_vocab]` here, the blocks in [`Heads`],
    /// multiplied by Burn.
    Tensor(Tensor<B, 2>),
    /// On the host: the LM head `[draft_vocab, hidden]` and copies of the heads' blocks,
    /// multiplied by s4c's CPU kernels on the blocks' threads (see
    /// [`MultiHeadDrafter::with_host_head`]).
    Host(Linear, HostBlocks),
}

impl<B: Backend> MultiHeadDrafter<B> {
    /// A drafter from trained (or fresh) `heads` for `target`; `vocab` lists the draft
    /// vocabulary's token ids (all ids, in order, for the full vocabulary).
    pub fn new<M: CausalLm<B>>(
        config: DrafterConfig,
        heads: Heads<B>,
        vocab: Vec<u32>,
        target: &M,
    ) -> Result<Self> {
        config.validate().map_err(DraftError::InvalidOption)?;
        let v = target.dims().vocab_size;
        if vocab.len() != config.draft_vocab || vocab.iter().any(|&t| t as usize >= v) {
            return Err(DraftError::InvalidOption(format!(
                "draft vocabulary must list {} ids below {v}",
                config.draft_vocab
            )));
        }
        if heads.len() != config.heads {
            return Err(DraftError::InvalidOption(format!(
                "{} head blocks for a config of {}",
                heads.len(),
                config.heads
            )));
        }
        let device = target.device().clone();
        let tied = target.dims().tied_embeddings;
        let (embed, full_head, head) = match target.lm_head_matrix() {
            // The head stays in the target's memory, in its storage type: rows are read from it
            // as drafting needs them, and only the draft vocabulary's rows become a tensor.
            Some(m) => {
                let host = TargetRows::Host(m.clone());
                let head = host.select(&vocab, &device)?;
                let embed = if tied {
                    host.clone()
                } else {
                    TargetRows::Tensor(target.embed(Tensor::arange(0..v as i64, &device)))
                };
                (embed, host, head)
            }
            None => {
                let head = target.lm_head_weight();
                // Tied embeddings are the LM head's rows: one copy serves both.
                let embed = if tied {
                    head.clone()
                } else {
                    target.embed(Tensor::arange(0..v as i64, &device))
                };
                let full = head.clone();
                let whole = vocab.iter().enumerate().all(|(i, &t)| i == t as usize);
                let head = if vocab.len() == v && whole {
                    head
                } else {
                    head.select(0, ids_tensor::<B>(&vocab, &device))
                };
                (TargetRows::Tensor(embed), TargetRows::Tensor(full), head)
            }
        };
        Ok(MultiHeadDrafter {
            index: crate::heads::draft_index(&vocab, v),
            config,
            heads,
            embed,
            head: DraftHead::Tensor(head.transpose()),
            device,
            vocab,
            full_head,
        })
    }

    /// The same drafter with host copies of its LM head and of its heads' blocks, multiplied by
    /// s4c's CPU kernels ([`s4c_models::quant`]) on `threads`: for a target on the CPU engine,
    /// where the backend multiplies a drafting level's few rows on one thread. The blocks'
    /// matrices are stored as Q8_0 (a quarter of the bytes; module `host`); the logits are read
    /// on the host anyway, so nothing else moves.
    ///
    /// `target_head` is the target's whole LM head `[vocab, hidden]` in its storage type
    /// (`Llama::lm_head_matrix`): the draft vocabulary's rows are taken from it as they are (a
    /// Q8_0 head stays Q8_0: a quarter of the bytes per drafting level). Without it the copy is
    /// `f32`.
    pub fn with_host_head(
        mut self,
        threads: Threads,
        target_head: Option<&QMatrix>,
    ) -> Result<Self> {
        let head = self.head();
        let [dv, hidden] = head.dims();
        let invalid = |e: s4c_models::ModelError| DraftError::InvalidOption(e.to_string());
        let m = match target_head {
            Some(t) => {
                if t.cols() != hidden || t.rows() != self.full_head.rows() {
                    return Err(DraftError::InvalidOption(format!(
                        "the target's LM head is {}×{}, the drafter's {}×{hidden}",
                        t.rows(),
                        t.cols(),
                        self.full_head.rows()
                    )));
                }
                let rows: Vec<usize> = self.vocab.iter().map(|&t| t as usize).collect();
                t.select_rows(&rows).map_err(invalid)?
            }
            None => {
                QMatrix::from_f32(dv, hidden, &to_host(head)?, GgmlType::F32).map_err(invalid)?
            }
        };
        // The host copy replaces the backend's f32 one (19 MB for 8,192 rows of 576).
        let blocks = HostBlocks::new(&self.heads, threads)?;
        self.head = DraftHead::Host(Linear::new(vec![m]).map_err(invalid)?, blocks);
        Ok(self)
    }

    /// Whether the LM head is multiplied on the host ([`MultiHeadDrafter::with_host_head`]).
    pub fn host_head(&self) -> bool {
        matches!(self.head, DraftHead::Host(..))
    }

    /// Random heads (the blocks' output layers are made non-zero), for tests: losslessness
    /// must not depend on good heads.
    pub fn random<M: CausalLm<B>>(config: DrafterConfig, target: &M, seed: u64) -> Result<Self> {
        let device = target.device().clone();
        let mut heads = Heads::<B>::init(&config, &device, seed);
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        let mut noise = |w: Tensor<B, 2>| {
            let dims = w.dims();
            let v: Vec<f32> = (0..dims[0] * dims[1])
                .map(|_| rng.random_range(-0.1f32..0.1))
                .collect();
            burn::module::Param::from_tensor(Tensor::from_data(TensorData::new(v, dims), &device))
        };
        heads.ctx_out.weight = noise(heads.ctx_out.weight.val());
        for b in heads.blocks.iter_mut() {
            b.out.weight = noise(b.out.weight.val());
            if let Some(c) = b.copy.as_mut() {
                c.weight = noise(c.weight.val());
            }
            for r in b.more.iter_mut() {
                r.out.weight = noise(r.out.weight.val());
            }
        }
        let vocab = (0..config.draft_vocab as u32).collect();
        Self::new(config, heads, vocab, target)
    }

    /// The same drafter with held-out acceptance statistics recorded in its config.
    pub fn with_acceptance(mut self, stats: s4c_tree::AcceptanceStats) -> Self {
        self.config.acceptance = Some(stats);
        self
    }

    /// The configuration.
    pub fn config(&self) -> &DrafterConfig {
        &self.config
    }

    /// The trainable parameters.
    pub fn heads(&self) -> &Heads<B> {
        &self.heads
    }

    /// The frozen LM head restricted to the draft vocabulary, `[draft_vocab, hidden]` (widened
    /// to `f32` from the host copy when drafting reads that).
    pub fn head(&self) -> Tensor<B, 2> {
        match &self.head {
            DraftHead::Tensor(t) => t.clone().transpose(),
            DraftHead::Host(linear, _) => {
                let rows: Vec<f32> = linear
                    .parts()
                    .iter()
                    .flat_map(QMatrix::dequantize)
                    .collect();
                let shape = [linear.out_features(), linear.in_features()];
                Tensor::from_data(TensorData::new(rows, shape), &self.device)
            }
        }
    }

    /// The draft vocabulary (index → token id).
    pub fn vocab(&self) -> &[u32] {
        &self.vocab
    }

    /// The target's tensors the heads read (training and evaluation build batches from them).
    pub fn frozen(&self) -> Result<crate::heads::Frozen<B>> {
        let device = self.device.clone();
        Ok(crate::heads::Frozen {
            embed: self.embed.to_tensor(&device)?,
            head: self.head(),
            full_head: self.full_head.to_tensor(&device)?,
        })
    }

    /// Host logits `host` `[m, draft_vocab]` of `states` with the copy bonus `bonus` `[m, copy]`
    /// of each row's candidate in `copies` added, widened by one column that scores a candidate
    /// outside the draft vocabulary (its LM-head row · state; −1e4 where there is none) — what
    /// training's `add_copy_bonus` computes. Returns the scores, their width and each row's
    /// outside candidate.
    #[allow(clippy::type_complexity)]
    fn with_copy(
        &self,
        states: &Tensor<B, 2>,
        host: Vec<f32>,
        bonus: Vec<f32>,
        copies: &[Option<CopyCandidate>],
    ) -> Result<(Vec<f32>, usize, Vec<Option<u32>>)> {
        let (dv, c) = (self.vocab.len(), self.config.copy);
        let m = host.len() / dv;
        let width = dv + 1;
        // Each row's logit column and one-hot matched length, as training's batches hold them.
        let (mut columns, mut matched) = (Vec::with_capacity(m), Vec::with_capacity(m * c));
        let outside: Vec<Option<u32>> = (0..m)
            .map(|i| {
                let cand = copies.get(i).copied().flatten();
                push_copy_inputs(cand, &self.index, dv, c, &mut columns, &mut matched)
            })
            .collect();
        let rows: Vec<usize> = (0..m).filter(|&i| outside[i].is_some()).collect();
        let outside_logits = if rows.is_empty() {
            Vec::new()
        } else {
            let device = states.device();
            let toks: Vec<u32> = rows.iter().filter_map(|&i| outside[i]).collect();
            let row_ids: Vec<u32> = rows.iter().map(|&i| i as u32).collect();
            let w = self.full_head.select(&toks, &device)?;
            let s = states.clone().select(0, ids_tensor::<B>(&row_ids, &device));
            to_host((s * w).sum_dim(1))?
        };
        let mut scores = vec![-1e4f32; m * width];
        for i in 0..m {
            scores[i * width..i * width + dv].copy_from_slice(&host[i * dv..(i + 1) * dv]);
        }
        for (&i, &x) in rows.iter().zip(&outside_logits) {
            scores[i * width + dv] = x;
        }
        for (i, &col) in columns.iter().enumerate() {
            // The bonus the one-hot picks (nothing without a candidate), as `add_copy_bonus`.
            let picked: f32 = (0..c).map(|j| bonus[i * c + j] * matched[i * c + j]).sum();
            scores[i * width + col as usize] += picked;
        }
        Ok((scores, width, outside))
    }
}

/// Rows `[vocab, hidden]` of the target (its LM head or embedding): a backend tensor, or the
/// target's own matrix on the host in its storage type, read row by row (no copy).
#[derive(Debug, Clone)]
enum TargetRows<B: Backend> {
    Tensor(Tensor<B, 2>),
    Host(QMatrix),
}

impl<B: Backend> TargetRows<B> {
    /// Rows.
    fn rows(&self) -> usize {
        match self {
            TargetRows::Tensor(t) => t.dims()[0],
            TargetRows::Host(m) => m.rows(),
        }
    }

    /// Rows `ids` as an `f32` tensor `[ids.len(), hidden]` on `device`.
    fn select(&self, ids: &[u32], device: &B::Device) -> Result<Tensor<B, 2>> {
        match self {
            TargetRows::Tensor(t) => Ok(t.clone().select(0, ids_tensor::<B>(ids, device))),
            TargetRows::Host(m) => Ok(Tensor::from_data(
                TensorData::new(self.host_rows(ids)?, [ids.len(), m.cols()]),
                device,
            )),
        }
    }

    /// Rows `ids` as `f32` values on the host, `[ids.len(), hidden]` row-major.
    fn host_rows(&self, ids: &[u32]) -> Result<Vec<f32>> {
        match self {
            TargetRows::Tensor(t) => {
                to_host(t.clone().select(0, ids_tensor::<B>(ids, &t.device())))
            }
            TargetRows::Host(m) => {
                let rows: Vec<usize> = ids.iter().map(|&t| t as usize).collect();
                Ok(m.dequantize_rows(&rows)?)
            }
        }
    }

    /// All rows as a tensor on `device` (for training and evaluation).
    fn to_tensor(&self, device: &B::Device) -> Result<Tensor<B, 2>> {
        match self {
            TargetRows::Tensor(t) => Ok(t.clone()),
            TargetRows::Host(m) => Ok(Tensor::from_data(
                TensorData::new(m.dequantize(), [m.rows(), m.cols()]),
                device,
            )),
        }
    }
}

fn ids_tensor<B: Backend>(ids: &[u32], device: &B::Device) -> Tensor<B, 1, Int> {
    let v: Vec<i64> = ids.iter().map(|&t| t as i64).collect();
    Tensor::from_data(TensorData::new(v, [ids.len()]), device)
}

impl<B: Backend> Drafter<B> for MultiHeadDrafter<B> {
    fn max_depth(&self) -> usize {
        self.config.heads
    }

    fn window(&self) -> usize {
        if self.config.coherence.uses_window() {
            self.config.window
        } else {
            0
        }
    }

    fn chains(&self) -> bool {
        self.config.coherence.chains_tokens()
    }

    fn copy(&self) -> usize {
        self.config.copy
    }

    fn initial_states(
        &self,
        features: Tensor<B, 2>,
        window: Tensor<B, 3>,
        valid: Tensor<B, 2>,
    ) -> Tensor<B, 2> {
        self.heads
            .initial(self.config.coherence, features, window, valid)
    }

    fn expand(
        &self,
        depth: usize,
        parents: Tensor<B, 2>,
        tokens: &[u32],
        copies: &[Option<CopyCandidate>],
        k: usize,
    ) -> Result<(Tensor<B, 2>, Vec<Vec<Candidate>>)> {
        let [m, _] = parents.dims();
        if depth >= self.config.heads || m == 0 {
            return Ok((parents, vec![Vec::new(); m]));
        }
        let independent = self.config.coherence == Coherence::Independent;
        // The new states, their logits over the draft vocabulary on the host, and (where nodes
        // have copy candidates) their copy bonuses.
        let (states, host, bonus) = match &self.head {
            DraftHead::Host(head, blocks) => {
                let device = parents.device();
                let [_, h] = parents.dims();
                let parents = to_host(parents)?;
                let emb = if independent {
                    vec![0.0; m * h]
                } else {
                    self.embed.host_rows(tokens)?
                };
                let s = blocks.step(depth, &parents, &emb, m);
                let host = head.forward(&s, m, blocks.threads());
                let bonus = if copies.is_empty() {
                    None
                } else {
                    blocks.copy_bonus(depth, &s, m)
                };
                let states = Tensor::from_data(TensorData::new(s, [m, h]), &device);
                (states, host, bonus)
            }
            DraftHead::Tensor(t) => {
                let emb = if independent {
                    parents.zeros_like()
                } else {
                    self.embed.select(tokens, &parents.device())?
                };
                let states = self.heads.step(depth, parents, emb);
                let host = to_host(states.clone().matmul(t.clone()))?;
                let bonus = match self.heads.copy_bonus(depth, states.clone()) {
                    Some(b) if !copies.is_empty() => Some(to_host(b)?),
                    _ => None,
                };
                (states, host, bonus)
            }
        };
        let dv = self.vocab.len();
        // Per row: the scores, and the copy candidate outside the draft vocabulary, if any,
        // that the extra column after it stands for.
        let (scores, width, outside) = match bonus {
            Some(bonus) => self.with_copy(&states, host, bonus, &copies[..m.min(copies.len())])?,
            None => (host, dv, Vec::new()),
        };
        let pick = |(r, row): (usize, &[f32])| -> Vec<Candidate> {
            let (ids, probs) = top_k_softmax(row, k);
            ids.into_iter()
                .zip(probs)
                .filter_map(|(i, p)| {
                    let token = match self.vocab.get(i as usize) {
                        Some(&t) => t,
                        None => outside.get(r).copied().flatten()?,
                    };
                    Some(Candidate {
                        token,
                        logprob: p.max(f32::MIN_POSITIVE).ln(),
                    })
                })
                .collect()
        };
        // Rows are picked apart on the kernels' threads where the drafter has them.
        let cands = match &self.head {
            DraftHead::Host(_, blocks) if m > 1 => blocks
                .threads()
                .install(|| scores.par_chunks(width).enumerate().map(pick).collect()),
            _ => scores.chunks(width).enumerate().map(pick).collect(),
        };
        Ok((states, cands))
    }
}

/// The fingerprint of `target`, to store with heads and to check them against.
pub fn fingerprint<B: Backend, M: CausalLm<B>>(target: &M) -> Result<Fingerprint> {
    let c = target.dims();
    let (v, h) = (c.vocab_size, c.hidden_size);
    let pos = probe_positions(v, h);
    let probe = match target.lm_head_matrix() {
        // Only the probed rows, from the head in its storage type (an f32 copy of the whole
        // head would be 113 MB for a 49,152-token vocabulary).
        Some(m) => {
            let rows: Vec<usize> = pos.iter().map(|&(r, _)| r).collect();
            let values = m
                .dequantize_rows(&rows)
                .map_err(|e| DraftError::Read(e.to_string()))?;
            pos.iter()
                .enumerate()
                .map(|(i, &(_, col))| values[i * h + col])
                .collect()
        }
        None => {
            let flat: Vec<i64> = pos.iter().map(|&(r, c)| (r * h + c) as i64).collect();
            let idx =
                Tensor::<B, 1, Int>::from_data(TensorData::new(flat, [pos.len()]), target.device());
            target
                .lm_head_weight()
                .reshape([v * h])
                .select(0, idx)
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| DraftError::Read(format!("{e:?}")))?
        }
    };
    Ok(Fingerprint {
        architecture: "llama".into(),
        hidden_size: c.hidden_size,
        vocab_size: c.vocab_size,
        num_layers: c.num_layers,
        lm_head_probe: probe,
    })
}

/// Grows one tree: a [`CandidateProvider`] that runs the heads from one initial state and keeps
/// every expanded node's state, so a child is drafted from its own parent (its branch).
pub struct Drafting<'a, B: Backend, D: Drafter<B>> {
    drafter: &'a D,
    /// `[1, hidden]` the state before the root.
    initial: Tensor<B, 2>,
    /// The committed text, the root's token last (what context copy searches).
    context: &'a [u32],
    /// Per tree node: (batch, row) of its state once expanded.
    state_of: Vec<Option<(usize, usize)>>,
    /// States computed by each `expand` call.
    batches: Vec<Tensor<B, 2>>,
    elapsed: Duration,
}

impl<'a, B: Backend, D: Drafter<B>> Drafting<'a, B, D> {
    /// A drafting state from an initial state `[1, hidden]` (a row of [`Drafter::initial_states`])
    /// and the committed `context` — prompt and answer so far, the root's token last — in which
    /// a copying drafter ([`Drafter::copy`]) looks up each node's branch.
    pub fn new(drafter: &'a D, initial: Tensor<B, 2>, context: &'a [u32]) -> Self {
        Drafting {
            drafter,
            initial,
            context,
            state_of: Vec::new(),
            batches: Vec::new(),
            elapsed: Duration::ZERO,
        }
    }

    /// Time spent in the drafter.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Each node's copy candidate: its text is the context then its branch below the root (none
    /// when the drafter does not copy).
    fn copies(
        &self,
        tree: &TokenTree,
        nodes: impl Iterator<Item = usize>,
    ) -> Vec<Option<CopyCandidate>> {
        let copy = self.drafter.copy();
        if copy == 0 {
            return Vec::new();
        }
        nodes
            .map(|n| {
                let mut text = self.context.to_vec();
                text.extend(tree.tokens_to(n).into_iter().skip(1));
                copy_candidate(&text, copy)
            })
            .collect()
    }

    fn parent_state(&self, tree: &TokenTree, n: usize) -> Option<Tensor<B, 2>> {
        if n == ROOT || !self.drafter.chains() {
            return Some(self.initial.clone());
        }
        let p = tree.node(n).parent?;
        let (b, r) = (*self.state_of.get(p)?)?;
        let t = &self.batches[b];
        let h = t.dims()[1];
        Some(t.clone().slice([r..r + 1, 0..h]))
    }
}

impl<B: Backend, D: Drafter<B>> CandidateProvider for Drafting<'_, B, D> {
    fn expand(
        &mut self,
        tree: &TokenTree,
        nodes: &[usize],
        k: usize,
    ) -> std::result::Result<Vec<Vec<Candidate>>, TreeError> {
        let start = Instant::now();
        let mut out = vec![Vec::new(); nodes.len()];
        // One head call per depth among `nodes` (callers pass one depth at a time).
        let mut depths: Vec<usize> = nodes.iter().map(|&n| tree.node(n).depth).collect();
        depths.sort_unstable();
        depths.dedup();
        for d in depths {
            if d >= self.drafter.max_depth() {
                continue;
            }
            let group: Vec<usize> = (0..nodes.len())
                .filter(|&i| tree.node(nodes[i]).depth == d)
                .collect();
            let parents: Option<Vec<Tensor<B, 2>>> = group
                .iter()
                .map(|&i| self.parent_state(tree, nodes[i]))
                .collect();
            let Some(parents) = parents else { continue };
            let tokens: Vec<u32> = group.iter().map(|&i| tree.node(nodes[i]).token).collect();
            let copies = self.copies(tree, group.iter().map(|&i| nodes[i]));
            match self
                .drafter
                .expand(d, Tensor::cat(parents, 0), &tokens, &copies, k)
            {
                Ok((states, cands)) => {
                    let b = self.batches.len();
                    self.batches.push(states);
                    for ((row, &i), c) in group.iter().enumerate().zip(cands) {
                        let n = nodes[i];
                        if self.state_of.len() <= n {
                            self.state_of.resize(n + 1, None);
                        }
                        self.state_of[n] = Some((b, row));
                        out[i] = c;
                    }
                }
                Err(e) => return Err(TreeError::Provider(e.to_string())),
            }
        }
        self.elapsed += start.elapsed();
        Ok(out)
    }
}
