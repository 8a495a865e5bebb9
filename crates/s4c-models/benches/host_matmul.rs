//! s4c's host matrix kernel on the default model's weight shapes (SmolLM2-135M: per layer the
//! fused q/k/v `[960, 576]`, output `[576, 576]`, fused gate/up `[3072, 576]` and down
//! `[576, 1536]`, 30 layers, then the LM head `[49152, 576]`), random f32 weights, for the row
//! counts of a decode step (1) and of verification trees and prompt blocks (2–64): one sample
//! multiplies by every matrix once, as a forward does.
//!
//! ```sh
//! cargo bench -p s4c-models --bench host_matmul
//! ```

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use s4c_models::host_matmul::{HostLinear, HostWeights};

/// Uniform values in [-1, 1) from a fixed LCG, so every run multiplies the same numbers.
fn values(n: usize, seed: &mut u32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (*seed >> 9) as f32 / 8_388_608.0 - 1.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut seed = 1;
    let mut mats = vec![];
    for _ in 0..30 {
        for (out, inp) in [(960, 576), (576, 576), (3072, 576), (576, 1536)] {
            let w = HostWeights::F32(values(out * inp, &mut seed));
            mats.push(HostLinear::new(out, inp, w));
        }
    }
    let head = HostWeights::F32(values(49_152 * 576, &mut seed));
    mats.push(HostLinear::new(49_152, 576, head));
    let mut group = c.benchmark_group("host_matmul_all_weights");
    group.sample_size(15);
    for m in [1usize, 2, 4, 8, 16, 32, 64] {
        let xs: Vec<Vec<f32>> = mats
            .iter()
            .map(|h| values(h.in_features() * m, &mut seed))
            .collect();
        group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
            b.iter(|| {
                for (h, x) in mats.iter().zip(&xs) {
                    std::hint::black_box(h.matmul(x, m));
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
