use burn::backend::Flex;
use burn::tensor::DType;
use s4c_models::{load, AttentionMask, CausalLm, Input, LoadOptions, Logits};
use std::time::Instant;
type B = Flex;
fn main() {
    let path = "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    let only: Option<usize> = std::env::args().nth(1).map(|s| s.parse().unwrap());
    let cfgs: Vec<(usize, bool, DType)> = if only.is_some() {
        vec![(2, true, DType::F16)]
    } else {
        vec![
            (2usize, false, DType::F32),
            (2, true, DType::F32),
            (2, true, DType::F16),
        ]
    };
    for (shards, host, dt) in cfgs {
        let opts = LoadOptions {
            dtype: dt,
            compute_dtype: DType::F32,
            shards,
            host_matmul: host,
            ..Default::default()
        };
        let m = load::<B>(path.as_ref(), &Default::default(), &opts).unwrap();
        let prefix: Vec<u32> = (0..128).map(|i| 100 + i).collect();
        let mut cache = m.model.new_cache(512);
        m.model
            .forward(&Input::causal(&prefix, 0, Logits::Last), &mut cache)
            .unwrap();
        for n in [1usize, 2, 4, 8, 16, 32, 64] {
            if only.is_some_and(|o| o != n) {
                continue;
            }
            let toks: Vec<u32> = (0..n as u32).map(|i| 500 + i).collect();
            let vis: Vec<bool> = (0..n).flat_map(|i| (0..n).map(move |j| j <= i)).collect();
            let mask = AttentionMask::tree(128, n, &vis).unwrap();
            let mut v = vec![];
            for _ in 0..if only.is_some() { 40 } else { 7 } {
                let t = Instant::now();
                let input = Input::tree(&toks, (128..128 + n).collect(), &mask);
                let out = m.model.forward(&input, &mut cache).unwrap();
                let _ = out.logits.argmax(1).into_data();
                cache.truncate(128);
                v.push(t.elapsed().as_secs_f64() * 1e3);
            }
            v.sort_by(|a, b| a.partial_cmp(b).unwrap());
            println!("host {host} {dt:?} n={n}: median {:.1} ms", v[v.len() / 2]);
        }
    }
}
