//! How closely the CPU engine with the file's own quantized weights (8-bit activations) follows
//! the same weights dequantized to `f32`: over the golden prompts and their reference greedy
//! continuations, teacher-forced, every position's top-1 agreement, mean and largest KL
//! divergence `KL(p_f32 ‖ p_native)` and largest absolute logit difference.
//!
//! ```sh
//! cargo run --release -p s4c-models --example fidelity -- [MODEL] [GOLDEN_JSON]
//! ```
//! Defaults: the default model and `data/golden-smollm2-135m-instruct.json`. With
//! `--dump FILE`, the native logits of every position, case after case, are written as raw
//! little-endian `f32` (`positions × vocab`), for comparisons with other implementations.

use std::path::PathBuf;

use burn::backend::Flex;
use burn::tensor::DType;
use s4c_models::{load, CausalLm, EngineKind, Input, LoadOptions, Logits};

fn log_softmax(v: &[f32]) -> Vec<f64> {
    let m = v.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let z = v.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln() + m;
    v.iter().map(|&x| x as f64 - z).collect()
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len())
        .max_by(|&a, &b| v[a].total_cmp(&v[b]))
        .unwrap_or(0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let dump = args.iter().position(|a| a == "--dump").map(|i| {
        let f = args.remove(i + 1);
        args.remove(i);
        PathBuf::from(f)
    });
    let model = args
        .first()
        .cloned()
        .unwrap_or("models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let golden = args
        .get(1)
        .cloned()
        .unwrap_or("data/golden-smollm2-135m-instruct.json".into());
    let cases: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&golden)?)?;
    let device = Default::default();
    let opts = |dtype| LoadOptions {
        engine: EngineKind::Cpu,
        dtype,
        ..LoadOptions::default()
    };
    let native = load::<Flex>(model.as_ref(), &device, &opts(None))?;
    let dense = load::<Flex>(model.as_ref(), &device, &opts(Some(DType::F32)))?;
    println!(
        "native {:?} on {:?} vs f32",
        native.model.weight_types(),
        native.model.threads()
    );
    let (mut n, mut agree, mut kl_sum, mut kl_max, mut diff_max) =
        (0usize, 0usize, 0f64, 0f64, 0f32);
    let mut out = dump.map(std::fs::File::create).transpose()?;
    for case in cases["cases"].as_array().into_iter().flatten() {
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(case["greedy_new_ids"].as_array().into_iter().flatten())
            .filter_map(|v| v.as_u64().map(|x| x as u32))
            .collect();
        let run = |m: &s4c_models::Llama<Flex>| -> Result<Vec<f32>, Box<dyn std::error::Error>> {
            let mut cache = m.new_cache(ids.len());
            let o = m.forward(&Input::causal(&ids, 0, Logits::All), &mut cache)?;
            Ok(o.logits
                .into_data()
                .to_vec::<f32>()
                .map_err(|e| format!("{e:?}"))?)
        };
        let (a, b) = (run(&dense.model)?, run(&native.model)?);
        let v = dense.model.config().vocab_size;
        for (ra, rb) in a.chunks(v).zip(b.chunks(v)) {
            let (la, lb) = (log_softmax(ra), log_softmax(rb));
            let kl: f64 = la.iter().zip(&lb).map(|(p, q)| p.exp() * (p - q)).sum();
            kl_sum += kl;
            kl_max = kl_max.max(kl);
            agree += usize::from(argmax(ra) == argmax(rb));
            diff_max = ra
                .iter()
                .zip(rb)
                .fold(diff_max, |m, (x, y)| m.max((x - y).abs()));
            n += 1;
        }
        if let Some(f) = out.as_mut() {
            use std::io::Write;
            let bytes: Vec<u8> = b.iter().flat_map(|x| x.to_le_bytes()).collect();
            f.write_all(&bytes)?;
        }
    }
    println!(
        "{n} positions: top-1 agreement {:.4}, mean KL {:.5}, max KL {:.4}, max |Δlogit| {:.3}",
        agree as f64 / n.max(1) as f64,
        kl_sum / n.max(1) as f64,
        kl_max,
        diff_max
    );
    Ok(())
}
