//! `s4c bench-serve`: load on the OpenAI server from N concurrent clients (1, 4, 16, 64 by
//! default) — latency, time to first token, aggregate tok/s, errors, and whether every greedy
//! answer equals the one a lone client gets. It starts the server in-process on a free loopback
//! port, or targets `--url` (loopback only), sends a bounded number of requests, and stops.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use s4c::server::{Server, ServerConfig};
use s4c::{EngineError, Mode, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::args::{ModelArgs, SpecArgs};

#[derive(Args)]
pub struct BenchServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: SpecArgs,
    /// Decoding mode of the in-process server.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// A running server to load instead (`http://127.0.0.1:PORT`; loopback addresses only).
    #[arg(long)]
    pub url: Option<String>,
    /// Concurrent clients, one level after another.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64")]
    pub clients: Vec<usize>,
    /// Requests per level (at least one per client).
    #[arg(long, default_value_t = 32)]
    pub requests: usize,
    /// `max_tokens` of each request.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Questions (JSON lines with `turns`); their first turns are asked in turn.
    #[arg(long, default_value = "data/specbench-dev-heldout.jsonl")]
    pub questions: PathBuf,
    /// Ask only questions of at most this many characters (the chat, QA, math and translation
    /// questions; long documents measure prefill, which `s4c bench` covers); 0: all.
    #[arg(long, default_value_t = 1000)]
    pub max_prompt_chars: usize,
    /// Engine workers of the in-process server.
    #[arg(long, default_value_t = 1)]
    pub max_concurrent: usize,
    /// Requests an engine of the in-process server decodes together (1: one at a time).
    #[arg(long, default_value_t = 16)]
    pub max_batch: usize,
    /// Where to write the JSON results (the Markdown table and SVG chart go next to it).
    #[arg(long, default_value = "runs/bench-serve.json")]
    pub json: PathBuf,
}

/// One request's outcome.
struct Outcome {
    question: usize,
    status: u16,
    latency: f64,
    first_token: Option<f64>,
    tokens: usize,
    text: String,
}

/// The figures of one concurrency level.
#[derive(Serialize)]
struct Level {
    clients: usize,
    requests: usize,
    ok: usize,
    errors: usize,
    rejected_429: usize,
    wall_s: f64,
    aggregate_tok_s: f64,
    p50_latency_s: f64,
    p95_latency_s: f64,
    p50_ttft_s: f64,
    p95_ttft_s: f64,
    /// Answers equal to the lone client's answer to the same question.
    identical: usize,
    /// Answers compared with a lone client's.
    compared: usize,
}

/// Runs `s4c bench-serve`.
pub fn run(args: &BenchServeArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.contains(&0) || args.requests == 0 {
        return Err(EngineError::InvalidOption(
            "--clients needs counts of at least 1 and --requests at least 1".into(),
        ));
    }
    let questions = first_turns(&args.questions, args.max_prompt_chars)?;
    let runtime = crate::args::runtime()?;
    runtime.block_on(async {
        let (url, server_info) = match &args.url {
            Some(u) => (loopback(u)?, Value::Null),
            None => {
                let mut engine = args.model.engine(&args.spec);
                if let Some(m) = args.mode {
                    engine = engine.mode(m);
                }
                let mut config = ServerConfig::new(engine);
                config.backend = args.model.backend;
                config.workers = args.max_concurrent.max(1);
                config.max_batch = args.max_batch.max(1);
                config.queue = args.clients.iter().copied().max().unwrap_or(1).max(64);
                let server = Server::start(config).await?;
                let info = json!(server.info());
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|source| EngineError::Io {
                        path: "127.0.0.1:0".into(),
                        source,
                    })?;
                let addr = listener.local_addr().map_err(|source| EngineError::Io {
                    path: "listener".into(),
                    source,
                })?;
                tokio::spawn(server.serve(listener, std::future::pending()));
                (format!("http://{addr}"), info)
            }
        };
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(3600))
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| EngineError::InvalidOption(format!("HTTP client: {e}")))?;
        let mut lone: Vec<Option<String>> = vec![None; questions.len()];
        let mut levels = vec![];
        for &clients in &args.clients {
            let requests = args.requests.max(clients);
            let started = Instant::now();
            let outcomes = level(&client, &url, &questions, clients, requests, args.max_tokens).await;
            let wall = started.elapsed().as_secs_f64();
            if clients == 1 {
                for o in outcomes.iter().filter(|o| o.status == 200) {
                    lone[o.question].get_or_insert_with(|| o.text.clone());
                }
            }
            let l = summarize(clients, &outcomes, wall, &lone);
            eprintln!(
                "{clients:>3} clients: {} ok, {} errors ({} × 429), {:.1} tok/s, p50 {:.2} s, \
                 p95 {:.2} s, TTFT p50 {:.2} s, identical {}/{}",
                l.ok, l.errors, l.rejected_429, l.aggregate_tok_s, l.p50_latency_s,
                l.p95_latency_s, l.p50_ttft_s, l.identical, l.compared
            );
            levels.push(l);
        }
        let result = json!({
            "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
            "machine": {"cpu": s4c::cost::cpu_model(), "threads": std::thread::available_parallelism().map_or(1, |n| n.get())},
            "server": server_info,
            "url": if args.url.is_some() { json!(url) } else { Value::Null },
            "max_tokens": args.max_tokens,
            "max_batch": args.max_batch,
            "requests_per_level": args.requests,
            "questions_file": args.questions.display().to_string(),
            "questions": questions.len(),
            "max_prompt_chars": args.max_prompt_chars,
            "levels": levels,
        });
        write_outputs(&args.json, &result, &levels)
    })
}

/// `url` if its host is a loopback address.
fn loopback(url: &str) -> Result<String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| EngineError::InvalidOption("--url must start with http://".into()))?;
    let host = match rest.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => rest.split(['/', ':']).next().unwrap_or(""),
    };
    let is_loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if !is_loopback {
        return Err(EngineError::InvalidOption(format!(
            "--url must name a loopback address (127.0.0.1, ::1, localhost), not `{host}`"
        )));
    }
    Ok(url.trim_end_matches('/').to_string())
}

fn first_turns(path: &std::path::Path, max_chars: usize) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let turns: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["turns"][0].as_str().map(str::to_string))
        .filter(|t| max_chars == 0 || t.chars().count() <= max_chars)
        .collect();
    if turns.is_empty() {
        return Err(EngineError::InvalidOption(format!(
            "{}: no JSON lines with `turns` (of at most {max_chars} characters)",
            path.display()
        )));
    }
    Ok(turns)
}

/// `requests` requests from `clients` concurrent clients, each sending its share one after
/// another.
async fn level(
    client: &reqwest::Client,
    url: &str,
    questions: &[String],
    clients: usize,
    requests: usize,
    max_tokens: usize,
) -> Vec<Outcome> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let tasks = (0..clients).map(|_| async {
        let mut out = vec![];
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= requests {
                return out;
            }
            let q = i % questions.len();
            out.push(one(client, url, q, &questions[q], max_tokens).await);
        }
    });
    futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// One streamed greedy chat request.
async fn one(
    client: &reqwest::Client,
    url: &str,
    q: usize,
    question: &str,
    max_tokens: usize,
) -> Outcome {
    let started = Instant::now();
    let body = json!({
        "messages": [{"role": "user", "content": question}],
        "temperature": 0, "max_tokens": max_tokens, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut o = Outcome {
        question: q,
        status: 0,
        latency: 0.0,
        first_token: None,
        tokens: 0,
        text: String::new(),
    };
    let response = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await;
    let Ok(response) = response else {
        o.latency = started.elapsed().as_secs_f64();
        return o;
    };
    o.status = response.status().as_u16();
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(Ok(bytes)) = stream.next().await {
        buffer.push_str(&String::from_utf8_lossy(&bytes));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            if let Some(t) = v["choices"][0]["delta"]["content"].as_str() {
                if !t.is_empty() && o.first_token.is_none() {
                    o.first_token = Some(started.elapsed().as_secs_f64());
                }
                o.text.push_str(t);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                o.tokens = n as usize;
            }
        }
    }
    o.latency = started.elapsed().as_secs_f64();
    o
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn summarize(clients: usize, outcomes: &[Outcome], wall: f64, lone: &[Option<String>]) -> Level {
    let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.status == 200).collect();
    let compared: Vec<bool> = ok
        .iter()
        .filter_map(|o| lone[o.question].as_ref().map(|t| *t == o.text))
        .collect();
    Level {
        clients,
        requests: outcomes.len(),
        ok: ok.len(),
        errors: outcomes.len() - ok.len(),
        rejected_429: outcomes.iter().filter(|o| o.status == 429).count(),
        wall_s: wall,
        aggregate_tok_s: ok.iter().map(|o| o.tokens).sum::<usize>() as f64 / wall.max(1e-9),
        p50_latency_s: percentile(ok.iter().map(|o| o.latency).collect(), 0.5),
        p95_latency_s: percentile(ok.iter().map(|o| o.latency).collect(), 0.95),
        p50_ttft_s: percentile(ok.iter().filter_map(|o| o.first_token).collect(), 0.5),
        p95_ttft_s: percentile(ok.iter().filter_map(|o| o.first_token).collect(), 0.95),
        identical: compared.iter().filter(|&&s| s).count(),
        compared: compared.len(),
    }
}

fn markdown(levels: &[Level]) -> String {
    let mut s = String::from(
        "| clients | requests | ok | errors | 429 | aggregate tok/s | × 1 client | p50 latency s | p95 latency s | p50 TTFT s | p95 TTFT s | identical to lone |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let base = levels.first().map_or(1.0, |l| l.aggregate_tok_s.max(1e-9));
    for l in levels {
        s += &format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.2}× | {:.2} | {:.2} | {:.2} | {:.2} | {}/{} |\n",
            l.clients,
            l.requests,
            l.ok,
            l.errors,
            l.rejected_429,
            l.aggregate_tok_s,
            l.aggregate_tok_s / base,
            l.p50_latency_s,
            l.p95_latency_s,
            l.p50_ttft_s,
            l.p95_ttft_s,
            l.identical,
            l.compared
        );
    }
    s
}

/// Aggregate tok/s (bars) and p50 latency (written above) per level, as a small SVG.
fn chart(levels: &[Level]) -> String {
    let (w, h, left, bottom, top) = (110.0 * levels.len() as f64 + 100.0, 320.0, 70.0, 50.0, 40.0);
    let max = levels
        .iter()
        .map(|l| l.aggregate_tok_s)
        .fold(1.0f64, f64::max)
        * 1.15;
    let y = |v: f64| h - bottom - (v / max) * (h - bottom - top);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <text x=\"{left}\" y=\"20\" font-size=\"14\">s4c serve: aggregate tok/s by concurrent clients (p50 latency above bars)</text>\n"
    );
    for (i, l) in levels.iter().enumerate() {
        let x = left + 20.0 + 110.0 * i as f64;
        let (y0, y1) = (y(l.aggregate_tok_s), y(0.0));
        s += &format!(
            "<rect x=\"{x}\" y=\"{y0}\" width=\"70\" height=\"{}\" fill=\"#2e86c1\"/>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{:.0} tok/s · {:.1} s</text>\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{} clients</text>\n",
            (y1 - y0).max(0.0),
            x + 35.0,
            y0 - 6.0,
            l.aggregate_tok_s,
            l.p50_latency_s,
            x + 35.0,
            y1 + 18.0,
            l.clients
        );
    }
    s + "</svg>\n"
}

fn write_outputs(path: &std::path::Path, result: &Value, levels: &[Level]) -> Result<()> {
    let write = |p: PathBuf, text: String| crate::args::write_file(&p, &text);
    write(
        path.to_path_buf(),
        serde_json::to_string_pretty(result).unwrap_or_default(),
    )?;
    write(path.with_extension("md"), markdown(levels))?;
    write(path.with_extension("svg"), chart(levels))?;
    println!("{}", markdown(levels));
    eprintln!("wrote {}, .md, .svg", path.display());
    Ok(())
}
