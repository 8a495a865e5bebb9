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
    let dir = std::env::var("S4C_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| repo().join("../shared"));
    let text = std::fs::read_to_string(dir.join("golden/smollm2-135m-instruct.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["cases"][i].clone()
}

#[test]
fn generate_json_reproduces_the_reference_greedy_answer() {
    // Case 0: "What is the capital of France?" — reference: "The capital of France is Paris.<|im_end|>"
    let case = golden_case(0);
    let (ok, out, err) = s4c(&[
        "generate",
        "--chat",
        "--prompt",
        case["text"].as_str().unwrap(),
        "--max-new-tokens",
        "20",
        "--json",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
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
    assert_eq!(v["chat_template"], "ChatMl");
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
