//! KV-cache commit after a verification pass: the accepted nodes of a 64-node tree block are
//! gathered into contiguous slots, for every layer. The cache has the default model's shape
//! (30 layers, 3 KV heads of 64) behind 384 cached tokens; the weights are tiny and random, since
//! only the cache matters here (each sample's tree forward is not timed). The CPU engine's host
//! cache (the default on flex) and the tensor engine's device cache.

use std::time::{Duration, Instant};

use burn::backend::Flex;
use burn::tensor::DType;
use criterion::{criterion_group, criterion_main, Criterion};
use s4c_models::testing::random_weights;
use s4c_models::{
    build_model, AttentionMask, CausalLm, EngineKind, Input, Llama, LlamaConfig, LoadOptions,
    Logits,
};

type B = Flex;

fn bench(c: &mut Criterion) {
    let mut config = LlamaConfig::tiny(64);
    (config.num_layers, config.num_heads, config.num_kv_heads) = (30, 3, 3);
    (config.head_dim, config.hidden_size) = (64, 192);
    config.max_position_embeddings = 2048;
    for engine in [EngineKind::Cpu, EngineKind::Tensors] {
        let options = LoadOptions {
            engine,
            dtype: Some(DType::F32),
            ..LoadOptions::default()
        };
        let model = build_model::<B>(
            &config,
            &random_weights(&config, 7),
            &Default::default(),
            &options,
        )
        .expect("random weights match their config");
        bench_engine(c, &model, &format!("{engine:?}").to_lowercase());
    }
}

fn bench_engine(c: &mut Criterion, model: &Llama<B>, engine: &str) {
    let cached = 384;
    let mut cache = model.new_cache(1024);
    let prefix: Vec<u32> = (0..cached as u32).map(|i| i % 64).collect();
    model
        .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)
        .expect("prefill");
    let n = 64;
    let toks: Vec<u32> = (0..n as u32).map(|i| i % 64).collect();
    let mask = AttentionMask::causal(cached, n);
    for (name, keep) in [
        ("prefix path (nothing moves)", vec![0, 1, 2, 3]),
        ("branch path (4 nodes gathered)", vec![0, 3, 17, 40]),
    ] {
        c.bench_function(
            &format!("kv commit ({engine} engine), 64-node block, {name}, 30 layers"),
            |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        cache.truncate(cached);
                        let input = Input::tree(&toks, (cached..cached + n).collect(), &mask);
                        model.forward(&input, &mut cache).expect("tree forward");
                        let t = Instant::now();
                        cache.commit(&keep).expect("offsets inside the block");
                        total += t.elapsed();
                    }
                    total
                })
            },
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
