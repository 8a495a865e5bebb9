//! `s4c bench`: the Spec-Bench protocol (DESIGN.md §6) — every question in plain and S4C mode in
//! the same process, per-task and overall tok/s, speedup, τ and greedy match rate.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use burn::tensor::backend::Backend;
use clap::Args;
use s4c::{with_backend, BackendJob, Engine, EngineError, Mode, Prompt, Request, Result, TokenRun};
use s4c_models::Message;
use serde::Serialize;
use serde_json::json;

use crate::args::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Questions, JSON lines with `turns` (list of user turns) and `task`.
    #[arg(long)]
    pub questions: PathBuf,
    /// Use only the first N questions of each task.
    #[arg(long)]
    pub limit_per_task: Option<usize>,
    /// Maximum new tokens per answer.
    #[arg(long, default_value_t = 256)]
    pub max_new_tokens: usize,
    /// Where to write the JSON results (the Markdown table and SVG chart go next to it).
    #[arg(long, default_value = "runs/bench.json")]
    pub json: PathBuf,
    /// Generate the first question's first turn this many times in both modes before measuring
    /// (GPU backends compile and tune their kernels on first use; the latency curve of `--tree
    /// cost` is measured before either way).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
}

/// Runs `s4c bench`.
pub fn run(args: &BenchArgs) -> Result<()> {
    struct Job<'a>(&'a BenchArgs);
    impl BackendJob for Job<'_> {
        type Output = ();
        fn run<B: Backend>(self, device: &B::Device) -> Result<()> {
            // Both modes from one engine; without heads for the model S4C is context lookup alone.
            let engine = self
                .0
                .model
                .engine(&self.0.spec)
                .mode(Mode::S4c)
                .build::<B>(device)?;
            bench(&engine, self.0)
        }
    }
    with_backend(args.model.backend, Job(args))
}

/// One benchmark question.
struct Question {
    id: String,
    task: String,
    turns: Vec<String>,
}

fn read_questions(path: &Path) -> Result<Vec<Question>> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = vec![];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let bad = |what: &str| {
            EngineError::InvalidOption(format!("{}:{}: {what}", path.display(), i + 1))
        };
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(&format!("not JSON: {e}")))?;
        let turns: Vec<String> = v["turns"]
            .as_array()
            .ok_or_else(|| bad("no `turns` list"))?
            .iter()
            .map(|t| {
                t.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| bad("a turn is not a string"))
            })
            .collect::<Result<_>>()?;
        if turns.is_empty() {
            return Err(bad("`turns` is empty"));
        }
        out.push(Question {
            id: v["question_id"].to_string(),
            task: v["task"].as_str().unwrap_or("default").to_string(),
            turns,
        });
    }
    Ok(out)
}

/// Totals of one task (or all).
#[derive(Default, Serialize, Clone)]
struct Summary {
    questions: usize,
    turns: usize,
    plain_tok_s: f64,
    s4c_tok_s: f64,
    speedup: f64,
    tau: f64,
    greedy_match: f64,
    /// Share of S4C's new tokens accepted from chains copied from the context (lookup).
    copied: f64,
    /// Mean tok/s after the prefill (`TokenRun::decode_tokens_per_second`), plain decoding.
    plain_decode_tok_s: f64,
    /// The same for S4C.
    s4c_decode_tok_s: f64,
    /// `s4c_decode_tok_s / plain_decode_tok_s`: the speedup of the steps after the prefill.
    decode_speedup: f64,
    /// Share of plain decoding's wall time spent in the prefill (the part both modes share).
    prefill_share: f64,
    #[serde(skip)]
    sums: Totals,
}

/// What a [`Summary`] adds up over its turns before [`Summary::finish`] averages it.
#[derive(Default, Clone)]
struct Totals {
    plain_tok_s: f64,
    s4c_tok_s: f64,
    plain_decode_tok_s: f64,
    s4c_decode_tok_s: f64,
    /// Plain decoding's prefill and wall seconds.
    plain_prefill_s: f64,
    plain_s: f64,
    /// S4C's new tokens, steps (the prefill's one included), and tokens from lookup.
    tokens: usize,
    steps: usize,
    copied: usize,
    /// Questions whose every turn matched plain greedy decoding.
    matched: usize,
}

impl Summary {
    fn add_turn(&mut self, plain: &TokenRun, spec: &TokenRun, steps: usize, copied: usize) {
        self.turns += 1;
        let t = &mut self.sums;
        t.plain_tok_s += plain.tokens_per_second();
        t.s4c_tok_s += spec.tokens_per_second();
        t.plain_decode_tok_s += plain.decode_tokens_per_second();
        t.s4c_decode_tok_s += spec.decode_tokens_per_second();
        t.plain_prefill_s += plain.prefill.as_secs_f64();
        t.plain_s += plain.elapsed.as_secs_f64();
        t.tokens += spec.new_ids.len();
        t.steps += steps;
        t.copied += copied;
    }
    fn finish(&mut self) {
        let (n, t) = (self.turns.max(1) as f64, &self.sums);
        self.plain_tok_s = t.plain_tok_s / n;
        self.s4c_tok_s = t.s4c_tok_s / n;
        self.speedup = self.s4c_tok_s / self.plain_tok_s.max(1e-9);
        self.plain_decode_tok_s = t.plain_decode_tok_s / n;
        self.s4c_decode_tok_s = t.s4c_decode_tok_s / n;
        self.decode_speedup = self.s4c_decode_tok_s / self.plain_decode_tok_s.max(1e-9);
        self.prefill_share = t.plain_prefill_s / t.plain_s.max(1e-9);
        self.tau = t.tokens as f64 / t.steps.max(1) as f64;
        self.greedy_match = t.matched as f64 / self.questions.max(1) as f64;
        self.copied = t.copied as f64 / t.tokens.max(1) as f64;
    }
}

fn machine() -> serde_json::Value {
    json!({
        "cpu": s4c::cost::cpu_model(),
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "physical_cores": s4c_models::quant::Threads::physical_cores(),
        "os": std::env::consts::OS,
    })
}

fn bench<B: Backend>(engine: &Engine<B>, args: &BenchArgs) -> Result<()> {
    let m = engine.model();
    let info = engine.info();
    let mut questions = read_questions(&args.questions)?;
    if let Some(n) = args.limit_per_task {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        questions.retain(|q| {
            let c = seen.entry(q.task.clone()).or_default();
            *c += 1;
            *c <= n
        });
    }
    let tree = info.tree.clone().unwrap_or_default();
    eprintln!("tree: {tree}");
    if info.chat_template.is_none() {
        return Err(EngineError::InvalidOption(
            "the model has no chat template; bench needs one".into(),
        ));
    }
    let opts = engine.generate_options(&Request::chat(vec![]).max_new_tokens(args.max_new_tokens));
    let chat_ids = |hist: &[Message]| engine.prompt_ids(&Prompt::Chat(hist.to_vec()));
    // One turn in both modes: plain on its own history's ids, S4C on its own.
    let run_both = |p_ids: &[u32], s_ids: &[u32]| -> Result<(TokenRun, TokenRun)> {
        let go = |ids: &[u32], mode| {
            engine.generate_tokens(ids, &opts, mode, &mut |_| ControlFlow::Continue(()))
        };
        Ok((go(p_ids, Mode::Plain)?, go(s_ids, Mode::S4c)?))
    };
    if let Some(q) = questions.first().filter(|_| args.warmup > 0) {
        let ids = chat_ids(&[Message::new("user", &q.turns[0])])?;
        let started = std::time::Instant::now();
        for _ in 0..args.warmup {
            run_both(&ids, &ids)?;
        }
        eprintln!(
            "warm-up: {} × 2 runs in {:.1} s",
            args.warmup,
            started.elapsed().as_secs_f64()
        );
    }
    let mut tasks: BTreeMap<String, Summary> = BTreeMap::new();
    let mut overall = Summary::default();
    let mut records = vec![];
    for (qi, q) in questions.iter().enumerate() {
        let mut plain_hist: Vec<Message> = vec![];
        let mut s4c_hist: Vec<Message> = vec![];
        let mut all_match = true;
        let mut turns = vec![];
        for turn in &q.turns {
            let ids = |hist: &mut Vec<Message>| -> Result<Vec<u32>> {
                hist.push(Message::new("user", turn));
                chat_ids(hist)
            };
            let p_ids = ids(&mut plain_hist)?;
            let s_ids = ids(&mut s4c_hist)?;
            let (plain, spec) = run_both(&p_ids, &s_ids)?;
            let stats = spec.spec.clone().unwrap_or_default();
            let same = plain.new_ids == spec.new_ids;
            all_match &= same;
            // Where a mismatch begins and how close the target's choice was there (after an
            // earlier turn's mismatch the two prompts differ and there is nothing to compare).
            let divergence = if same || p_ids != s_ids {
                None
            } else {
                let d = engine.divergence(
                    &p_ids,
                    &plain.new_ids,
                    &spec.new_ids,
                    args.max_new_tokens,
                )?;
                if let Some(d) = &d {
                    eprintln!("greedy mismatch in {} {}: {d}", q.task, q.id);
                }
                d
            };
            let (pt, st) = (plain.tokens_per_second(), spec.tokens_per_second());
            // τ counts the prefill's token as a step of its own (see SpecStats::tau).
            let steps = stats.steps + 1;
            for s in [tasks.entry(q.task.clone()).or_default(), &mut overall] {
                s.add_turn(&plain, &spec, steps, stats.lookup_accepted);
            }
            turns.push(json!({
                "plain_tok_s": pt, "s4c_tok_s": st, "tau": stats.tau,
                "plain_s": plain.elapsed.as_secs_f64(), "s4c_s": spec.elapsed.as_secs_f64(),
                "plain_prefill_s": plain.prefill.as_secs_f64(),
                "s4c_prefill_s": spec.prefill.as_secs_f64(),
                "plain_decode_tok_s": plain.decode_tokens_per_second(),
                "s4c_decode_tok_s": spec.decode_tokens_per_second(),
                "plain_new_tokens": plain.new_ids.len(), "s4c_new_tokens": spec.new_ids.len(),
                "same": same, "stats": stats, "divergence": divergence,
                "prompt_ids": p_ids,
            }));
            plain_hist.push(Message::new(
                "assistant",
                &m.tokenizer.decode(&plain.new_ids, true)?,
            ));
            s4c_hist.push(Message::new(
                "assistant",
                &m.tokenizer.decode(&spec.new_ids, true)?,
            ));
        }
        for s in [tasks.entry(q.task.clone()).or_default(), &mut overall] {
            s.questions += 1;
            s.sums.matched += all_match as usize;
        }
        let last = &turns[turns.len() - 1];
        eprintln!(
            "[{}/{}] {} {}: plain {:.1} tok/s, s4c {:.1} tok/s, τ {:.2}, drafted {}/{} steps, same {}",
            qi + 1,
            questions.len(),
            q.task,
            q.id,
            last["plain_tok_s"].as_f64().unwrap_or(0.0),
            last["s4c_tok_s"].as_f64().unwrap_or(0.0),
            last["tau"].as_f64().unwrap_or(0.0),
            last["stats"]["steps"].as_u64().unwrap_or(0) - last["stats"]["plain_steps"].as_u64().unwrap_or(0),
            last["stats"]["steps"].as_u64().unwrap_or(0),
            all_match
        );
        records.push(json!({"question_id": q.id, "task": q.task, "turns": turns}));
    }
    for s in tasks.values_mut() {
        s.finish();
    }
    overall.finish();
    let c = engine.heads_config();
    let result = json!({
        "machine": machine(),
        "backend": info.backend,
        "dtype": info.weight_types,
        "compute_dtype": info.compute_dtype,
        "kv_dtype": info.kv_dtype,
        "engine": info.engine,
        "kernel_threads": info.threads,
        "isa": info.isa,
        "model": info.model.display().to_string(),
        "heads": info.heads.as_ref().map(|h| h.display().to_string()),
        "coherence": c.map(|c| c.coherence.to_string()),
        "draft_vocab": c.map(|c| c.draft_vocab),
        "tree": tree,
        "max_new_tokens": args.max_new_tokens,
        "stop_ids": engine.stop_tokens(),
        "warmup": args.warmup,
        "questions_file": args.questions.display().to_string(),
        "tasks": tasks,
        "overall": overall,
        "questions": records,
        "peak_rss_mib": s4c::peak_rss_mib(),
    });
    write_outputs(&args.json, &result, &tasks, &overall)?;
    println!("{}", markdown(&tasks, &overall));
    Ok(())
}

use crate::args::write_file as write;

fn write_outputs(
    json_path: &Path,
    result: &serde_json::Value,
    tasks: &BTreeMap<String, Summary>,
    overall: &Summary,
) -> Result<()> {
    write(
        json_path,
        &serde_json::to_string_pretty(result).unwrap_or_default(),
    )?;
    write(&json_path.with_extension("md"), &markdown(tasks, overall))?;
    write(&json_path.with_extension("svg"), &chart(tasks, overall))?;
    eprintln!(
        "wrote {}, {}, {}",
        json_path.display(),
        json_path.with_extension("md").display(),
        json_path.with_extension("svg").display()
    );
    Ok(())
}

fn markdown(tasks: &BTreeMap<String, Summary>, overall: &Summary) -> String {
    let mut s = String::from(
        "| task | questions | turns | plain tok/s | s4c tok/s | speedup | τ | greedy match | copied | \
         decode speedup | prefill share |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let rows = tasks
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("**overall**", overall)]);
    for (name, t) in rows {
        s += &format!(
            "| {name} | {} | {} | {:.1} | {:.1} | {:.2}× | {:.2} | {:.0}% | {:.0}% | {:.2}× | {:.0}% |\n",
            t.questions,
            t.turns,
            t.plain_tok_s,
            t.s4c_tok_s,
            t.speedup,
            t.tau,
            t.greedy_match * 100.0,
            t.copied * 100.0,
            t.decode_speedup,
            t.prefill_share * 100.0
        );
    }
    s
}

/// A bar chart of the speedup per task (τ written above each bar), as a small SVG.
fn chart(tasks: &BTreeMap<String, Summary>, overall: &Summary) -> String {
    let rows: Vec<(&str, &Summary)> = tasks
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .chain([("overall", overall)])
        .collect();
    let (w, h, left, bottom, top) = (120.0 * rows.len() as f64 + 80.0, 360.0, 60.0, 60.0, 30.0);
    let max = rows
        .iter()
        .map(|r| r.1.speedup)
        .fold(1.0f64, f64::max)
        .ceil();
    let y = |v: f64| h - bottom - (v / max) * (h - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"18\" font-size=\"14\">S4C speedup over plain decoding (τ above bars)</text>\n"
    );
    for i in 0..=max as usize {
        let yy = y(i as f64);
        s += &format!(
            "<line x1=\"{left}\" x2=\"{}\" y1=\"{yy}\" y2=\"{yy}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{i}×</text>\n",
            w - 10.0,
            left - 6.0,
            yy + 4.0
        );
    }
    for (i, (name, t)) in rows.iter().enumerate() {
        let x = left + 20.0 + 120.0 * i as f64;
        let (y0, y1) = (y(t.speedup), y(0.0));
        let color = if *name == "overall" {
            "#c0392b"
        } else {
            "#2e86c1"
        };
        s += &format!(
            "<rect x=\"{x}\" y=\"{y0}\" width=\"80\" height=\"{}\" fill=\"{color}\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.2}× · τ {:.2}</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{name}</text>\n",
            (y1 - y0).max(0.0),
            x + 40.0,
            y0 - 6.0,
            t.speedup,
            t.tau,
            x + 40.0,
            y1 + 18.0
        );
    }
    s + "</svg>\n"
}
