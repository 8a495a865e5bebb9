//! Drafting cost of the shipped heads on the default model (flex): the first stage over the
//! features of a verification pass (feature reuse: 1 or 64 nodes, each with its 8-feature
//! window) and one head level for 1, 4, 16 or 64 nodes (head block, the 8,192-token draft LM
//! head, top-4 read back), with the blocks and head as `f32` backend products and on the CPU
//! kernels' threads (`with_host_head`: what `s4c` runs beside the CPU engine). Needs
//! `scripts/fetch-default-model.sh`.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::{Distribution, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use s4c_draft::{io, Drafter};
use s4c_models::{load, CausalLm, LoadOptions};

type B = Flex;

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model_path = root.join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let heads_path = root.join("assets/SmolLM2-135M-Instruct.heads.safetensors");
    if !model_path.exists() {
        eprintln!(
            "{} missing: run scripts/fetch-default-model.sh",
            model_path.display()
        );
        return;
    }
    let device = Default::default();
    let m = load::<B>(&model_path, &device, &LoadOptions::default()).expect("default model");
    let drafter = io::load(&heads_path, &m.model).expect("shipped heads");
    let h = drafter.config().hidden;
    let w = drafter.window();
    let rows = |n: usize| Tensor::<B, 2>::random([n, h], Distribution::Normal(0.0, 1.0), &device);
    for n in [1usize, 64] {
        let features = rows(n);
        let window = rows(n * w).reshape([n, w, h]);
        let valid = Tensor::<B, 2>::ones([n, w], &device);
        c.bench_function(
            &format!("drafter initial states, {n} node(s), window {w}"),
            |b| {
                b.iter(|| {
                    let s = drafter.initial_states(features.clone(), window.clone(), valid.clone());
                    let _ = s.into_data();
                })
            },
        );
    }
    let threads = m.model.threads().expect("the CPU engine").clone();
    let host = io::load(&heads_path, &m.model)
        .expect("shipped heads")
        .with_host_head(threads, m.model.lm_head_matrix())
        .expect("host copies");
    for (name, d) in [("backend", &drafter), ("host", &host)] {
        for n in [1usize, 4, 16, 64] {
            let parents = rows(n);
            let tokens: Vec<u32> = (0..n as u32).map(|i| 100 + i).collect();
            c.bench_function(
                &format!("drafter head level ({name}), {n} node(s), top-4"),
                |b| {
                    b.iter(|| {
                        d.expand(0, parents.clone(), &tokens, &[], 4)
                            .expect("depth 0")
                    })
                },
            );
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
