//! Trains S4C heads for a tiny model in seconds: self-distillation data from the target itself,
//! training with burn autodiff, held-out accuracy, save/load, then speculative generation.
//!
//! The tiny target always continues with `token + 1`, so well-trained heads draft whole
//! branches that the target accepts (τ close to heads + 1).
//!
//! ```sh
//! cargo run --release -p s4c --example train_heads
//! ```

use burn::backend::{Autodiff, Flex};
use s4c::plain::GenerateOptions;
use s4c::speculative::{SpeculativeGenerator, TreeShape};
use s4c_draft::data::{distill, Dataset, DistillOptions};
use s4c_draft::train::{train, TrainOptions};
use s4c_draft::{fingerprint, Coherence, DrafterConfig};
use s4c_models::testing::counting_model;
use s4c_tree::Template;
use s4c_verify::GreedyAcceptor;
use std::ops::ControlFlow;

type B = Flex;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let vocab = 64;
    let target = counting_model::<B>(vocab, 7, &Default::default());

    // 1. Self-distillation: the target answers 120 short prompts (batched greedy decoding).
    let prompts: Vec<Vec<u32>> = (0..120u32)
        .map(|i| vec![(i * 11) % 64, (i * 11 + 1) % 64])
        .collect();
    let options = DistillOptions {
        max_new_tokens: 14,
        batch: 32,
        top_k: 4,
        stop_tokens: vec![],
        sampling: None,
    };
    let sequences = distill(&target, &prompts, &options, &mut |_, _| {})?;
    let data = Dataset {
        hidden: target.config().hidden_size,
        top_k: options.top_k,
        sequences,
    };
    println!(
        "data: {} sequences, {} positions",
        data.sequences.len(),
        data.positions()
    );

    // 2. Train four S4C heads (full coherence) on it.
    let mut config = DrafterConfig::new(fingerprint::<B, _>(&target)?);
    config.inner = 128;
    config.coherence = Coherence::Full;
    let train_options = TrainOptions {
        epochs: 8,
        lr: 1e-2,
        batch_size: 64,
        held_out_every: 10,
        ..Default::default()
    };
    let start = std::time::Instant::now();
    let all: Vec<u32> = (0..vocab as u32).collect();
    let (drafter, eval) =
        train::<Autodiff<B>, _>(&target, &data, config, all, &train_options, &mut |_| {})?;
    println!(
        "trained in {:.1} s; held-out top-1 per head {:?}, expected τ (chain) {:.2}",
        start.elapsed().as_secs_f64(),
        eval.top1
            .iter()
            .map(|a| format!("{a:.2}"))
            .collect::<Vec<_>>(),
        eval.tau_chain
    );

    // 3. Save, load back (the fingerprint is checked), and generate speculatively.
    let path = std::env::temp_dir().join("s4c-tiny-heads.safetensors");
    s4c_draft::io::save(&drafter, &path)?;
    let drafter = s4c_draft::io::load::<B, _>(&path, &target)?;
    let tree = TreeShape::Static(Template::mc_sim_7b_63());
    let mut generator = SpeculativeGenerator::new(&target, &drafter, GreedyAcceptor, tree)?;
    let opts = GenerateOptions {
        max_new_tokens: 40,
        ..Default::default()
    };
    let out = generator.generate(&[5, 6, 7], &opts, 128, &mut |_| ControlFlow::Continue(()))?;
    println!(
        "generated {:?}…  τ {:.2} in {} steps",
        &out.new_ids[..8],
        out.stats.tau,
        out.stats.steps
    );
    Ok(())
}
