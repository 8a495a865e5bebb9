//! The verify-latency curve of the default model on flex: one forward of a chain-masked block
//! of `n` tokens after 128 cached ones (all logits, argmax read back), median of 7, on the CPU
//! engine with the file's own weights (Q4_1/Q8_0), f16 and f32 weights, and on the tensor engine
//! (Burn's operations) with f32 weights. `S4C_THREADS` sets the CPU engine's threads.
//!
//! ```sh
//! cargo run --release -p s4c-models --example verify_latency
//! ```

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::DType;
use s4c_models::{load, AttentionMask, CausalLm, EngineKind, Input, LoadOptions, Logits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let threads = std::env::var("S4C_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    println!("| n | cpu native | cpu f16 | cpu f32 | tensors f32 |");
    println!("|---:|---:|---:|---:|---:|");
    let sizes = [1usize, 2, 4, 8, 12, 16, 24, 32, 48, 64];
    let mut table = vec![Vec::new(); sizes.len()];
    for (engine, dtype) in [
        (EngineKind::Cpu, None),
        (EngineKind::Cpu, Some(DType::F16)),
        (EngineKind::Cpu, Some(DType::F32)),
        (EngineKind::Tensors, Some(DType::F32)),
    ] {
        let opts = LoadOptions {
            engine,
            dtype,
            threads,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ..Default::default()
        };
        let m = load::<Flex>(path.as_ref(), &Default::default(), &opts)?;
        let prefix: Vec<u32> = (0..128).map(|i| 100 + i).collect();
        let mut cache = m.model.new_cache(256);
        m.model
            .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)?;
        for (row, &n) in sizes.iter().enumerate() {
            let toks: Vec<u32> = (0..n as u32).map(|i| 500 + i).collect();
            let mask = AttentionMask::causal(128, n);
            let mut times = vec![];
            for _ in 0..8 {
                let t = Instant::now();
                let input = Input::tree(&toks, (128..128 + n).collect(), &mask);
                let out = m.model.forward(&input, &mut cache)?;
                let _ = out.logits.argmax(1).into_data();
                cache.truncate(128);
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
            times.remove(0);
            times.sort_by(f64::total_cmp);
            table[row].push(times[times.len() / 2]);
        }
    }
    for (n, t) in sizes.iter().zip(table) {
        let cells: Vec<String> = t.iter().map(|ms| format!("{ms:.1} ms")).collect();
        println!("| {n} | {} |", cells.join(" | "));
    }
    Ok(())
}
