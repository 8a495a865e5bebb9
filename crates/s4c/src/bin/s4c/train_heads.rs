//! `s4c train-heads`: self-distillation data, then training, with a progress bar.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use indicatif::{ProgressBar, ProgressStyle};
use s4c::{stop_tokens, template_ids, EngineError, Result};
use s4c_draft::data::{distill_to_dir, load_dir, Dataset, DistillOptions, Sampling};
use s4c_draft::train::{
    evaluate, frequency_vocab, held_out, held_out_prompts, split, train, TrainOptions,
};
use s4c_draft::{fingerprint, DrafterConfig};
use s4c_models::{CausalLm, LoadedModel, Message};
use serde_json::json;

use clap::Args;
use s4c::{with_backend, BackendJob};

use crate::args::ModelArgs;

#[derive(Args)]
pub struct TrainHeadsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Training prompts, JSON lines with a `prompt` field (never the benchmark questions).
    #[arg(long)]
    pub prompts: PathBuf,
    /// Where to write the heads (`.safetensors`; the JSON config goes next to it).
    #[arg(long, default_value = "heads.safetensors")]
    pub out: PathBuf,
    /// Folder of the self-distillation data: chunks of 32 prompts, each reused when it holds the
    /// same prompts and answer length (so runs resume and extend; other chunks are regenerated).
    #[arg(long, default_value = "runs/distill")]
    pub data_dir: PathBuf,
    /// Use only the first N prompts.
    #[arg(long)]
    pub limit_prompts: Option<usize>,
    /// Answer length per prompt when generating the data.
    #[arg(long, default_value_t = 128)]
    pub answer_tokens: usize,
    /// Sequences decoded together when generating the data.
    #[arg(long, default_value_t = 16)]
    pub data_batch: usize,
    /// Sample the answers at this temperature instead of greedily (0 = greedy): more varied
    /// data from the same prompts, especially with --samples.
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Answers per prompt (more than one needs --temperature above 0).
    #[arg(long, default_value_t = 1)]
    pub samples: usize,
    /// Seed of the sampled answers.
    #[arg(long, default_value_t = 0)]
    pub data_seed: u64,
    /// More data folders to train on, made by earlier `--data-only` runs (e.g. sampled answers
    /// to the same prompts, or answers to `synth-prompts`' prompts). The held-out split stays
    /// that of --data-dir: their sequences of its held-out prompts, and of those their own
    /// folder's split holds out, are left out.
    #[arg(long)]
    pub extra_data: Vec<PathBuf>,
    /// Stop after generating the data.
    #[arg(long)]
    pub data_only: bool,
    /// Do not train: evaluate the heads at --out on the held-out split of the data, and record
    /// the acceptance statistics measured on the target's answers in the heads' JSON.
    #[arg(long)]
    pub eval_only: bool,
    /// Keep only the held-out prompts (every 20th usable one, as the split of the full data
    /// holds out): with --data-only, make their data alone (minutes, in a folder of its own);
    /// with --eval-only, evaluate on such a folder as a whole — the held-out report without the
    /// training data.
    #[arg(long, conflicts_with = "eval_training")]
    pub held_out_only: bool,
    /// With --eval-only: evaluate on as many training sequences as are held out (every 19th
    /// one) instead, to see how much the heads memorise; the heads' JSON is left as it is.
    #[arg(long, requires = "eval_only")]
    pub eval_training: bool,
    #[command(flatten)]
    pub train: TrainArgs,
}

#[derive(Args)]
pub struct TrainArgs {
    /// Number of heads (maximum draft depth).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,
    /// Past target features the initial state attends over.
    #[arg(long, default_value_t = 8)]
    pub window: usize,
    /// Inner width of each head's block (0 = the target's hidden size).
    #[arg(long, default_value_t = 0)]
    pub inner: usize,
    /// Fraction of the heads' inner activations zeroed at each training step (dropout, against
    /// memorising the data); 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub dropout: f64,
    /// Residual MLP layers per head (the first also reads the parent's token).
    #[arg(long, default_value_t = 1)]
    pub layers: usize,
    /// Draft vocabulary: the N most frequent tokens of the data (0 = the full vocabulary).
    #[arg(long, default_value_t = 0)]
    pub draft_vocab: usize,
    /// Context copy: each head adds a bonus, read from its state, to the token that followed the
    /// most recent earlier occurrence of its branch's last N tokens (or fewer) in the text; 0 =
    /// off. With --init, heads made without it gain it.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(0..=8))]
    pub copy: u64,
    /// Train only the copy layers (with --init: the heads stay as they are), on text the heads
    /// have not memorised — answers to prompts they were not trained on.
    #[arg(long)]
    pub only_copy: bool,
    /// Coherence components: independent (Medusa), tokens, full (S4C).
    #[arg(long, default_value = "full")]
    pub coherence: s4c_draft::Coherence,
    /// Passes over the training data; 0 (with --init) takes no step: the heads are written to
    /// --out as they start — with context copy added by --copy — and evaluated.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// AdamW learning rate (cosine decay to 10%).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Examples per optimisation step.
    #[arg(long, default_value_t = 128)]
    pub batch_size: usize,
    /// Amplitude of the uniform noise added to the input features while training (a
    /// regulariser; 0 = none).
    #[arg(long, default_value_t = 0.0)]
    pub feature_noise: f32,
    /// Weight of the feature regression (smooth L1 from each head's state to the target's
    /// feature at its offset) next to the cross-entropy; 0 = cross-entropy only.
    #[arg(long, default_value_t = 0.0)]
    pub feature_loss: f32,
    /// Seed of initialisation and data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Folder of resumable checkpoints and the loss log.
    #[arg(long, default_value = "runs/train-heads")]
    pub checkpoint_dir: PathBuf,
    /// Start from these heads (`.safetensors` with its `.json`) instead of a random
    /// initialisation: fine-tune them, e.g. on more data. Their shape and draft vocabulary are
    /// kept (--heads, --window, --inner, --layers, --coherence and --draft-vocab are ignored;
    /// --copy only adds context copy to heads without it).
    #[arg(long)]
    pub init: Option<PathBuf>,
}

/// Runs `s4c train-heads`.
pub fn run(args: &TrainHeadsArgs) -> Result<()> {
    struct Job<'a>(&'a TrainHeadsArgs);
    impl BackendJob for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: &B::Device) -> Result<()> {
            let m =
                s4c_models::load::<B>(&self.0.model.model, device, &self.0.model.load_options())?;
            train_heads(&m, self.0)
        }
    }
    with_backend(args.model.backend, Job(args))
}

/// Reads the `prompt` field of every JSON line of `path`.
pub fn read_prompts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).map_err(|e| {
                EngineError::InvalidOption(format!("{}:{}: not JSON: {e}", path.display(), i + 1))
            })?;
            v["prompt"].as_str().map(str::to_string).ok_or_else(|| {
                EngineError::InvalidOption(format!(
                    "{}:{}: no string field `prompt`",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

/// The ids of `text` as a one-turn chat (or raw text when the model has no template).
pub fn chat_ids<B: Backend>(m: &LoadedModel<B>, text: &str) -> Result<Vec<u32>> {
    let Some(t) = &m.template else {
        return Ok(m.tokenizer.encode(text)?);
    };
    template_ids(m, t, &t.render(&[Message::new("user", text)])?)
}

/// A progress bar of `len` steps drawn with `template`.
pub(crate) fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

fn train_heads<B: Backend>(m: &LoadedModel<B>, args: &TrainHeadsArgs) -> Result<()> {
    if args
        .prompts
        .file_name()
        .is_some_and(|n| n.to_string_lossy().contains("specbench"))
    {
        return Err(EngineError::InvalidOption(
            "refusing to train on the Spec-Bench questions (they are the benchmark); use \
             data/train-prompts.jsonl"
                .into(),
        ));
    }
    let mut prompts = read_prompts(&args.prompts)?;
    if let Some(n) = args.limit_prompts {
        prompts.truncate(n);
    }
    let ids = prompts
        .iter()
        .map(|p| chat_ids(m, p))
        .collect::<Result<Vec<_>>>()?;
    // Keep prompts that leave room for the answer.
    let limit = m.model.max_positions().saturating_sub(args.answer_tokens);
    let mut ids: Vec<Vec<u32>> = ids
        .into_iter()
        .filter(|p| p.len() <= limit.min(512))
        .collect();
    if args.held_out_only {
        if !(args.data_only || args.eval_only) {
            return Err(EngineError::InvalidOption(
                "--held-out-only makes or evaluates data of the held-out prompts only; add \
                 --data-only or --eval-only (training needs the training prompts)"
                    .into(),
            ));
        }
        let held = held_out_prompts(ids.iter().map(Vec::as_slice), HELD_OUT_EVERY);
        ids = ids
            .into_iter()
            .zip(held)
            .filter_map(|(p, out)| out.then_some(p))
            .collect();
    }
    eprintln!(
        "self-distillation data: {} prompts, up to {} answer tokens each, into {}",
        ids.len(),
        args.answer_tokens,
        args.data_dir.display()
    );
    let sampling = match (args.temperature, args.samples) {
        (_, 0) => {
            return Err(EngineError::InvalidOption(
                "--samples must be at least 1".into(),
            ))
        }
        (0.0, 1) => None,
        (0.0, n) => {
            return Err(EngineError::InvalidOption(format!(
                "--samples {n} needs --temperature above 0 (greedy answers are all the same)"
            )))
        }
        (temperature, samples) => Some(Sampling {
            temperature,
            samples,
            seed: args.data_seed,
        }),
    };
    let options = DistillOptions {
        max_new_tokens: args.answer_tokens,
        batch: args.data_batch,
        top_k: 8,
        stop_tokens: stop_tokens(m),
        sampling,
    };
    let pb = bar(
        ids.len() as u64,
        "data {bar:30} {pos}/{len} prompts  {msg}  elapsed {elapsed}  eta {eta}",
    );
    let start = Instant::now();
    let data = distill_to_dir(
        &m.model,
        &ids,
        &args.data_dir,
        32,
        &options,
        &mut |done, tokens| {
            pb.set_position(done.min(ids.len()) as u64);
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            pb.set_message(format!(
                "{tokens} new tokens, {:.0} tok/s",
                tokens as f64 / secs
            ));
        },
    )?;
    pb.finish();
    eprintln!(
        "data: {} sequences, {} positions ({} answer tokens) in {:.0} s",
        data.sequences.len(),
        data.positions(),
        data.answer_tokens(),
        start.elapsed().as_secs_f64()
    );
    if args.data_only {
        return Ok(());
    }
    if args.eval_only {
        return eval_heads(m, &data, args);
    }
    let data = with_extra_data(data, &args.extra_data)?;
    train_on(m, &data, args)
}

/// `data` followed by the sequences of the `extra` folders whose prompts neither `data` nor their
/// own folder holds out (so the held-out split, and what it measures, stay those of `data`, and no
/// prompt any folder holds out is trained on; prompts `data` lacks, such as `synth-prompts`'
/// own, are training prompts unless their folder holds them out).
fn with_extra_data(mut data: Dataset, extra: &[PathBuf]) -> Result<Dataset> {
    // Held-out prompts of `data`, without copying its sequences.
    let held: HashSet<Vec<u32>> = data
        .sequences
        .iter()
        .zip(held_out(&data, HELD_OUT_EVERY))
        .filter(|(_, out)| *out)
        .map(|(s, _)| s.tokens[..s.prompt_len].to_vec())
        .collect();
    let mut kept = Vec::new();
    for dir in extra {
        let more = load_dir(dir)?;
        if more.sequences.is_empty() {
            return Err(EngineError::InvalidOption(format!(
                "--extra-data {}: no data chunks there; make them first with --data-only \
                 --data-dir {}",
                dir.display(),
                dir.display()
            )));
        }
        if (more.hidden, more.top_k) != (data.hidden, data.top_k) {
            return Err(EngineError::InvalidOption(format!(
                "--extra-data {}: features of width {} with top-{} distributions, but \
                 --data-dir has {} and top-{}; use data made by the same model",
                dir.display(),
                more.hidden,
                more.top_k,
                data.hidden,
                data.top_k
            )));
        }
        let total = more.sequences.len();
        let before = kept.len();
        let own = held_out(&more, HELD_OUT_EVERY);
        kept.extend(more.sequences.into_iter().zip(own).filter_map(|(s, out)| {
            let prompt = &s.tokens[..s.prompt_len.min(s.tokens.len())];
            (!out && !held.contains(prompt)).then_some(s)
        }));
        eprintln!(
            "extra data {}: {} of {} sequences (those of no held-out prompt)",
            dir.display(),
            kept.len() - before,
            total
        );
    }
    data.sequences.extend(kept);
    Ok(data)
}

/// Held-out evaluation of existing heads: on the target's answers and on all positions.
fn eval_heads<B: Backend>(m: &LoadedModel<B>, data: &Dataset, args: &TrainHeadsArgs) -> Result<()> {
    let drafter = s4c_draft::io::load::<B, _>(&args.out, &m.model)?;
    // Data of the held-out prompts alone (--held-out-only) is held out as a whole.
    let every = if args.held_out_only {
        1
    } else {
        HELD_OUT_EVERY
    };
    let (train_part, held) = split(data, every);
    // With --eval-training: as many training sequences as are held out, spread over the split.
    let (evaluated_on, held) = if args.eval_training {
        let sequences = train_part
            .sequences
            .into_iter()
            .step_by(HELD_OUT_EVERY - 1)
            .take(held.sequences.len())
            .collect();
        ("training", Dataset { sequences, ..held })
    } else {
        ("held_out", held)
    };
    let answers = evaluate(&drafter, &held, true)?;
    let all = evaluate(&drafter, &held, false)?;
    let report = json!({
        "heads": args.out.display().to_string(),
        "evaluated_on": evaluated_on,
        "coherence": drafter.config().coherence.to_string(),
        "draft_vocab": drafter.config().draft_vocab,
        "held_out_sequences": held.sequences.len(),
        "held_out": &answers,
        "held_out_all_positions": all,
    });
    // Trees are sized from held-out acceptance only: training sequences' would flatter the heads.
    if !args.eval_training {
        s4c_draft::io::save(&drafter.with_acceptance(answers.acceptance), &args.out)?;
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    Ok(())
}

/// Trains heads on `data` (held-out split included for the report) and saves them.
fn train_on<B: Backend>(m: &LoadedModel<B>, data: &Dataset, args: &TrainHeadsArgs) -> Result<()> {
    let t = &args.train;
    let vsize = m.model.config().vocab_size;
    let (train_part, _) = split(data, HELD_OUT_EVERY);
    let (config, vocab) = match &t.init {
        // Fine-tuning keeps the heads' shape and vocabulary (and checks they fit the model).
        Some(init) => {
            let start = s4c_draft::io::load(init, &m.model)?;
            let mut config = start.config().clone();
            if config.copy == 0 {
                // Heads made without context copy may gain it (fresh copy layers: the prior bonus).
                config.copy = t.copy as usize;
            }
            (config, start.vocab().to_vec())
        }
        None => {
            let vocab = frequency_vocab(&train_part, vsize, t.draft_vocab);
            let mut config = DrafterConfig::new(fingerprint(&m.model)?);
            config.heads = t.heads;
            config.window = t.window;
            if t.inner > 0 {
                config.inner = t.inner;
            }
            config.layers = t.layers;
            config.coherence = t.coherence;
            config.copy = t.copy as usize;
            config.draft_vocab = vocab.len();
            (config, vocab)
        }
    };
    let options = TrainOptions {
        epochs: t.epochs,
        lr: t.lr,
        batch_size: t.batch_size,
        feature_noise: t.feature_noise,
        feature_loss: t.feature_loss,
        dropout: t.dropout,
        seed: t.seed,
        held_out_every: HELD_OUT_EVERY,
        checkpoint_dir: Some(t.checkpoint_dir.clone()),
        init: t.init.clone(),
        only_copy: t.only_copy,
        ..Default::default()
    };
    eprintln!(
        "training {} heads ({} coherence, window {}, {} layers, copy {}, draft vocabulary {}) on {} positions{}",
        config.heads,
        config.coherence,
        config.window,
        config.layers,
        config.copy,
        vocab.len(),
        train_part.positions(),
        t.init
            .as_ref()
            .map(|p| format!(", starting from {}", p.display()))
            .unwrap_or_default()
    );
    let pb = bar(
        0,
        "train {bar:30} {pos}/{len} steps  {msg}  elapsed {elapsed}  eta {eta}",
    );
    let start = Instant::now();
    let (drafter, eval) =
        train::<Autodiff<B>, _>(&m.model, data, config, vocab, &options, &mut |p| {
            pb.set_length(p.total_steps as u64);
            pb.set_position(p.step as u64);
            let losses: Vec<String> = p.head_loss.iter().map(|l| format!("{l:.3}")).collect();
            pb.set_message(format!(
                "epoch {} loss [{}] {:.0} ex/s",
                p.epoch + 1,
                losses.join(" "),
                p.examples_per_s
            ));
        })?;
    pb.finish();
    let drafter = drafter.with_acceptance(eval.acceptance.clone());
    s4c_draft::io::save(&drafter, &args.out)?;
    let report = json!({
        "heads": args.out.display().to_string(),
        "coherence": drafter.config().coherence.to_string(),
        "draft_vocab": drafter.config().draft_vocab,
        "train_positions": train_part.positions(),
        "sequences": data.sequences.len(),
        "seconds": start.elapsed().as_secs_f64(),
        "held_out": eval,
    });
    let path = t.checkpoint_dir.join("report.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|source| EngineError::Io {
        path: path.clone(),
        source,
    })?;
    println!(
        "{}",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    );
    Ok(())
}

/// Every 20th sequence is held out for evaluation.
const HELD_OUT_EVERY: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use s4c_draft::data::{chunk_path, save_chunk, Sequence};

    /// A sequence of prompt `[p, p]` answered by `a` (two positions, features of width 1).
    fn seq(p: u32, a: u32) -> Sequence {
        Sequence {
            tokens: vec![p, p, a],
            prompt_len: 2,
            features: vec![f16::ZERO; 2],
            top_ids: vec![0; 2],
            top_probs: vec![f16::ZERO; 2],
        }
    }

    #[test]
    fn extra_data_never_brings_in_a_held_out_prompt() {
        // Main data: prompts 0..40, so prompts 19 and 39 are held out.
        let data = Dataset {
            hidden: 1,
            top_k: 1,
            sequences: (0..40).map(|p| seq(p, 1)).collect(),
        };
        // An extra folder: other answers to prompts 0..20 (its own split also holds out its
        // 20th sequence: prompt 19 again), then new prompts 100..120 (it holds out prompt
        // 119) and another answer to 39.
        let mut extra: Vec<Sequence> = (0..20).map(|p| seq(p, 2)).collect();
        extra.extend((100..120).map(|p| seq(p, 2)));
        extra.push(seq(39, 2));
        let dir = std::env::temp_dir().join(format!("s4c-extra-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        save_chunk(&chunk_path(&dir, 0), 1, 1, &extra, None).unwrap();
        let all = with_extra_data(data, std::slice::from_ref(&dir)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let added: Vec<u32> = all.sequences[40..].iter().map(|s| s.tokens[0]).collect();
        let mut expected: Vec<u32> = (0..19).collect();
        expected.extend(100..119);
        assert_eq!(added, expected);
    }
}
