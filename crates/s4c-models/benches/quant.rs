//! The CPU kernels of `s4c_models::quant` on the default model's weight shapes (SmolLM2-135M:
//! per layer the fused q/k/v `[960, 576]`, output `[576, 576]`, fused gate/up `[3072, 576]` and
//! down `[576, 1536]`, 30 layers, then the LM head `[49152, 576]`), random weights in the default
//! file's types (Q4_1 layers, Q8_0 head) and in Q4_K/Q6_K (inputs widened to 768, whole
//! super-blocks of 256) and F16, for the row counts of a decode
//! step (1) and of verification trees and prompt blocks (2–64). One sample multiplies by every
//! matrix once, as a forward does; throughput is the weight bytes read per sample (GB/s), next to
//! a plain copy of as many bytes (`memcpy`) measured in the same run. On x86-64 with AVX2,
//! `quant_peak/vpmaddubsw` measures what one core's 8-bit multiply-add instruction can do at
//! most (independent `vpmaddubsw` on 256-bit registers, 32 products each, reported as products
//! per second), so a row count's products per second (the weights' values times the rows over
//! its time) read as a share of the machine's peak.
//!
//! ```sh
//! cargo bench -p s4c-models --bench quant            # all
//! cargo bench -p s4c-models --bench quant -- q4_1    # the default file's types only
//! ```
//! `S4C_THREADS` sets the thread count (default: physical cores).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use s4c_models::gguf::GgmlType;
use s4c_models::quant::{Isa, Linear, Threads};
use s4c_models::testing::{random_matrix, SplitMix};

const SHAPES: [(usize, usize); 4] = [(960, 576), (576, 576), (3072, 576), (576, 1536)];

fn model(layers: GgmlType, head: GgmlType) -> Vec<Linear> {
    // K-quant rows hold super-blocks of 256: their inputs are widened from 576 to 768.
    let per_block = layers
        .block()
        .map_or(1, |(n, _)| n)
        .max(head.block().map_or(1, |(n, _)| n));
    let width = |n: usize| n.div_ceil(per_block) * per_block;
    let mut seed = 1;
    let mut next = || {
        seed += 1;
        seed
    };
    let mut mats = vec![];
    for _ in 0..30 {
        for (out, inp) in SHAPES {
            let m = random_matrix(layers, out, width(inp), next()).expect("kernel type");
            mats.push(Linear::new(vec![m]).expect("one part"));
        }
    }
    let h = random_matrix(head, 49_152, width(576), next()).expect("kernel type");
    mats.push(Linear::new(vec![h]).expect("one part"));
    mats
}

fn bytes(mats: &[Linear]) -> usize {
    mats.iter()
        .flat_map(|l| l.parts())
        .map(|p| p.rows() * p.row_bytes())
        .sum()
}

fn bench(c: &mut Criterion) {
    let threads = std::env::var("S4C_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(0);
    let threads = Threads::new(threads, Isa::detect()).expect("thread pool");
    eprintln!("{threads:?}");
    let configs = [
        ("q4_1", GgmlType::Q4_1, GgmlType::Q8_0),
        ("q4_k", GgmlType::Q4K, GgmlType::Q6K),
        ("f16", GgmlType::F16, GgmlType::F16),
    ];
    for (name, layers, head) in configs {
        let mats = model(layers, head);
        let total = bytes(&mats);
        let products: usize = mats
            .iter()
            .map(|l| l.in_features() * l.out_features())
            .sum();
        eprintln!("quant_{name}: {products} multiply-adds per row");
        let mut group = c.benchmark_group(format!("quant_{name}"));
        group.sample_size(10);
        group.throughput(Throughput::Bytes(total as u64));
        let src = vec![1u8; total];
        let mut dst = vec![0u8; total];
        group.bench_function("memcpy", |b| {
            b.iter(|| {
                dst.copy_from_slice(&src);
                std::hint::black_box(&dst);
            })
        });
        let mut rng = SplitMix(9);
        for m in [1usize, 2, 4, 8, 16, 32, 64] {
            let xs: Vec<Vec<f32>> = mats
                .iter()
                .map(|l| (0..l.in_features() * m).map(|_| rng.symmetric()).collect())
                .collect();
            group.bench_with_input(BenchmarkId::from_parameter(m), &m, |b, &m| {
                b.iter(|| {
                    for (l, x) in mats.iter().zip(&xs) {
                        std::hint::black_box(l.forward(x, m, &threads));
                    }
                })
            });
        }
        group.finish();
    }
}

/// Multiply-adds of `vpmaddubsw` on 256-bit registers per [`peak_loop`] iteration.
#[cfg(target_arch = "x86_64")]
const PEAK_PRODUCTS: u64 = 8 * 32;

/// `iterations` rounds of eight independent `vpmaddubsw` (no memory, no dependency between
/// them): the instruction's throughput on one core.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn peak_loop(iterations: u64) {
    std::arch::asm!(
        "vpxor ymm8, ymm8, ymm8",
        "vpxor ymm9, ymm9, ymm9",
        "2:",
        "vpmaddubsw ymm0, ymm8, ymm9",
        "vpmaddubsw ymm1, ymm8, ymm9",
        "vpmaddubsw ymm2, ymm8, ymm9",
        "vpmaddubsw ymm3, ymm8, ymm9",
        "vpmaddubsw ymm4, ymm8, ymm9",
        "vpmaddubsw ymm5, ymm8, ymm9",
        "vpmaddubsw ymm6, ymm8, ymm9",
        "vpmaddubsw ymm7, ymm8, ymm9",
        "dec {n}",
        "jnz 2b",
        n = inout(reg) iterations.max(1) => _,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _,
        options(nostack, nomem),
    );
}

/// One core's peak rate of 8-bit multiply-adds (`vpmaddubsw`), in products per second.
fn peak(c: &mut Criterion) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        const ITERATIONS: u64 = 1 << 20;
        let mut group = c.benchmark_group("quant_peak");
        group.throughput(Throughput::Elements(ITERATIONS * PEAK_PRODUCTS));
        // SAFETY: AVX2 was detected.
        group.bench_function("vpmaddubsw", |b| {
            b.iter(|| unsafe { peak_loop(ITERATIONS) })
        });
        group.finish();
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = c;
}

criterion_group!(benches, peak, bench);
criterion_main!(benches);
