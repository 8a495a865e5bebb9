//! `s4c synth-prompts`: training prompts written by the target itself (Magpie-style prompt
//! synthesis). The model continues its chat template opened at a user turn, so it writes the
//! user's message; complete, distinct messages become JSON lines `{"prompt": …}` that
//! `train-heads --prompts` reads — more prompts than a fixed set holds, with no outside data.

use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use s4c::{stop_tokens, template_ids, EngineError, Result};
use s4c_draft::data::{sample_turns, DistillOptions, Sampling};
use s4c_models::LoadedModel;

use clap::Args;
use s4c::{with_backend, BackendJob};

use crate::args::ModelArgs;
use crate::train_heads::{bar, read_prompts};

#[derive(Args)]
pub struct SynthPromptsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Where to write the prompts (JSON lines with a `prompt` field).
    #[arg(long)]
    pub out: PathBuf,
    /// Distinct prompts to write.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Sampling temperature of the user messages (above 0).
    #[arg(long, default_value_t = 1.0)]
    pub temperature: f32,
    /// Seed of the draws (message `s` of round `r` draws from its own generator).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Longest message in tokens; longer ones are dropped, not cut.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Shortest message kept, in words.
    #[arg(long, default_value_t = 4)]
    pub min_words: usize,
    /// Messages decoded together.
    #[arg(long, default_value_t = 24)]
    pub batch: usize,
    /// Prompt files (JSON lines) whose prompts are not written again, e.g. an earlier run's.
    #[arg(long)]
    pub exclude: Vec<PathBuf>,
}

/// Runs `s4c synth-prompts`.
pub fn run(args: &SynthPromptsArgs) -> Result<()> {
    struct Job<'a>(&'a SynthPromptsArgs);
    impl BackendJob for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: &B::Device) -> Result<()> {
            let m =
                s4c_models::load::<B>(&self.0.model.model, device, &self.0.model.load_options())?;
            synth_prompts(&m, self.0)
        }
    }
    with_backend(args.model.backend, Job(args))
}

/// Rounds of drawing before giving up on reaching `--count` distinct prompts.
const MAX_ROUNDS: u64 = 8;

/// The kept form of a generated user message, or `None` when it is unusable: trimmed, at least
/// `min_words` words, and no replacement characters (a cut multi-byte sequence).
pub fn clean_prompt(text: &str, min_words: usize) -> Option<String> {
    let t = text.trim();
    (t.split_whitespace().count() >= min_words && !t.contains('\u{FFFD}')).then(|| t.to_string())
}

/// The key two prompts share when they differ only in case and spacing.
pub fn dedup_key(text: &str) -> String {
    text.split_whitespace()
        .map(str::to_lowercase)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Writes `--count` distinct user messages the model writes itself to `--out`, drawing rounds of
/// messages until it has them (or gives up after [`MAX_ROUNDS`] with a warning).
fn synth_prompts<B: Backend>(m: &LoadedModel<B>, args: &SynthPromptsArgs) -> Result<()> {
    if args.count == 0 || args.max_tokens == 0 || args.batch == 0 {
        return Err(EngineError::InvalidOption(
            "--count, --max-tokens and --batch must be at least 1".into(),
        ));
    }
    if !(args.temperature.is_finite() && args.temperature > 0.0) {
        return Err(EngineError::InvalidOption(format!(
            "--temperature must be above 0 (got {}): greedy decoding writes one prompt only",
            args.temperature
        )));
    }
    let template = m.template.as_ref().ok_or_else(|| {
        EngineError::InvalidOption(
            "the model has no chat template, so it has no user turn to write; pass a model with \
             one (ChatML or Llama 3)"
                .into(),
        )
    })?;
    let opening = template.user_turn_opening().ok_or_else(|| {
        EngineError::InvalidOption(format!(
            "the {:?} chat template ends a user turn with plain text, not a special token; \
             prompt synthesis needs ChatML or Llama 3",
            template.describe()
        ))
    })?;
    let ids = template_ids(m, template, &opening)?;
    let options = DistillOptions {
        max_new_tokens: args.max_tokens,
        batch: args.batch,
        top_k: 1,
        stop_tokens: stop_tokens(m),
        sampling: None,
    };

    let mut file = std::fs::File::create(&args.out).map_err(|source| EngineError::Io {
        path: args.out.clone(),
        source,
    })?;
    let pb = bar(
        args.count as u64,
        "prompts {bar:30} {pos}/{len}  {msg}  elapsed {elapsed}  eta {eta}",
    );
    let start = Instant::now();
    let (mut kept, mut drawn, mut cut) = (0usize, 0usize, 0usize);
    // Prompts of the --exclude files count as written already.
    let mut seen = HashSet::new();
    for path in &args.exclude {
        seen.extend(read_prompts(path)?.iter().map(|p| dedup_key(p)));
    }
    for round in 0..MAX_ROUNDS {
        if kept >= args.count {
            break;
        }
        // Draw half as many again as are missing: some turns are cut, empty or repeated.
        let want = (args.count - kept) * 3 / 2 + 1;
        let sampling = Sampling {
            temperature: args.temperature,
            samples: want,
            seed: args.seed ^ round.wrapping_mul(0x9E37_79B9_7F4A_7C15),
        };
        let turns = sample_turns(&m.model, &ids, sampling, &options, &mut |done, _| {
            pb.set_message(format!("round {}, {done}/{want} drawn", round + 1));
        })?;
        drawn += want;
        cut += want - turns.len();
        for turn in turns {
            let text = m.tokenizer.decode(&turn, true)?;
            let Some(prompt) = clean_prompt(&text, args.min_words) else {
                continue;
            };
            if kept < args.count && seen.insert(dedup_key(&prompt)) {
                let line = serde_json::json!({ "prompt": prompt });
                writeln!(file, "{line}").map_err(|source| EngineError::Io {
                    path: args.out.clone(),
                    source,
                })?;
                kept += 1;
                pb.set_position(kept as u64);
            }
        }
    }
    pb.finish();
    eprintln!(
        "{kept} prompts into {} ({drawn} drawn, {cut} cut off at {} tokens, the rest short or \
         repeated) in {:.0} s",
        args.out.display(),
        args.max_tokens,
        start.elapsed().as_secs_f64()
    );
    if kept < args.count {
        eprintln!(
            "warning: only {kept} of {} distinct prompts after {MAX_ROUNDS} rounds; raise \
             --temperature or --max-tokens, or lower --min-words",
            args.count
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_trimmed_long_enough_and_whole() {
        assert_eq!(
            clean_prompt("  Name three rivers.\n", 3).as_deref(),
            Some("Name three rivers.")
        );
        assert_eq!(clean_prompt("Hello there", 3), None);
        assert_eq!(clean_prompt("", 1), None);
        assert_eq!(clean_prompt("a cut \u{FFFD} character", 1), None);
        assert_eq!(
            dedup_key("Name  three\nRivers."),
            dedup_key("name three rivers.")
        );
        assert_ne!(
            dedup_key("name two rivers."),
            dedup_key("name three rivers.")
        );
    }
}
