//! S4C generation on any GPU through Burn's `wgpu` backend (Vulkan, Metal, DX12; lavapipe on CPU-only machines) — copy this to start.
//!
//! ```sh
//! ./scripts/fetch-default-model.sh
//! cargo run --release -p s4c --features wgpu --example generate_wgpu -- "Why is the sky blue?"
//! ```

use std::ops::ControlFlow;

use s4c::{EngineBuilder, Request};
use s4c_models::{LoadOptions, Message};

type B = burn::backend::Wgpu;

fn main() -> Result<(), s4c::EngineError> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Why is the sky blue?".into());
    // The model, the heads found for it, the cost-aware tree (its latency curve is measured on
    // this device once and cached), and the model's chat template.
    let options = LoadOptions::default();
    let engine = EngineBuilder::new("models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .load_options(options)
        .build::<B>(&Default::default())?;
    // Greedy: the answer equals plain greedy decoding, token for token.
    let request = Request::chat(vec![Message::new("user", &question)]).max_new_tokens(128);
    let answer = engine.generate(&request, &mut |piece| {
        print!("{piece}");
        ControlFlow::Continue(())
    })?;
    let t = &answer.timings;
    println!(
        "\n[{} tokens, {:.1} tok/s, τ {:.2}, {} drafted / {} accepted, {}]",
        t.predicted_n,
        t.tokens_per_second,
        t.tau,
        t.draft_n,
        t.draft_n_accepted,
        engine.info().backend
    );
    Ok(())
}
