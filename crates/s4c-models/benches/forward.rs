//! Forward-pass cost of the default model on flex: one decode step and verification blocks of
//! 1–256 tokens (the verify-latency curve), on the CPU engine with the file's own Q4_1/Q8_0
//! weights (the default) and dequantized to f32, and on the tensor engine (Burn's operations) in
//! f32. Needs `scripts/fetch-default-model.sh`.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::DType;
use criterion::{criterion_group, criterion_main, Criterion};
use s4c_models::{load, AttentionMask, CausalLm, EngineKind, Input, LoadOptions, Logits};

type B = Flex;

fn bench(c: &mut Criterion) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    if !path.exists() {
        eprintln!(
            "{} missing: run scripts/fetch-default-model.sh",
            path.display()
        );
        return;
    }
    let configs = [
        ("cpu engine, native weights", EngineKind::Cpu, None),
        ("cpu engine, f32 weights", EngineKind::Cpu, Some(DType::F32)),
        (
            "tensor engine, f32 weights",
            EngineKind::Tensors,
            Some(DType::F32),
        ),
    ];
    for (name, engine, dtype) in configs {
        let opts = LoadOptions {
            engine,
            dtype,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            ..Default::default()
        };
        let m = load::<B>(&path, &Default::default(), &opts).unwrap();
        let prefix: Vec<u32> = (0..128).map(|i| 100 + i).collect();
        let mut cache = m.model.new_cache(512);
        m.model
            .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)
            .unwrap();
        for n in [1usize, 2, 4, 16, 64, 256] {
            // A chain-shaped tree of n nodes after 128 cached tokens (same cost as any tree of n).
            let toks: Vec<u32> = (0..n as u32).map(|i| 500 + i).collect();
            let mask = AttentionMask::causal(128, n);
            c.bench_function(
                &format!("smollm2 {name}: forward {n} token(s) after 128 cached, all logits"),
                |b| {
                    b.iter(|| {
                        let input = Input::tree(&toks, (128..128 + n).collect(), &mask);
                        let out = m.model.forward(&input, &mut cache).unwrap();
                        let _ = out.logits.argmax(1).into_data();
                        cache.truncate(128);
                    })
                },
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = bench
}
criterion_main!(benches);
