//! Training the heads on self-distillation data: per head, cross-entropy to the target's top-k
//! next-token distribution at its offset and optionally a regression to the target's feature
//! there (weights decaying with depth), AdamW with cosine decay, resumable checkpoints, a CSV loss
//! log, and held-out top-1/top-5 and expected τ.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use s4c_models::CausalLm;
use s4c_tree::{AcceptanceStats, Template};
use serde::{Deserialize, Serialize};

use crate::config::DrafterConfig;
use crate::copy::{copy_candidate, push_copy_inputs};
use crate::data::Dataset;
use crate::drafter::MultiHeadDrafter;
use crate::error::{DraftError, Result};
use crate::heads::{batch_logits, batch_loss, Batch, Heads, LossWeights};

/// Options of [`train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Passes over the training examples; 0 with [`TrainOptions::init`] takes no step: the
    /// initial heads (with context copy added, if asked) are evaluated and returned.
    pub epochs: usize,
    /// Peak AdamW learning rate (cosine decay to 10% of it).
    pub lr: f64,
    /// Examples per step.
    pub batch_size: usize,
    /// Loss weight of head `k` is `decay^k`.
    pub decay: f32,
    /// Weight of the feature-regression term next to the cross-entropy (see
    /// [`LossWeights::feature`]); 0 trains on the cross-entropy alone.
    pub feature_loss: f32,
    /// Seed of initialisation and data order.
    pub seed: u64,
    /// Every `held_out_every`-th sequence is held out for evaluation (0 = none).
    pub held_out_every: usize,
    /// Where checkpoints and `loss.csv` go (`None`: no checkpoints, no log).
    pub checkpoint_dir: Option<PathBuf>,
    /// Steps between checkpoints.
    pub checkpoint_every: usize,
    /// End this run after this many steps (a later run resumes from the checkpoint).
    pub stop_after: Option<usize>,
    /// Amplitude `a` of the uniform noise `U(−a, a)` added to every input feature (the last one
    /// and the window) during training, a regulariser against memorising the features (EAGLE
    /// trains with it); 0 disables it.
    pub feature_noise: f32,
    /// Fraction of the blocks' inner activations zeroed at each training step (dropout, a
    /// regulariser against memorising the data); 0 disables it.
    pub dropout: f64,
    /// Heads to start from instead of a seeded random initialisation (fine-tuning them on more
    /// data). Their configuration (apart from the acceptance statistics) and draft vocabulary
    /// must be the ones being trained; a checkpoint to resume from still takes precedence.
    pub init: Option<PathBuf>,
    /// Train only the copy layers ([`DrafterConfig::copy`]), the rest of the heads frozen as
    /// initialised: fitting context copy to heads already trained, on text they have not
    /// memorised (on their own training data they are right more often than anywhere else,
    /// and the copy bonus learns to defer to them).
    pub only_copy: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 2,
            lr: 1e-3,
            batch_size: 128,
            decay: 0.8,
            feature_loss: 0.0,
            seed: 0,
            held_out_every: 20,
            checkpoint_dir: None,
            checkpoint_every: 200,
            stop_after: None,
            feature_noise: 0.0,
            dropout: 0.0,
            init: None,
            only_copy: false,
        }
    }
}

/// What the progress callback sees after each step.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Steps done.
    pub step: usize,
    /// Total steps.
    pub total_steps: usize,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Loss per head of the latest batch.
    pub head_loss: Vec<f32>,
    /// Training examples (positions) per second since the start (or resume).
    pub examples_per_s: f64,
}

/// Held-out quality of a drafter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Examples evaluated.
    pub examples: usize,
    /// Per head: fraction whose best draft equals the target's next token (teacher-forced
    /// branch: the earlier depths hold the target's tokens).
    pub top1: Vec<f64>,
    /// Per head: fraction with the target's token among the 5 best drafts.
    pub top5: Vec<f64>,
    /// Expected tokens per step (accepted + bonus) of a greedy chain of the heads' top-1.
    pub tau_chain: f64,
    /// Expected tokens per step of the 63-node `mc_sim_7b_63` static tree.
    pub tau_tree63: f64,
    /// Fraction of the target's next tokens inside the draft vocabulary.
    pub vocab_coverage: f64,
    /// Acceptance counts per (depth, rank) along the target's own branch, for tree sizing.
    pub acceptance: AcceptanceStats,
}

/// The `n` most frequent next tokens of the target in `data` (ties: lower id first); the full
/// vocabulary, in id order, when `n == 0` or `n >= vocab_size`.
pub fn frequency_vocab(data: &Dataset, vocab_size: usize, n: usize) -> Vec<u32> {
    if n == 0 || n >= vocab_size {
        return (0..vocab_size as u32).collect();
    }
    let mut count = vec![0u64; vocab_size];
    for s in &data.sequences {
        for &t in &s.tokens {
            if (t as usize) < vocab_size {
                count[t as usize] += 1;
            }
        }
    }
    let mut ids: Vec<u32> = (0..vocab_size as u32).collect();
    ids.sort_by(|&a, &b| count[b as usize].cmp(&count[a as usize]).then(a.cmp(&b)));
    ids.truncate(n);
    ids
}

/// Which sequences of `data` are held out, by prompt: the sequence at index `i` is held out when
/// `i % every == every - 1`, and every later sequence of the same prompt (a repeated prompt,
/// another sampled answer) goes where its prompt's first sequence went, so no held-out prompt is
/// ever trained on.
pub fn held_out(data: &Dataset, every: usize) -> Vec<bool> {
    held_out_prompts(
        data.sequences
            .iter()
            .map(|s| &s.tokens[..s.prompt_len.min(s.tokens.len())]),
        every,
    )
}

/// [`held_out`] for a list of prompts (one sequence each): which of them a data set of their
/// answers holds out.
pub fn held_out_prompts<'a>(
    prompts: impl IntoIterator<Item = &'a [u32]>,
    every: usize,
) -> Vec<bool> {
    let mut side: HashMap<&[u32], bool> = HashMap::new();
    prompts
        .into_iter()
        .enumerate()
        .map(|(i, prompt)| {
            *side
                .entry(prompt)
                .or_insert(every > 0 && i % every == every - 1)
        })
        .collect()
}

/// Splits `data` into (training, held-out) sequences as [`held_out`] says.
pub fn split(data: &Dataset, every: usize) -> (Dataset, Dataset) {
    let mut train = Dataset {
        hidden: data.hidden,
        top_k: data.top_k,
        sequences: Vec::new(),
    };
    let mut held = train.clone();
    for (s, out) in data.sequences.iter().zip(held_out(data, every)) {
        if out {
            held.sequences.push(s.clone());
        } else {
            train.sequences.push(s.clone());
        }
    }
    (train, held)
}

/// Every position that gives head 1 a label: `(sequence, position)`.
pub fn examples(data: &Dataset) -> Vec<(usize, usize)> {
    data.sequences
        .iter()
        .enumerate()
        .flat_map(|(s, seq)| (0..seq.positions().saturating_sub(1)).map(move |t| (s, t)))
        .collect()
}

/// Builds a batch of `ex` = `(sequence, position)` examples on `device` (host work, then one
/// upload per tensor). `draft_index` maps token ids to draft-vocabulary indices (−1: outside);
/// `frozen` holds the target's tensors the heads read.
pub fn build_batch<B: Backend>(
    data: &Dataset,
    ex: &[(usize, usize)],
    config: &DrafterConfig,
    draft_index: &[i32],
    frozen: &Frozen<B>,
    device: &B::Device,
) -> Batch<B> {
    let dv = frozen.head.dims()[0];
    let (n, h, w, k, tk) = (
        ex.len(),
        data.hidden,
        config.window,
        config.heads,
        data.top_k,
    );
    let mut feats = vec![0f32; n * h];
    let mut win = vec![0f32; n * w * h];
    let mut valid = vec![0f32; n * w];
    let mut cond = vec![0i64; n * k];
    let mut tidx = vec![0i64; n * k * tk];
    let mut tw = vec![0f32; n * k * tk];
    let mut tfeat = vec![0f32; n * k * h];
    let mut labelled = vec![0f32; n * k];
    let copy = config.copy;
    let (mut copy_column, mut copy_matched) = (Vec::with_capacity(n * k), Vec::new());
    // Out-of-vocabulary candidates: their token (0 without one) and 1 where there is one.
    let (mut oov_token, mut oov) = (vec![0i64; n * k], vec![0f32; n * k]);
    let mut rows = vec![0usize; k];
    for (r, &(s, t)) in ex.iter().enumerate() {
        let seq = &data.sequences[s];
        let f = |p: usize| &seq.features[p * h..(p + 1) * h];
        for (dst, &x) in feats[r * h..(r + 1) * h].iter_mut().zip(f(t)) {
            *dst = x.to_f32();
        }
        for j in 0..w {
            // Window slot j holds position t − w + j (oldest first).
            if let Some(p) = (t + j).checked_sub(w) {
                let off = (r * w + j) * h;
                for (dst, &x) in win[off..off + h].iter_mut().zip(f(p)) {
                    *dst = x.to_f32();
                }
                valid[r * w + j] = 1.0;
            }
        }
        for j in 0..k {
            let row = t + j + 1;
            // Head j's text ends with the token it reads (t + j + 1): its copy candidate.
            let cand = (row < seq.positions())
                .then(|| copy_candidate(&seq.tokens[..row + 1], copy))
                .flatten();
            let outside = push_copy_inputs(
                cand,
                draft_index,
                dv,
                copy,
                &mut copy_column,
                &mut copy_matched,
            );
            if let Some(tok) = outside {
                oov_token[r * k + j] = tok as i64;
                oov[r * k + j] = 1.0;
            }
            if row >= seq.positions() {
                continue;
            }
            rows[j] += 1;
            labelled[r * k + j] = 1.0;
            cond[r * k + j] = seq.tokens[t + j + 1] as i64;
            let off = (r * k + j) * h;
            for (dst, &x) in tfeat[off..off + h].iter_mut().zip(f(row)) {
                *dst = x.to_f32();
            }
            for q in 0..tk {
                let id = seq.top_ids[row * tk + q] as usize;
                let mut di = draft_index.get(id).copied().unwrap_or(-1);
                if di < 0 && outside == Some(id as u32) {
                    // The copy candidate's own column, after the draft vocabulary.
                    di = dv as i32;
                }
                if di >= 0 {
                    tidx[(r * k + j) * tk + q] = di as i64;
                    tw[(r * k + j) * tk + q] = seq.top_probs[row * tk + q].to_f32();
                }
            }
        }
    }
    let cond_ids = Tensor::<B, 1, Int>::from_data(TensorData::new(cond, [n * k]), device);
    let (copy_rows, copy_offset) = if copy > 0 {
        let ids = Tensor::<B, 1, Int>::from_data(TensorData::new(oov_token, [n * k]), device);
        let mask = Tensor::<B, 3>::from_data(TensorData::new(oov, [n, k, 1]), device);
        let rows = frozen.full_head.clone().select(0, ids).reshape([n, k, h]) * mask.clone();
        // The extra column is −1e4 (no weight) unless it holds a candidate.
        (rows, (mask - 1.0) * 1e4)
    } else {
        (
            Tensor::zeros([n, k, 0], device),
            Tensor::zeros([n, k, 0], device),
        )
    };
    Batch {
        features: Tensor::from_data(TensorData::new(feats, [n, h]), device),
        window: Tensor::from_data(TensorData::new(win, [n, w, h]), device),
        valid: Tensor::from_data(TensorData::new(valid, [n, w]), device),
        cond: frozen.embed.clone().select(0, cond_ids).reshape([n, k, h]),
        target_idx: Tensor::from_data(TensorData::new(tidx, [n, k, tk]), device),
        target_w: Tensor::from_data(TensorData::new(tw, [n, k, tk]), device),
        target_features: Tensor::from_data(TensorData::new(tfeat, [n, k, h]), device),
        labelled: Tensor::from_data(TensorData::new(labelled, [n, k]), device),
        copy_column: Tensor::from_data(TensorData::new(copy_column, [n, k, 1]), device),
        copy_matched: Tensor::from_data(TensorData::new(copy_matched, [n, k, copy]), device),
        copy_rows,
        copy_offset,
        rows_per_head: rows,
    }
}

pub use crate::heads::{draft_index, Frozen};

/// The target's [`Frozen`] tensors for the draft vocabulary `vocab`, as constants of the
/// autodiff backend: no gradient reaches them.
pub fn frozen<B, M>(target: &M, vocab: &[u32]) -> Frozen<B>
where
    B: AutodiffBackend,
    M: CausalLm<B::InnerBackend>,
{
    let device = target.device();
    let v = target.dims().vocab_size;
    let embed = target.embed(Tensor::arange(0..v as i64, device));
    let ids: Vec<i64> = vocab.iter().map(|&t| t as i64).collect();
    let full_head = target.lm_head_weight();
    let head = full_head.clone().select(
        0,
        Tensor::from_data(TensorData::new(ids, [vocab.len()]), device),
    );
    Frozen {
        embed: Tensor::from_inner(embed),
        head: Tensor::from_inner(head),
        full_head: Tensor::from_inner(full_head),
    }
}

#[derive(Serialize, Deserialize)]
struct CheckpointState {
    step: usize,
    seed: u64,
    examples: usize,
}

/// Trains heads for `target` on `data` and returns the drafter and its held-out evaluation on
/// the target's answers.
///
/// `B` is an autodiff backend whose inner backend runs `target`; gradients reach only the heads
/// (the target's embedding and LM head enter as constants).
pub fn train<B, M>(
    target: &M,
    data: &Dataset,
    config: DrafterConfig,
    vocab: Vec<u32>,
    options: &TrainOptions,
    progress: &mut dyn FnMut(&Progress),
) -> Result<(MultiHeadDrafter<B::InnerBackend>, Evaluation)>
where
    B: AutodiffBackend,
    M: CausalLm<B::InnerBackend>,
{
    config.validate().map_err(DraftError::InvalidOption)?;
    if options.batch_size == 0 || (options.epochs == 0 && options.init.is_none()) {
        return Err(DraftError::InvalidOption(
            "batch size and epochs must be at least 1 (0 epochs only with heads to start from)"
                .into(),
        ));
    }
    finite_non_negative("the feature-loss weight", options.feature_loss)?;
    finite_non_negative("the feature-noise amplitude", options.feature_noise)?;
    if !(0.0..1.0).contains(&options.dropout) {
        return Err(DraftError::InvalidOption(format!(
            "dropout {} must be in [0, 1)",
            options.dropout
        )));
    }
    if options.only_copy && config.copy == 0 {
        return Err(DraftError::InvalidOption(
            "training only the copy layers needs heads with context copy (--copy N)".into(),
        ));
    }
    if data.hidden != config.hidden {
        return Err(DraftError::InvalidOption(format!(
            "training data has features of width {}, the target {}",
            data.hidden, config.hidden
        )));
    }
    let device: B::Device = target.device().clone();
    let vsize = target.dims().vocab_size;
    let index = draft_index(&vocab, vsize);
    let (train_set, held) = split(data, options.held_out_every);
    let ex = examples(&train_set);
    if ex.is_empty() {
        return Err(DraftError::InvalidOption(
            "no training examples: generate data first".into(),
        ));
    }
    let steps_per_epoch = ex.len().div_ceil(options.batch_size);
    let total_steps = steps_per_epoch * options.epochs;

    let frozen = frozen::<B, M>(target, &vocab);

    let mut heads = match &options.init {
        Some(path) => start_from::<B>(path, &config, &vocab, &device)?,
        None => Heads::<B>::init(&config, &device, options.seed),
    };
    let mut optim = AdamWConfig::new()
        .with_weight_decay(0.01)
        .init::<B, Heads<B>>();
    let recorder = NamedMpkFileRecorder::<FullPrecisionSettings>::new();
    let mut step = 0usize;
    if let Some(dir) = &options.checkpoint_dir {
        std::fs::create_dir_all(dir).map_err(|e| DraftError::io(dir, e))?;
        let state_path = dir.join("checkpoint.json");
        if state_path.exists() {
            let text =
                std::fs::read_to_string(&state_path).map_err(|e| DraftError::io(&state_path, e))?;
            let st: CheckpointState =
                serde_json::from_str(&text).map_err(|e| DraftError::InvalidData {
                    path: state_path.clone(),
                    reason: e.to_string(),
                })?;
            if st.seed == options.seed && st.examples == ex.len() && st.step <= total_steps {
                let bad = |e: burn::record::RecorderError| DraftError::InvalidData {
                    path: dir.clone(),
                    reason: format!("checkpoint: {e:?}"),
                };
                heads = heads
                    .load_file(dir.join("heads"), &recorder, &device)
                    .map_err(bad)?;
                optim = optim.load_record(recorder.load(dir.join("optim"), &device).map_err(bad)?);
                step = st.step;
            }
        }
    }
    let mut log = match &options.checkpoint_dir {
        Some(dir) => Some(LossLog::open(
            &dir.join("loss.csv"),
            config.heads,
            step == 0,
        )?),
        None => None,
    };

    let start = Instant::now();
    let first_step = step;
    let end = options
        .stop_after
        .map_or(total_steps, |n| (step + n).min(total_steps));
    while step < end {
        let epoch = step / steps_per_epoch;
        let mut order = ex.clone();
        order.shuffle(&mut StdRng::seed_from_u64(
            options.seed ^ ((epoch as u64) << 32),
        ));
        let i = step % steps_per_epoch;
        let part = &order[i * options.batch_size..((i + 1) * options.batch_size).min(order.len())];
        let mut batch = build_batch(&train_set, part, &config, &index, &frozen, &device);
        if options.feature_noise > 0.0 {
            let mut rng = StdRng::seed_from_u64(options.seed ^ (step as u64).rotate_left(17));
            batch.features = add_noise(batch.features, options.feature_noise, &mut rng);
            batch.window = add_noise(batch.window, options.feature_noise, &mut rng);
        }
        let weights = LossWeights {
            decay: options.decay,
            feature: options.feature_loss,
            dropout: options.dropout,
        };
        let (loss, per_head) = batch_loss(&heads, config.coherence, &frozen.head, &batch, weights);
        let mut raw = loss.backward();
        let grads = if options.only_copy {
            // The copy layers' gradients alone: the optimiser leaves the rest as it is.
            let copy: Vec<_> = heads.blocks.iter().filter_map(|b| b.copy.clone()).collect();
            GradientsParams::from_module(&mut raw, &copy)
        } else {
            GradientsParams::from_grads(raw, &heads)
        };
        let progress_frac = step as f64 / total_steps as f64;
        let lr =
            options.lr * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * progress_frac).cos()));
        heads = optim.step(lr, heads, grads);
        step += 1;
        let head_loss: Vec<f32> = per_head
            .into_iter()
            .map(|l| l.into_scalar().elem::<f32>())
            .collect();
        let done = (step - first_step) * options.batch_size;
        let p = Progress {
            step,
            total_steps,
            epoch,
            head_loss,
            examples_per_s: done as f64 / start.elapsed().as_secs_f64().max(1e-9),
        };
        if let Some(log) = log.as_mut() {
            log.write(&p, lr)?;
        }
        progress(&p);
        if let Some(dir) = &options.checkpoint_dir {
            if step.is_multiple_of(options.checkpoint_every.max(1)) || step == end {
                save_checkpoint(dir, &heads, &optim, &recorder, step, options.seed, ex.len())?;
            }
        }
    }

    let trained = heads.valid();
    let drafter = MultiHeadDrafter::new(config, trained, vocab, target)?;
    let eval = evaluate(&drafter, &held, true)?;
    Ok((drafter, eval))
}

/// The heads at `path` as training's starting point, refused unless their configuration (all
/// but the acceptance statistics) is `config` and their draft vocabulary `vocab`.
fn start_from<B: Backend>(
    path: &Path,
    config: &DrafterConfig,
    vocab: &[u32],
    device: &B::Device,
) -> Result<Heads<B>> {
    let stored = crate::io::load_config(path)?;
    if let Some(reason) = stored.target.mismatch(&config.target) {
        return Err(DraftError::WrongTarget {
            path: path.to_path_buf(),
            reason,
        });
    }
    // Compared without what may differ: the statistics, and the fingerprint's float rounding.
    let stored = DrafterConfig {
        acceptance: None,
        target: config.target.clone(),
        ..stored
    };
    // Heads made without context copy may gain it: their copy layers start at zero.
    let add_copy = stored.copy == 0 && config.copy > 0;
    let wanted = DrafterConfig {
        acceptance: None,
        copy: if add_copy { 0 } else { config.copy },
        ..config.clone()
    };
    let refuse = |what: &str| {
        Err(DraftError::InvalidOption(format!(
            "cannot start training from {}: its {what} differs from the heads being trained \
             (train with the same shape options and data, or without an initialisation)",
            path.display()
        )))
    };
    if stored != wanted {
        return refuse("configuration");
    }
    let (heads, stored_vocab) = crate::io::read_heads::<B>(path, &stored, device)?;
    if stored_vocab != vocab {
        return refuse("draft vocabulary");
    }
    Ok(heads.with_copy(config.copy, device))
}

/// An error unless `value` (named `what`) is finite and at least 0.
fn finite_non_negative(what: &str, value: f32) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(DraftError::InvalidOption(format!(
            "{what} must be a finite number of 0 or more, not {value}"
        )))
    }
}

/// `x + U(−a, a)`, drawn on the host (the same seed gives the same noise on every backend).
fn add_noise<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    a: f32,
    rng: &mut StdRng,
) -> Tensor<B, D> {
    let dims = x.dims();
    let n = dims.iter().product();
    let noise: Vec<f32> = (0..n).map(|_| rng.random_range(-a..a)).collect();
    let noise = Tensor::from_data(TensorData::new(noise, dims), &x.device());
    x + noise
}

fn save_checkpoint<B: AutodiffBackend, O: Optimizer<Heads<B>, B>>(
    dir: &Path,
    heads: &Heads<B>,
    optim: &O,
    recorder: &NamedMpkFileRecorder<FullPrecisionSettings>,
    step: usize,
    seed: u64,
    examples: usize,
) -> Result<()> {
    let bad = |e: burn::record::RecorderError| DraftError::InvalidData {
        path: dir.to_path_buf(),
        reason: format!("checkpoint: {e:?}"),
    };
    heads
        .clone()
        .save_file(dir.join("heads"), recorder)
        .map_err(bad)?;
    recorder
        .record(optim.to_record(), dir.join("optim"))
        .map_err(bad)?;
    let st = serde_json::to_string(&CheckpointState {
        step,
        seed,
        examples,
    })
    .map_err(|e| DraftError::InvalidOption(format!("internal: {e}")))?;
    let path = dir.join("checkpoint.json");
    std::fs::write(&path, st).map_err(|e| DraftError::io(&path, e))
}

/// The CSV loss log: `step,epoch,lr,loss_1..loss_K,examples_per_s`.
struct LossLog {
    file: std::fs::File,
    path: PathBuf,
}

impl LossLog {
    fn open(path: &Path, heads: usize, fresh: bool) -> Result<Self> {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(!fresh)
            .write(true)
            .truncate(fresh)
            .open(path)
            .map_err(|e| DraftError::io(path, e))?;
        if fresh {
            let cols: Vec<String> = (1..=heads).map(|k| format!("loss_{k}")).collect();
            writeln!(file, "step,epoch,lr,{},examples_per_s", cols.join(","))
                .map_err(|e| DraftError::io(path, e))?;
        }
        Ok(LossLog {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, p: &Progress, lr: f64) -> Result<()> {
        use std::io::Write;
        let losses: Vec<String> = p.head_loss.iter().map(|l| format!("{l:.5}")).collect();
        writeln!(
            self.file,
            "{},{},{lr:.6},{},{:.1}",
            p.step,
            p.epoch,
            losses.join(","),
            p.examples_per_s
        )
        .map_err(|e| DraftError::io(&self.path, e))
    }
}

/// Held-out evaluation of `drafter` on `data` (teacher-forced branches; see [`Evaluation`]).
///
/// With `answers_only`, only positions whose next token the target generated itself count (what
/// drafting meets at run time); otherwise teacher-forced prompt text counts too.
pub fn evaluate<B: Backend>(
    drafter: &MultiHeadDrafter<B>,
    data: &Dataset,
    answers_only: bool,
) -> Result<Evaluation> {
    let frozen = drafter.frozen()?;
    let config = drafter.config();
    let k = config.heads;
    let vocab = drafter.vocab();
    let vsize = frozen.embed.dims()[0];
    let index = draft_index(vocab, vsize);
    let mut ex = examples(data);
    if answers_only {
        // Position t predicts token t + 1: generated when t + 1 ≥ prompt_len.
        ex.retain(|&(s, t)| t + 1 >= data.sequences[s].prompt_len);
    }
    let device = frozen.embed.device();
    let template = Template::mc_sim_7b_63();
    let mut top1 = vec![0usize; k];
    let mut top5 = vec![0usize; k];
    let mut labelled = vec![0usize; k];
    let (mut chain_sum, mut tree_sum) = (0usize, 0usize);
    let (mut covered, mut labels) = (0usize, 0usize);
    const RANKS: usize = 10;
    let mut acceptance = AcceptanceStats::new(k, RANKS);
    for part in ex.chunks(256) {
        let batch = build_batch(data, part, config, &index, &frozen, &device);
        let logits = batch_logits(drafter.heads(), config.coherence, &frozen.head, &batch);
        // The draft vocabulary, and with context copy one column for a candidate outside it.
        let dv = vocab.len() + usize::from(config.copy > 0);
        let mut ranks: Vec<Vec<Option<usize>>> = vec![vec![None; k]; part.len()];
        for (j, l) in logits.into_iter().enumerate() {
            let host = l
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .map_err(|e| DraftError::Read(format!("{e:?}")))?;
            for (r, &(s, t)) in part.iter().enumerate() {
                let seq = &data.sequences[s];
                let row = t + j + 1;
                if row >= seq.positions() {
                    continue;
                }
                let label = seq.top_ids[row * data.top_k];
                labelled[j] += 1;
                labels += 1;
                let li = index.get(label as usize).copied().filter(|&i| i >= 0);
                // Outside the draft vocabulary, the copy candidate's column may hold the label.
                let li = li.or_else(|| {
                    let c = copy_candidate(&seq.tokens[..row + 1], config.copy)?;
                    (c.token == label).then_some(vocab.len() as i32)
                });
                let Some(li) = li else {
                    continue;
                };
                covered += 1;
                let scores = &host[r * dv..(r + 1) * dv];
                let target = scores[li as usize];
                // Rank = how many score higher (ties: lower index first, like the drafter).
                let rank = scores
                    .iter()
                    .enumerate()
                    .filter(|&(i, &x)| x > target || (x == target && i < li as usize))
                    .count();
                if rank == 0 {
                    top1[j] += 1;
                }
                if rank < 5 {
                    top5[j] += 1;
                }
                ranks[r][j] = Some(rank);
            }
        }
        for r in ranks {
            // Along the target's branch (teacher-forced, so every depth with a label counts).
            for (d, x) in r.iter().enumerate() {
                let Some(x) = x else { break };
                for rank in 0..RANKS {
                    acceptance.tried[d][rank] += 1;
                }
                if *x < RANKS {
                    acceptance.accepted[d][*x] += 1;
                }
            }
            chain_sum += r.iter().take_while(|x| **x == Some(0)).count();
            let mut path = Vec::new();
            let mut depth = 0;
            for x in r {
                let Some(x) = x else { break };
                path.push(x);
                if !template.contains(&path) {
                    break;
                }
                depth += 1;
            }
            tree_sum += depth;
        }
    }
    let n = ex.len().max(1) as f64;
    let frac = |a: &[usize]| -> Vec<f64> {
        a.iter()
            .zip(&labelled)
            .map(|(&c, &l)| c as f64 / l.max(1) as f64)
            .collect()
    };
    Ok(Evaluation {
        examples: ex.len(),
        top1: frac(&top1),
        top5: frac(&top5),
        tau_chain: 1.0 + chain_sum as f64 / n,
        tau_tree63: 1.0 + tree_sum as f64 / n,
        vocab_coverage: covered as f64 / labels.max(1) as f64,
        acceptance,
    })
}
