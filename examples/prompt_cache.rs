//! A chat about a long document, turn after turn, answered by two engines on the default model:
//! one that prefills every prompt whole, and one with a prompt cache (as `s4c serve` runs), which
//! reuses the keys and values of the conversation so far and prefills only the new tokens.
//! Prints each turn's prompt, the tokens reused, both prefill times and whether the answers are
//! the same.
//!
//! ```sh
//! ./scripts/fetch-default-model.sh
//! cargo run --release --example prompt_cache
//! ```
//!
//! The document is the first summarization question of `data/specbench-dev-heldout.jsonl`.

use std::ops::ControlFlow;

use burn::backend::Flex;
use s4c::{EngineBuilder, Request};
use s4c_models::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let questions = std::fs::read_to_string("data/specbench-dev-heldout.jsonl")?;
    let document = questions
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|q| q["category"] == "summarization")
        .and_then(|q| q["turns"][0].as_str().map(str::to_string))
        .ok_or("no summarization question in data/specbench-dev-heldout.jsonl")?;
    let builder = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let whole = builder.build::<Flex>(&Default::default())?;
    let cached = builder.prompt_cache(4).build::<Flex>(&Default::default())?;
    let turns = [
        document.as_str(),
        "Give it a short title.",
        "Who is mentioned first?",
        "Say it again in one sentence.",
    ];
    println!("| turn | prompt tokens | reused | prefill, whole | prefill, cached | same answer |");
    println!("|---:|---:|---:|---:|---:|---|");
    let mut messages = vec![];
    for (i, turn) in turns.iter().enumerate() {
        messages.push(Message::new("user", turn));
        let request = Request::chat(messages.clone()).max_new_tokens(64);
        let a = whole.generate(&request, &mut |_| ControlFlow::Continue(()))?;
        let b = cached.generate(&request, &mut |_| ControlFlow::Continue(()))?;
        println!(
            "| {} | {} | {} | {:.0} ms | {:.0} ms | {} |",
            i + 1,
            b.timings.prompt_n,
            b.timings.cache_n,
            a.timings.prompt_ms,
            b.timings.prompt_ms,
            if a.new_ids == b.new_ids { "yes" } else { "no" },
        );
        messages.push(Message::new("assistant", &b.text));
    }
    Ok(())
}
