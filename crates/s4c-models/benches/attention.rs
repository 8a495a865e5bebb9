//! flex's attention on one layer of the default model's decode and verification shapes: 3 KV
//! heads of 64, the queries of one KV group side by side (3 query rows per token), keys and
//! values read in place from a KV-cache-like buffer, after 128–2,000 cached tokens, for 1 and 4
//! new tokens. With the workspace's patched burn-flex the heads run in parallel once each has
//! enough work (docs/backends.md).
//!
//! ```sh
//! cargo bench -p s4c-models --bench attention
//! ```

use burn::backend::Flex;
use burn::tensor::{module::attention, ops::AttentionModuleOptions, Distribution, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

type B = Flex;

fn bench(c: &mut Criterion) {
    let d = Default::default();
    let mut group = c.benchmark_group("attention_one_layer");
    for ctx in [128usize, 400, 1024, 2000] {
        for n in [1usize, 4] {
            let cap = ctx + 64;
            let cache = || Tensor::<B, 4>::random([1, 3, cap, 64], Distribution::Default, &d);
            let (k_buf, v_buf) = (cache(), cache());
            let q = Tensor::<B, 4>::random([1, 3, 3 * n, 64], Distribution::Default, &d);
            let cols = ctx + n;
            let id = BenchmarkId::new(format!("{n}_tokens"), ctx);
            group.bench_with_input(id, &cols, |b, &cols| {
                b.iter(|| {
                    let k = k_buf.clone().slice([0..1, 0..3, 0..cols, 0..64]);
                    let v = v_buf.clone().slice([0..1, 0..3, 0..cols, 0..64]);
                    let opts = AttentionModuleOptions::default();
                    attention(q.clone(), k, v, None, None, opts)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
