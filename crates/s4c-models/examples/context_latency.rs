//! The cost of one decode step as the context grows: a 1-token forward (last logits, argmax
//! read back) after 32…1,536 cached tokens, median of 15, default model on flex, f32 weights
//! with the host kernel (the CLI's default).
//!
//! ```sh
//! cargo run --release -p s4c-models --example context_latency
//! ```

use std::time::Instant;

use burn::backend::Flex;
use burn::tensor::DType;
use s4c_models::{load, CausalLm, Input, LoadOptions, Logits};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let opts = LoadOptions {
        dtype: DType::F32,
        shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
        host_matmul: true,
        ..Default::default()
    };
    let m = load::<Flex>(path.as_ref(), &Default::default(), &opts)?;
    println!("| cached tokens | decode step |");
    println!("|---:|---:|");
    for len in [32usize, 256, 512, 1024, 1536] {
        let prefix: Vec<u32> = (0..len as u32).map(|i| 100 + i % 1000).collect();
        // Room beyond the context, as a generation's cache has.
        let mut cache = m.model.new_cache(len + 300);
        m.model
            .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)?;
        let mut times = Vec::new();
        for _ in 0..15 {
            let t = Instant::now();
            let out = m
                .model
                .forward(&Input::causal(&[500], len, Logits::Last), &mut cache)?;
            let _ = out.logits.argmax(1).into_data();
            cache.truncate(len);
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        println!("| {len} | {:.0} ms |", times[times.len() / 2]);
    }
    Ok(())
}
