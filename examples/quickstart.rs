//! The default engine on the default model: an answer streamed with S4C, then the same answer
//! with plain decoding, and the speedup.
//!
//! ```sh
//! ./scripts/fetch-default-model.sh
//! cargo run --release --example quickstart -- "Why is the sky blue?"
//! ```

use std::io::Write;
use std::ops::ControlFlow;

use s4c::{EngineBuilder, Mode, Request};
use s4c_models::Message;

fn main() -> Result<(), s4c::EngineError> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or("Why is the sky blue?".into());
    // The model, the heads shipped for it (assets/), the cost-aware tree, its chat template.
    let engine = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .build::<burn::backend::Flex>(&Default::default())?;
    let request = Request::chat(vec![Message::new("user", &question)]).max_new_tokens(128);
    let s4c = engine.generate(&request, &mut |piece| {
        print!("{piece}");
        let _ = std::io::stdout().flush();
        ControlFlow::Continue(())
    })?;
    let plain = engine.generate(&request.clone().mode(Mode::Plain), &mut |_| {
        ControlFlow::Continue(())
    })?;
    let (s, p) = (
        s4c.timings.tokens_per_second,
        plain.timings.tokens_per_second,
    );
    println!(
        "\n\nS4C {s:.1} tok/s (τ {:.2}), plain {p:.1} tok/s: {:.2}× — same answer: {}",
        s4c.timings.tau,
        s / p,
        s4c.new_ids == plain.new_ids
    );
    Ok(())
}
