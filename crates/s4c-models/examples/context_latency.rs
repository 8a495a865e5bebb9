//! What a step costs as the context grows: a 1-token decode step (last logits) and
//! verification blocks of 2, 4, 8 and 16 chain-masked tokens (all logits) after 32…1,536 cached
//! tokens, argmax read back, medians of 15 with the sizes interleaved (so drift hits them
//! alike); default model on flex, the CPU engine with the file's own weights (the CLI's default).
//!
//! ```sh
//! cargo run --release -p s4c-models --example context_latency
//! ```

use std::time::Instant;

use burn::backend::Flex;
use s4c_models::{load, AttentionMask, CausalLm, Input, LoadOptions, Logits};

/// Tokens per step: a plain decode step, then verification blocks.
const SIZES: [usize; 5] = [1, 2, 4, 8, 16];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let opts = LoadOptions::default();
    let m = load::<Flex>(path.as_ref(), &Default::default(), &opts)?;
    println!("| cached tokens | decode step | 2 tokens | 4 tokens | 8 tokens | 16 tokens |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for len in [32usize, 256, 512, 1024, 1536] {
        let prefix: Vec<u32> = (0..len as u32).map(|i| 100 + i % 1000).collect();
        // Room beyond the context, as a generation's cache has.
        let mut cache = m.model.new_cache(len + 300);
        m.model
            .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)?;
        let mut times = vec![Vec::new(); SIZES.len()];
        for _ in 0..15 {
            for (n, t) in SIZES.iter().zip(times.iter_mut()) {
                let toks: Vec<u32> = (0..*n as u32).map(|i| 500 + i).collect();
                let mask = AttentionMask::causal(len, *n);
                let start = Instant::now();
                let out = if *n == 1 {
                    m.model
                        .forward(&Input::causal(&toks, len, Logits::Last), &mut cache)?
                } else {
                    let positions = (len..len + n).collect();
                    m.model
                        .forward(&Input::tree(&toks, positions, &mask), &mut cache)?
                };
                let _ = out.logits.argmax(1).into_data();
                cache.truncate(len);
                t.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        let medians: Vec<f64> = times
            .iter_mut()
            .map(|t| {
                t.sort_by(f64::total_cmp);
                t[t.len() / 2]
            })
            .collect();
        let blocks: Vec<String> = medians[1..]
            .iter()
            .map(|ms| format!("{ms:.0} ms ({:.2}×)", ms / medians[0]))
            .collect();
        println!("| {len} | {:.0} ms | {} |", medians[0], blocks.join(" | "));
    }
    Ok(())
}
