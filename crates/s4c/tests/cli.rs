//! The `s4c` program end to end on the default model: generation contract, and clear errors.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn s4c(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_s4c"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run s4c");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden_case(i: usize) -> Value {
    let text =
        std::fs::read_to_string(repo().join("data/golden-smollm2-135m-instruct.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"][i].clone()
}

#[test]
fn generate_json_reproduces_the_reference_greedy_answer() {
    // Case 0: "What is the capital of France?" — reference: "The capital of France is Paris.<|im_end|>"
    // (HF transformers on the weights dequantized to f32).
    let case = golden_case(0);
    let (ok, out, err) = s4c(&[
        "generate",
        "--dtype",
        "f32",
        "--chat",
        "--prompt",
        case["text"].as_str().unwrap(),
        "--max-new-tokens",
        "20",
        "--mode",
        "plain",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "plain");
    assert_eq!(v["prompt_ids"], case["input_ids"]);
    assert_eq!(v["new_ids"], case["greedy_new_ids"]);
    assert_eq!(v["text"], "The capital of France is Paris.");
    assert_eq!(v["stop"], "stop_token");
    assert!(v["tok_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        v["steps"].as_u64().unwrap() as usize + 1,
        v["new_ids"].as_array().unwrap().len()
    );
}

#[test]
fn tokenize_and_info() {
    let (ok, out, _) = s4c(&["tokenize", "--json", "Hello, world!"]);
    assert!(ok);
    assert_eq!(out.trim(), r#"{"ids":[19556,28,905,17]}"#);
    let (ok, out, _) = s4c(&["info"]);
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["parameters"], 134_515_008);
    assert_eq!(v["chat_template"], "ChatMl (the model's Jinja template)");
}

#[test]
fn bad_input_gives_clear_errors_not_panics() {
    let cases: &[(&[&str], &str)] = &[
        (
            &["generate", "--prompt", "hi", "--max-new-tokens", "0"],
            "--max-new-tokens must be at least 1",
        ),
        (
            &["generate", "--prompt", "hi", "--model", "/nonexistent.gguf"],
            "not found",
        ),
        (
            &["generate", "--prompt", "hi", "--backend", "tpu"],
            "invalid value 'tpu'",
        ),
        (
            &["generate", "--prompt", "hi", "--dtype", "f8"],
            "invalid value 'f8'",
        ),
        (
            &["generate", "--prompt", "hi", "--temperature=-1"],
            "temperature",
        ),
        (
            &["generate", "--prompt", "hi", "--chat", "--template", "nope"],
            "unknown chat template",
        ),
        (
            &["generate", "--prompt-file", "/nonexistent.txt"],
            "nonexistent.txt",
        ),
        (&["info", "--model", "Cargo.toml"], "wrong magic"),
        (
            &[
                "generate",
                "--prompt",
                "hi",
                "--tree",
                "static",
                "--tree-depth",
                "0",
            ],
            "--tree-depth must be at least 1",
        ),
        (
            &[
                "generate",
                "--prompt",
                "hi",
                "--tree-depth",
                "0",
                "--lookup",
                "0",
            ],
            "--tree-depth must be at least 1",
        ),
    ];
    for (args, want) in cases {
        let (ok, _, err) = s4c(args);
        assert!(!ok, "{args:?} should fail");
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
    // A prompt longer than the context.
    let long = "word ".repeat(300);
    let (ok, _, err) = s4c(&["generate", "--prompt", &long, "--context", "128"]);
    assert!(!ok);
    assert!(err.contains("shorten the prompt"), "{err}");
    #[cfg(not(feature = "wgpu"))]
    {
        let (ok, _, err) = s4c(&["generate", "--prompt", "hi", "--backend", "wgpu"]);
        assert!(!ok);
        assert!(err.contains("not compiled"), "{err}");
    }
}

#[test]
fn seeded_sampling_is_reproducible() {
    let args = [
        "generate",
        "--prompt",
        "Once upon a time",
        "--max-new-tokens",
        "12",
        "--temperature",
        "0.8",
        "--top-p",
        "0.9",
        "--seed",
        "7",
        "--json",
    ];
    let (ok1, a, e) = s4c(&args);
    let (ok2, b, _) = s4c(&args);
    assert!(ok1 && ok2, "{e}");
    let (a, b): (Value, Value) = (
        serde_json::from_str(&a).unwrap(),
        serde_json::from_str(&b).unwrap(),
    );
    assert_eq!(a["new_ids"], b["new_ids"]);
}

const HEADS: &str = "assets/SmolLM2-135M-Instruct.heads.safetensors";

/// Greedy S4C with the shipped heads reproduces the reference greedy continuations (HF
/// transformers), up to the first near-tie of the reference's top-2 logits.
#[test]
fn s4c_mode_reproduces_the_reference_greedy_continuations() {
    for i in 0..6 {
        let case = golden_case(i);
        let want: Vec<u64> = case["greedy_new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        let margins: Vec<f64> = case["greedy_top2_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        let clear = margins
            .iter()
            .take_while(|&&m| m > 0.02)
            .count()
            .min(want.len());
        if clear == 0 {
            continue;
        }
        let n = clear.to_string();
        let mut args = vec![
            "generate",
            "--dtype",
            "f32",
            "--mode",
            "s4c",
            "--heads",
            HEADS,
            "--tree",
            "static",
            "--tree-nodes",
            "12",
            "--prompt",
            case["text"].as_str().unwrap(),
            "--max-new-tokens",
            &n,
            "--ignore-eos",
            "--json",
        ];
        if case["kind"] == "chat" {
            args.push("--chat");
        }
        let (ok, out, err) = s4c(&args);
        assert!(ok, "{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["mode"], "s4c");
        let got: Vec<u64> = v["new_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect();
        assert_eq!(got, want[..clear].to_vec(), "case {i}");
        assert!(v["tau"].as_f64().unwrap() >= 1.0);
        assert!(v["stats"]["verify_s"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn s4c_is_the_default_mode_with_heads_and_compare_reports_the_speedup() {
    let (ok, out, err) = s4c(&[
        "generate",
        "--chat",
        "--prompt",
        "Name three colors.",
        "--max-new-tokens",
        "16",
        "--tree",
        "static",
        "--tree-nodes",
        "8",
        "--compare",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "s4c");
    assert_eq!(v["compare"]["same_output"], true);
    assert!(v["compare"]["divergence"].is_null());
    assert!(v["compare"]["speedup"].as_f64().unwrap() > 0.0);
}

/// A model no heads were trained for (the default model under another name): `--mode s4c` still
/// verifies chains copied from the context, with output equal to plain decoding.
#[test]
fn without_heads_s4c_mode_uses_context_lookup_alone() {
    let dir = std::env::temp_dir().join(format!("s4c-cli-noheads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let model = dir.join("unheaded.gguf");
    let _ = std::fs::remove_file(&model);
    std::os::unix::fs::symlink(
        repo().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        &model,
    )
    .unwrap();
    let m = model.to_str().unwrap();
    let prompt = "List the days of the week, then list them again in the same order.";
    let base = [
        "generate",
        "--model",
        m,
        "--chat",
        "--prompt",
        prompt,
        "--max-new-tokens",
        "48",
    ];
    // Without --mode: plain (no heads found).
    let (ok, out, err) = s4c(&[&base[..], &["--json"]].concat());
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "plain");
    // --mode s4c: lookup alone (`--tree static`: whole chains, no latency curve to measure).
    let args = [
        &base[..],
        &["--mode", "s4c", "--tree", "static", "--compare", "--json"],
    ]
    .concat();
    let (ok, out, err) = s4c(&args);
    assert!(ok, "{err}");
    assert!(err.contains("context lookup alone"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "s4c");
    assert!(v["heads"].is_null());
    assert_eq!(v["tree"]["depth"], 0);
    assert_eq!(v["compare"]["same_output"], true);
    let copied = v["stats"]["lookup_accepted"].as_u64().unwrap();
    assert!(copied > 0, "the days repeat: {}", v["text"]);
    assert!(v["tau"].as_f64().unwrap() > 1.0);
    // Nothing to verify at all is an error that says what to do.
    let args = [&base[..], &["--mode", "s4c", "--lookup", "0"]].concat();
    let (ok, _, err) = s4c(&args);
    assert!(!ok);
    assert!(
        err.contains("no draft heads") && err.contains("--mode plain"),
        "{err}"
    );
    // The benchmark runs such a model too.
    let q = dir.join("q.jsonl");
    std::fs::write(
        &q,
        format!("{{\"question_id\": 1, \"turns\": [\"{prompt}\"]}}\n"),
    )
    .unwrap();
    let out = dir.join("bench.json");
    let (ok, _, err) = s4c(&[
        "bench",
        "--model",
        m,
        "--questions",
        q.to_str().unwrap(),
        "--max-new-tokens",
        "24",
        "--tree",
        "static",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(v["heads"].is_null());
    assert_eq!(v["tree"]["depth"], 0);
    assert_eq!(v["overall"]["greedy_match"].as_f64().unwrap(), 1.0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn heads_for_another_model_are_refused() {
    let dir = std::env::temp_dir().join(format!("s4c-cli-heads-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = repo().join(HEADS);
    let dst = dir.join("h.safetensors");
    std::fs::copy(&src, &dst).unwrap();
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(src.with_extension("json")).unwrap())
            .unwrap();
    cfg["target"]["lm_head_probe"][0] = Value::from(123.0);
    std::fs::write(dst.with_extension("json"), cfg.to_string()).unwrap();
    let (ok, _, err) = s4c(&[
        "generate",
        "--mode",
        "s4c",
        "--heads",
        dst.to_str().unwrap(),
        "--prompt",
        "Hi",
        "--max-new-tokens",
        "4",
    ]);
    assert!(!ok);
    assert!(err.contains("trained for another model"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn bench_writes_json_markdown_and_chart() {
    let dir = std::env::temp_dir().join(format!("s4c-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let q = dir.join("q.jsonl");
    std::fs::write(
        &q,
        "{\"question_id\": 1, \"turns\": [\"Name a fruit.\", \"And a vegetable?\"], \"task\": \"mt_bench\"}\n\
         {\"question_id\": 2, \"turns\": [\"What is 2+2?\"], \"task\": \"math_reasoning\"}\n",
    )
    .unwrap();
    let out = dir.join("bench.json");
    let (ok, stdout, err) = s4c(&[
        "bench",
        "--questions",
        q.to_str().unwrap(),
        "--max-new-tokens",
        "12",
        "--tree",
        "static",
        "--tree-nodes",
        "8",
        "--warmup",
        "1",
        "--json",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| **overall** |"));
    // The warm-up runs before measuring and is not counted as a question.
    assert!(err.contains("warm-up: 1 × 2 runs"), "{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for part in [
        &v["tasks"]["mt_bench"],
        &v["tasks"]["math_reasoning"],
        &v["overall"],
    ] {
        for key in ["plain_tok_s", "s4c_tok_s", "speedup", "tau"] {
            assert!(part[key].as_f64().unwrap() > 0.0, "{key}");
        }
        assert_eq!(part["greedy_match"].as_f64().unwrap(), 1.0);
    }
    assert_eq!(v["tasks"]["mt_bench"]["turns"], 2);
    assert_eq!(v["overall"]["questions"], 2);
    assert_eq!(v["warmup"], 1);
    // Context lookup is on by default; `copied` is the share of new tokens it supplied.
    assert_eq!(v["tree"]["lookup"], 16);
    let turns: Vec<&Value> = v["questions"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|q| q["turns"].as_array().unwrap())
        .collect();
    // Every turn matched, so none records a divergence (it is filled only on a mismatch).
    assert!(turns
        .iter()
        .all(|t| t["same"] == true && t["divergence"].is_null()));
    let copied: u64 = turns
        .iter()
        .map(|t| t["stats"]["lookup_accepted"].as_u64().unwrap())
        .sum();
    let tokens: u64 = turns
        .iter()
        .map(|t| t["s4c_new_tokens"].as_u64().unwrap())
        .sum();
    let share = v["overall"]["copied"].as_f64().unwrap();
    assert!(
        (share - copied as f64 / tokens as f64).abs() < 1e-9,
        "{share}"
    );
    // Decode figures: the tokens after the prefill's first over the seconds after the prefill,
    // from the turn's own timings; the summary's ratio and prefill share from those.
    let f = |t: &Value, k: &str| t[k].as_f64().unwrap();
    let (mut plain_decode, mut s4c_decode, mut prefill_s, mut wall_s) = (0.0, 0.0, 0.0, 0.0);
    for t in &turns {
        for mode in ["plain", "s4c"] {
            let (wall, prefill) = (
                f(t, &format!("{mode}_s")),
                f(t, &format!("{mode}_prefill_s")),
            );
            let n = t[format!("{mode}_new_tokens")].as_u64().unwrap() as f64;
            assert!(0.0 < prefill && prefill < wall, "{t}");
            let decode = f(t, &format!("{mode}_decode_tok_s"));
            assert!(
                (decode - (n - 1.0) / (wall - prefill)).abs() < 1e-6 * decode,
                "{t}"
            );
            assert!((f(t, &format!("{mode}_tok_s")) - n / wall).abs() < 1e-6 * n / wall);
        }
        plain_decode += f(t, "plain_decode_tok_s") / turns.len() as f64;
        s4c_decode += f(t, "s4c_decode_tok_s") / turns.len() as f64;
        prefill_s += f(t, "plain_prefill_s");
        wall_s += f(t, "plain_s");
    }
    let o = &v["overall"];
    assert!((f(o, "plain_decode_tok_s") - plain_decode).abs() < 1e-6 * plain_decode);
    assert!((f(o, "decode_speedup") - s4c_decode / plain_decode).abs() < 1e-6);
    assert!((f(o, "prefill_share") - prefill_s / wall_s).abs() < 1e-9);
    assert!(v["machine"]["cpu"].is_string());
    assert!(std::fs::read_to_string(out.with_extension("svg"))
        .unwrap()
        .starts_with("<svg"));
    assert!(std::fs::read_to_string(out.with_extension("md"))
        .unwrap()
        .contains("speedup"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn training_on_the_benchmark_is_refused() {
    let (ok, _, err) = s4c(&[
        "train-heads",
        "--prompts",
        "data/specbench-dev.jsonl",
        "--data-only",
    ]);
    assert!(!ok);
    assert!(err.contains("Spec-Bench"), "{err}");
}

#[test]
fn bad_sampling_options_are_refused() {
    let dir = std::env::temp_dir().join(format!("s4c-samples-{}", std::process::id()));
    let refused = |option: &[&str], says: &str| {
        let mut args = vec![
            "train-heads",
            "--prompts",
            "data/train-prompts.jsonl",
            "--limit-prompts",
            "1",
            "--data-dir",
            dir.to_str().unwrap(),
            "--data-only",
        ];
        args.extend(option);
        let (ok, _, err) = s4c(&args);
        assert!(!ok && err.contains(says), "{option:?}: {err}");
    };
    refused(&["--samples", "2"], "needs --temperature above 0");
    refused(&["--temperature=-1"], "temperature above 0");
    refused(&["--samples", "0"], "at least 1");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn extra_data_must_exist() {
    let dir = std::env::temp_dir().join(format!("s4c-extra-{}", std::process::id()));
    let missing = dir.join("missing");
    let (ok, _, err) = s4c(&[
        "train-heads",
        "--prompts",
        "data/train-prompts.jsonl",
        "--limit-prompts",
        "1",
        "--answer-tokens",
        "2",
        "--data-dir",
        dir.to_str().unwrap(),
        "--extra-data",
        missing.to_str().unwrap(),
        "--checkpoint-dir",
        dir.join("ckpt").to_str().unwrap(),
        "--out",
        dir.join("h.safetensors").to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("--data-only"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn heads_can_be_evaluated_on_training_sequences_without_touching_their_json() {
    let dir = std::env::temp_dir().join(format!("s4c-evaltrain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let heads = dir.join("h.safetensors");
    let assets = repo().join("assets");
    std::fs::copy(
        assets.join("SmolLM2-135M-Instruct.heads.safetensors"),
        &heads,
    )
    .unwrap();
    std::fs::copy(
        assets.join("SmolLM2-135M-Instruct.heads.json"),
        heads.with_extension("json"),
    )
    .unwrap();
    let json_before = std::fs::read(heads.with_extension("json")).unwrap();
    // Every 20th usable prompt's answer is held out (some of the first 24 are too long to use).
    let heads_cmd = |data: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "train-heads",
            "--prompts",
            "data/train-prompts.jsonl",
            "--limit-prompts",
            "24",
            "--answer-tokens",
            "2",
            "--data-dir",
            data.to_str().unwrap(),
            "--out",
            heads.to_str().unwrap(),
        ];
        args.extend(extra);
        s4c(&args)
    };
    let eval = |extra: &[&str]| {
        let mut args = vec!["--eval-only"];
        args.extend(extra);
        let (ok, out, err) = heads_cmd(&dir, &args);
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    let training = eval(&["--eval-training"]);
    assert_eq!(training["evaluated_on"], "training");
    assert!(
        training["held_out_all_positions"]["examples"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        std::fs::read(heads.with_extension("json")).unwrap(),
        json_before,
        "evaluating on training sequences must not record their acceptance statistics"
    );
    let held = eval(&[]);
    assert_eq!(held["evaluated_on"], "held_out");
    assert!(held["held_out_sequences"].as_u64().unwrap() >= 1);
    assert_eq!(training["held_out_sequences"], held["held_out_sequences"]);
    assert_ne!(
        std::fs::read(heads.with_extension("json")).unwrap(),
        json_before,
        "the held-out evaluation records its acceptance statistics"
    );
    // The held-out prompts' data alone (--held-out-only) gives the same held-out report.
    let held_dir = dir.join("held");
    let held_only = |mode: &str| heads_cmd(&held_dir, &["--held-out-only", mode]);
    let (ok, _, err) = held_only("--data-only");
    assert!(ok, "{err}");
    let (ok, out, err) = held_only("--eval-only");
    assert!(ok, "{err}");
    let alone: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(alone["held_out_sequences"], held["held_out_sequences"]);
    for key in ["examples", "top1", "tau_chain"] {
        assert_eq!(alone["held_out"][key], held["held_out"][key], "{key}");
    }
    // Training on the held-out prompts alone is refused.
    let (ok, _, err) = held_only("--lr=1e-3");
    assert!(!ok && err.contains("--data-only or --eval-only"), "{err}");
    // --eval-training alone (no --eval-only) is refused.
    let (ok, _, err) = s4c(&[
        "train-heads",
        "--prompts",
        "data/train-prompts.jsonl",
        "--eval-training",
    ]);
    assert!(!ok && err.contains("--eval-only"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn training_can_start_from_the_shipped_heads() {
    let dir = std::env::temp_dir().join(format!("s4c-init-{}", std::process::id()));
    let shipped = repo()
        .join("assets")
        .join("SmolLM2-135M-Instruct.heads.safetensors");
    let out = dir.join("tuned.safetensors");
    let train = |init: &str| {
        s4c(&[
            "train-heads",
            "--prompts",
            "data/train-prompts.jsonl",
            "--limit-prompts",
            "8",
            "--answer-tokens",
            "2",
            "--data-dir",
            dir.to_str().unwrap(),
            "--checkpoint-dir",
            dir.join("ckpt").to_str().unwrap(),
            "--epochs",
            "1",
            "--init",
            init,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let (ok, _, err) = train(shipped.to_str().unwrap());
    assert!(ok, "{err}");
    assert!(err.contains("starting from"), "{err}");
    // The shape and vocabulary are the shipped heads' (the defaults would be 1 layer, full vocabulary).
    let tuned: Value =
        serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap())
            .unwrap();
    let base: Value =
        serde_json::from_str(&std::fs::read_to_string(shipped.with_extension("json")).unwrap())
            .unwrap();
    for key in [
        "heads",
        "layers",
        "inner",
        "window",
        "draft_vocab",
        "coherence",
        "copy",
    ] {
        assert_eq!(tuned[key], base[key], "{key}");
    }
    assert_ne!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&shipped).unwrap(),
        "fine-tuning changes the weights"
    );
    let (ok, _, err) = train(dir.join("missing.safetensors").to_str().unwrap());
    assert!(!ok && err.contains("missing"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn context_copy_is_added_to_heads_made_without_it() {
    let dir = std::env::temp_dir().join(format!("s4c-copy-{}", std::process::id()));
    let heads = |name: &str| dir.join(format!("{name}.safetensors"));
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train-heads",
            "--prompts",
            "data/train-prompts.jsonl",
            "--limit-prompts",
            "8",
            "--answer-tokens",
            "2",
            "--heads",
            "1",
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        args.extend(extra);
        s4c(&args)
    };
    let config = |name: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(heads(name).with_extension("json")).unwrap())
            .unwrap()
    };
    let ckpt = dir.join("ckpt");
    let (ok, _, err) = train(&[
        "--copy",
        "0",
        "--epochs",
        "1",
        "--checkpoint-dir",
        ckpt.to_str().unwrap(),
        "--out",
        heads("plain").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(config("plain")["copy"], 0);
    // No step: the same heads with fresh copy layers, evaluated.
    let (ok, out, err) = train(&[
        "--epochs",
        "0",
        "--init",
        heads("plain").to_str().unwrap(),
        "--copy",
        "3",
        "--checkpoint-dir",
        dir.join("ckpt0").to_str().unwrap(),
        "--out",
        heads("copying").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(config("copying")["copy"], 3);
    // The report of the run (8 prompts hold none out, so its evaluation is empty).
    let report: Value = serde_json::from_str(&out).unwrap();
    assert!(report["train_positions"].as_u64().unwrap() > 0, "{out}");
    assert!(report["held_out"].is_object(), "{out}");
    // The copy layer [hidden, 3] and its bias, f32, are the only new tensors.
    let size = |name: &str| std::fs::metadata(heads(name)).unwrap().len();
    let hidden = config("plain")["hidden"].as_u64().unwrap();
    assert!(size("copying") >= size("plain") + (hidden + 1) * 3 * 4);
    // 0 epochs without heads to start from, and copy layers alone without copy, are refused.
    let (ok, _, err) = train(&["--epochs", "0", "--out", heads("x").to_str().unwrap()]);
    assert!(!ok && err.contains("0 epochs only with heads"), "{err}");
    let (ok, _, err) = train(&[
        "--copy",
        "0",
        "--only-copy",
        "--checkpoint-dir",
        dir.join("ckpt1").to_str().unwrap(),
        "--out",
        heads("x").to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("needs heads with context copy"),
        "{err}"
    );
    let (ok, _, err) = train(&["--copy", "9", "--out", heads("x").to_str().unwrap()]);
    assert!(!ok && err.contains("copy"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_model_writes_distinct_training_prompts() {
    let dir = std::env::temp_dir().join(format!("s4c-synth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("prompts.jsonl");
    let synth = |extra: &[&str]| {
        let mut args = vec![
            "synth-prompts",
            "--count",
            "3",
            "--max-tokens",
            "48",
            "--seed",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        s4c(&args)
    };
    let (ok, _, err) = synth(&[]);
    assert!(ok, "{err}");
    let text = std::fs::read_to_string(&out).unwrap();
    let prompts: Vec<String> = text
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            v["prompt"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(prompts.len(), 3, "{text}");
    for p in &prompts {
        assert!(p.split_whitespace().count() >= 4 && p.trim() == p, "{p:?}");
        assert!(!p.contains("<|im_"), "a special token in {p:?}");
    }
    assert!(prompts[0] != prompts[1] && prompts[1] != prompts[2] && prompts[0] != prompts[2]);
    // Same seed, same prompts; they are train-heads' input.
    let (ok, _, err) = synth(&[]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), text);
    // --exclude: the same seed, but none of the first file's prompts again.
    let (ok, _, err) = s4c(&[
        "synth-prompts",
        "--count",
        "2",
        "--max-tokens",
        "48",
        "--seed",
        "1",
        "--exclude",
        out.to_str().unwrap(),
        "--out",
        dir.join("more.jsonl").to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let more = std::fs::read_to_string(dir.join("more.jsonl")).unwrap();
    assert_eq!(more.lines().count(), 2, "{more}");
    assert!(more.lines().all(|l| !text.contains(l)), "{more}");
    let (ok, _, err) = synth(&["--temperature", "0"]);
    assert!(
        !ok && err.contains("--temperature must be above 0"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
