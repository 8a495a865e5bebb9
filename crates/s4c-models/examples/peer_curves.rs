//! The measurements `llama-bench` makes, made on s4c's default engine, as JSON (for
//! scripts/bench-peers.sh): a prompt of 1, 4, 16 and 64 tokens from an empty cache (last logits,
//! as `llama-bench -p 1,4,16,64 -n 0`), the same blocks verified after 128 cached tokens with all
//! logits (what S4C's trees cost), a prompt of 1,024 tokens (`-p 1024 -n 0`) and a decode step
//! after 1,024 cached tokens (`-p 0 -n 64 -d 1024`). Medians.
//!
//! ```sh
//! cargo run --release -p s4c-models --example peer_curves -- [THREADS] [MODEL]
//! ```

use std::time::Instant;

use burn::backend::Flex;
use s4c_models::{load, AttentionMask, CausalLm, Input, LoadOptions, Logits};
use serde_json::json;

/// Median of `runs` timings of `f`, in milliseconds.
fn median(
    runs: usize,
    mut f: impl FnMut() -> Result<(), Box<dyn std::error::Error>>,
) -> Result<f64, Box<dyn std::error::Error>> {
    let mut t = Vec::with_capacity(runs);
    for _ in 0..runs {
        let s = Instant::now();
        f()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let threads = args.first().and_then(|t| t.parse().ok()).unwrap_or(0);
    let path = args
        .get(1)
        .cloned()
        .unwrap_or("models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let opts = LoadOptions {
        threads,
        ..LoadOptions::default()
    };
    let m = load::<Flex>(path.as_ref(), &Default::default(), &opts)?.model;
    let tokens = |n: usize| -> Vec<u32> { (0..n as u32).map(|i| 100 + (i * 7) % 5000).collect() };
    let mut prompt = serde_json::Map::new();
    let mut verify = serde_json::Map::new();
    for n in [1usize, 4, 16, 64] {
        let toks = tokens(n);
        let ms = median(9, || {
            let mut c = m.new_cache(n);
            let o = m.forward(&Input::causal(&toks, 0, Logits::Last), &mut c)?;
            let _ = o.logits.argmax(1).into_data();
            Ok(())
        })?;
        prompt.insert(n.to_string(), json!(ms));
        let prefix = tokens(128);
        let mut c = m.new_cache(128 + n);
        m.forward(&Input::causal(&prefix, 0, Logits::Last), &mut c)?;
        let mask = AttentionMask::causal(128, n);
        let ms = median(9, || {
            let input = Input::tree(&toks, (128..128 + n).collect(), &mask);
            let o = m.forward(&input, &mut c)?;
            let _ = o.logits.argmax(1).into_data();
            c.truncate(128);
            Ok(())
        })?;
        verify.insert(n.to_string(), json!(ms));
    }
    let long = tokens(1024);
    let mut c = m.new_cache(1100);
    let prefill_ms = median(3, || {
        c.truncate(0);
        let o = m.forward(&Input::causal(&long, 0, Logits::Last), &mut c)?;
        let _ = o.logits.argmax(1).into_data();
        Ok(())
    })?;
    let decode_ms = median(15, || {
        let o = m.forward(&Input::causal(&[300], 1024, Logits::Last), &mut c)?;
        let _ = o.logits.argmax(1).into_data();
        c.truncate(1024);
        Ok(())
    })?;
    let out = json!({
        "engine": m.engine(),
        "weights": m.weight_types(),
        "threads": m.threads().map(|t| t.count()),
        "isa": m.threads().map(|t| t.isa().name()),
        "prompt_ms": prompt,
        "verify_after_128_ms": verify,
        "prefill_1024_ms": prefill_ms,
        "decode_at_1024_ms": decode_ms,
    });
    println!("{out}");
    Ok(())
}
