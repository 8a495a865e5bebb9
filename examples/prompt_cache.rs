//! A chat about a long document, turn after turn, answered twice per turn on the default model:
//! by [`Engine::generate`] (the whole prompt prefilled) and through [`Engine::generate_batch`]
//! with a prompt cache (what `s4c serve` runs), which reuses the keys and values of the
//! conversation so far and prefills only the new tokens. Prints each turn's prompt, the tokens
//! reused, both prefill times and whether the answers are the same.
//!
//! ```sh
//! ./scripts/fetch-default-model.sh
//! cargo run --release --example prompt_cache
//! ```
//!
//! The document is the first summarization question of `data/specbench-dev-heldout.jsonl`.

use std::ops::ControlFlow;
use std::sync::{mpsc, Arc, Mutex};

use burn::backend::Flex;
use s4c::{BatchJob, Completion, Engine, EngineBuilder, EngineError, Request};
use s4c_models::Message;

/// Answers `request` through the batch path (the prompt cache's), alone.
fn cached(engine: &Engine<Flex>, request: Request) -> Result<Completion, EngineError> {
    let (tx, rx) = mpsc::channel();
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let job = BatchJob {
        request,
        on_text: Box::new(move |piece| {
            sink.lock().unwrap().push_str(piece);
            ControlFlow::Continue(())
        }),
        done: Box::new(move |c| {
            let _ = tx.send(c);
        }),
    };
    engine.generate_batch(vec![job], 1, &mut |_| vec![]);
    rx.recv()
        .map_err(|_| EngineError::InvalidOption("the batch gave no answer".into()))?
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let questions = std::fs::read_to_string("data/specbench-dev-heldout.jsonl")?;
    let document = questions
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|q| q["category"] == "summarization")
        .and_then(|q| q["turns"][0].as_str().map(str::to_string))
        .ok_or("no summarization question in data/specbench-dev-heldout.jsonl")?;
    let engine = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .prompt_cache(4)
        .build::<Flex>(&Default::default())?;
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
        let whole = engine.generate(&request, &mut |_| ControlFlow::Continue(()))?;
        let reused = cached(&engine, request)?;
        println!(
            "| {} | {} | {} | {:.0} ms | {:.0} ms | {} |",
            i + 1,
            reused.timings.prompt_n,
            reused.timings.cache_n,
            whole.timings.prompt_ms,
            reused.timings.prompt_ms,
            whole.new_ids == reused.new_ids,
        );
        messages.push(Message::new("assistant", &reused.text));
    }
    Ok(())
}
