//! `s4c generate`: one answer, streamed or as JSON, optionally compared with the other mode.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;

use clap::Args;
use s4c::{Completion, EngineError, Mode, Prompt, Request, Result, TextEngine};
use s4c_models::{Message, TemplateKind};
use s4c_verify::SamplingParams;
use serde_json::{json, Value};

use crate::args::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Wrap the prompt in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Chat template to use instead of the model's own (chatml, vicuna, llama2, llama3).
    #[arg(long)]
    pub template: Option<String>,
    /// The prompt text.
    #[arg(
        long,
        conflicts_with = "prompt_file",
        required_unless_present = "prompt_file"
    )]
    pub prompt: Option<String>,
    /// A file holding the prompt text.
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Keep only the k most likely tokens (0 = all).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Sampling seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Decoding mode (default: s4c when heads for the model are found, plain otherwise).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Also run plain decoding on the same prompt and report the speedup.
    #[arg(long)]
    pub compare: bool,
    /// Print one JSON object instead of streaming text.
    #[arg(long)]
    pub json: bool,
    /// Do not stop at end-of-sequence tokens (benchmarks with a fixed token count).
    #[arg(long)]
    pub ignore_eos: bool,
}

/// Runs `s4c generate`.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let mut builder = args.model.engine(&args.spec);
    if let Some(name) = &args.template {
        builder = builder.template(
            name.parse::<TemplateKind>()
                .map_err(EngineError::InvalidOption)?,
        );
    }
    // --compare needs both modes: S4C is set up even when plain is asked for.
    if args.compare {
        builder = builder.mode(Mode::S4c);
    } else if let Some(mode) = args.mode {
        builder = builder.mode(mode);
    }
    let engine = builder.open(args.model.backend)?;
    let info = engine.info();
    let mode = args.mode.unwrap_or(if info.heads.is_some() {
        Mode::S4c
    } else {
        Mode::Plain
    });
    if mode == Mode::S4c && info.heads.is_none() {
        eprintln!(
            "no draft heads for {}: context lookup alone (train heads with `s4c train-heads` for more)",
            info.model.display()
        );
    }
    let request = request(args)?.mode(mode);
    let mut out = std::io::stdout();
    let stream = !args.json;
    let answer = engine.generate(&request, &mut |piece| {
        if stream {
            let _ = out.write_all(piece.as_bytes());
            let _ = out.flush();
        }
        ControlFlow::Continue(())
    })?;
    if stream {
        println!();
    }
    let mut result = report(engine.as_ref(), &answer);
    if args.compare {
        let other = if mode == Mode::Plain {
            Mode::S4c
        } else {
            Mode::Plain
        };
        let base = engine.generate(&request.clone().mode(other), &mut |_| {
            ControlFlow::Continue(())
        })?;
        let (s4c, plain) = if mode == Mode::Plain {
            (&base, &answer)
        } else {
            (&answer, &base)
        };
        let speedup = s4c.timings.tokens_per_second / plain.timings.tokens_per_second.max(1e-9);
        let same = s4c.new_ids == plain.new_ids;
        // A greedy mismatch: where it begins and how close the target's choice was there.
        let divergence = if same || !request.sampling.is_greedy() {
            None
        } else {
            engine.divergence(
                &answer.prompt_ids,
                &plain.new_ids,
                &s4c.new_ids,
                args.max_new_tokens,
            )?
        };
        if let Some(d) = &divergence {
            eprintln!("greedy mismatch at {d}");
        }
        result["compare"] = json!({
            "plain_tok_per_s": plain.timings.tokens_per_second,
            "s4c_tok_per_s": s4c.timings.tokens_per_second,
            "speedup": speedup,
            "same_output": same,
            "divergence": divergence,
        });
    }
    if args.json {
        println!("{result}");
        return Ok(());
    }
    let t = &answer.timings;
    let tau = if t.mode == Mode::S4c {
        format!(", τ {:.2}", t.tau)
    } else {
        String::new()
    };
    eprintln!(
        "[{} new tokens, {:.1} tok/s, {} mode{tau}]",
        t.predicted_n,
        t.tokens_per_second,
        if t.mode == Mode::S4c { "s4c" } else { "plain" }
    );
    if let Some(c) = result.get("compare") {
        eprintln!(
            "[plain {:.1} tok/s, s4c {:.1} tok/s: speedup {:.2}×, same output: {}]",
            c["plain_tok_per_s"].as_f64().unwrap_or(0.0),
            c["s4c_tok_per_s"].as_f64().unwrap_or(0.0),
            c["speedup"].as_f64().unwrap_or(0.0),
            c["same_output"]
        );
    }
    Ok(())
}

/// The request the options describe.
fn request(args: &GenerateArgs) -> Result<Request> {
    let text = match (&args.prompt, &args.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|source| EngineError::Io {
            path: f.clone(),
            source,
        })?,
        (None, None) => {
            return Err(EngineError::InvalidOption(
                "give --prompt or --prompt-file".into(),
            ))
        }
    };
    let prompt = if args.chat {
        Prompt::Chat(vec![Message::new("user", &text)])
    } else {
        Prompt::Text(text)
    };
    let mut r = Request::new(prompt)
        .max_new_tokens(args.max_new_tokens)
        .sampling(
            SamplingParams {
                temperature: args.temperature,
                top_k: args.top_k,
                top_p: args.top_p,
            },
            args.seed,
        );
    r.ignore_eos = args.ignore_eos;
    Ok(r)
}

/// The JSON report of one answer.
fn report(engine: &dyn TextEngine, a: &Completion) -> Value {
    let info = engine.info();
    let t = &a.timings;
    let spec = t.mode == Mode::S4c;
    json!({
        "prompt_ids": a.prompt_ids,
        "new_ids": a.new_ids,
        "text": a.text,
        "new_tokens": a.new_ids.len(),
        "mode": t.mode,
        "steps": t.steps,
        "tau": spec.then_some(t.tau),
        "stats": a.spec,
        "timings": t,
        "tok_per_s": t.tokens_per_second,
        "elapsed_s": (t.prompt_ms + t.predicted_ms) / 1e3,
        "prefill_s": t.prompt_ms / 1e3,
        "stop": a.stop,
        "finish_reason": a.finish,
        "backend": info.backend,
        "dtype": info.weight_types,
        "compute_dtype": info.compute_dtype,
        "kv_dtype": info.kv_dtype,
        "engine": info.engine,
        "heads": spec.then(|| info.heads.as_ref().map(|h| h.display().to_string())).flatten(),
        "tree": if spec { info.tree.clone() } else { None },
        "peak_rss_mib": s4c::peak_rss_mib(),
    })
}
