//! Prefill time of the default model on flex for prompts of 256 and 1,024 tokens: the tensor
//! engine (one pass of Burn's operations over the whole prompt, f32 weights) against the CPU
//! engine (the file's own weights, blocks of 64 tokens). Median of 3, the two alternating.
//!
//! ```sh
//! cargo run --release -p s4c-models --example prefill_latency
//! ```

use std::time::Instant;

use burn::backend::Flex;
use s4c_models::{load, CausalLm, EngineKind, Input, LoadOptions, Logits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let shards = std::thread::available_parallelism().map_or(1, |n| n.get());
    let models = [EngineKind::Tensors, EngineKind::Cpu].map(|engine| {
        let opts = LoadOptions {
            engine,
            shards,
            ..Default::default()
        };
        load::<Flex>(path.as_ref(), &Default::default(), &opts)
    });
    let [backend, host] = models;
    let (backend, host) = (backend?, host?);
    println!("| prompt tokens | tensor engine f32, one pass | cpu engine native, blocks of 64 |");
    println!("|---:|---:|---:|");
    for len in [256usize, 1024] {
        let prompt: Vec<u32> = (0..len as u32).map(|i| 100 + (i * 7) % 5000).collect();
        let mut times = [vec![], vec![]];
        for _ in 0..3 {
            for (m, t) in [&backend, &host].iter().zip(times.iter_mut()) {
                let mut cache = m.model.new_cache(len);
                let start = Instant::now();
                let out = m
                    .model
                    .forward(&Input::causal(&prompt, 0, Logits::Last), &mut cache)?;
                let _ = out.logits.argmax(1).into_data();
                t.push(start.elapsed().as_secs_f64());
            }
        }
        let [a, b] = times.map(|mut t| {
            t.sort_by(f64::total_cmp);
            t[1]
        });
        println!("| {len} | {a:.2} s | {b:.2} s |");
    }
    Ok(())
}
