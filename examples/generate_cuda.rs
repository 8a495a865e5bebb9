//! S4C generation on NVIDIA GPUs through Burn's `cuda` backend (f16 weights and activations) — copy this to start.
//!
//! ```sh
//! ./scripts/fetch-default-model.sh
//! cargo run --release -p s4c --features cuda --example generate_cuda -- "Why is the sky blue?"
//! ```

use burn::backend::Cuda;
use burn::tensor::backend::Backend;
use burn::tensor::DType;
use s4c::plain::GenerateOptions;
use s4c::speculative::{SpeculativeGenerator, TreeShape};
use s4c_models::{load, CausalLm, LoadOptions, Message};
use s4c_tree::{ContextLookup, Template};
use s4c_verify::GreedyAcceptor;
use std::ops::ControlFlow;

fn run<B: Backend>(
    device: &B::Device,
    options: &LoadOptions,
) -> Result<(), Box<dyn std::error::Error>> {
    let question = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "Why is the sky blue?".into());
    // 1. The target model and the draft heads trained for it.
    let m = load::<B>(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf".as_ref(),
        device,
        options,
    )?;
    let heads = "assets/SmolLM2-135M-Instruct.heads.safetensors";
    let drafter = s4c_draft::io::load::<B, _>(heads.as_ref(), &m.model)?;
    // 2. The prompt in the model's chat template.
    let template = m.template.clone().ok_or("the model has no chat template")?;
    let prompt = m
        .tokenizer
        .encode(&template.render(&[Message::new("user", &question)]))?;
    // 3. Greedy S4C: the output equals plain greedy decoding, token for token. Context lookup
    //    adds up to 16 tokens copied from earlier in the prompt or answer as one more branch.
    let tree = TreeShape::Static(Template::mc_sim_7b_63());
    let mut generator = SpeculativeGenerator::new(&m.model, &drafter, GreedyAcceptor, tree)?
        .with_lookup(Some(ContextLookup::new(1, 8, 16)));
    let opts = GenerateOptions {
        max_new_tokens: 128,
        stop_tokens: s4c::stop_tokens(&m),
        ..Default::default()
    };
    let out = generator.generate(&prompt, &opts, m.model.max_positions(), &mut |_| {
        ControlFlow::Continue(())
    })?;
    println!("{}", m.tokenizer.decode(&out.new_ids, true)?);
    println!(
        "[{} tokens, {:.1} tok/s, τ {:.2}, backend {}]",
        out.new_ids.len(),
        out.tokens_per_second(),
        out.stats.tau,
        B::name(device)
    );
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = LoadOptions {
        shards: 1,
        dtype: DType::F16,
        compute_dtype: DType::F16,
        ..Default::default()
    };
    run::<Cuda>(&Default::default(), &options)
}
