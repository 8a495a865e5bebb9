//! Weight files: safetensors (single and sharded), conversion, and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::backend::Flex;
use burn::tensor::{DType, Tensor};
use s4c_models::testing::random_weights;

use s4c_models::{
    build_model, write_safetensors, CausalLm, HostTensor, Input, Llama, LlamaConfig, LoadOptions,
    Logits, ModelError, ModelFiles, SafetensorsWeights, WeightSource,
};

type B = Flex;

/// f32 weights on the default engine.
fn f32_options() -> LoadOptions {
    LoadOptions {
        dtype: Some(DType::F32),
        max_context: 64,
        ..LoadOptions::default()
    }
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("s4c-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn tiny_tokenizer_json() -> String {
    let vocab: serde_json::Map<String, serde_json::Value> = (0..50)
        .map(|i| (format!("t{i}"), serde_json::json!(i)))
        .collect();
    serde_json::json!({"version":"1.0","truncation":null,"padding":null,"added_tokens":[],
        "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,
        "model":{"type":"WordLevel","vocab":vocab,"unk_token":"t0"}})
    .to_string()
}

fn write_folder(
    dir: &Path,
    config: &LlamaConfig,
    tensors: &BTreeMap<String, HostTensor>,
    shards: usize,
) {
    std::fs::write(dir.join("config.json"), config.to_hf_json().to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), tiny_tokenizer_json()).unwrap();
    if shards == 1 {
        write_safetensors(&dir.join("model.safetensors"), tensors).unwrap();
        return;
    }
    let mut map = serde_json::Map::new();
    let names: Vec<&String> = tensors.keys().collect();
    for s in 0..shards {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: BTreeMap<String, HostTensor> = names
            .iter()
            .enumerate()
            .filter(|(i, _)| i % shards == s)
            .map(|(_, n)| ((*n).clone(), tensors[*n].clone()))
            .collect();
        for n in part.keys() {
            map.insert(n.clone(), serde_json::json!(file));
        }
        write_safetensors(&dir.join(&file), &part).unwrap();
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
}

fn logits(m: &Llama<B>) -> Vec<f32> {
    let mut c = m.new_cache(16);
    let out = m
        .forward(&Input::causal(&[1, 5, 9, 3], 0, Logits::All), &mut c)
        .unwrap();
    let t: Tensor<B, 2> = out.logits;
    t.into_data().convert::<f32>().to_vec().unwrap()
}

#[test]
fn sharded_and_single_safetensors_give_the_same_model() {
    let config = LlamaConfig::tiny(50);
    let w = random_weights(&config, 7);
    let reference = build_model::<B>(&config, &w, &Default::default(), &f32_options()).unwrap();
    for shards in [1, 3] {
        let dir = tmp(&format!("shards{shards}"));
        write_folder(&dir, &config, &w.0, shards);
        let files = ModelFiles::open(&dir).unwrap();
        assert_eq!(files.config, config);
        let m = build_model::<B>(
            &config,
            files.weights.as_ref(),
            &Default::default(),
            &f32_options(),
        )
        .unwrap();
        assert_eq!(logits(&m), logits(&reference), "{shards} shards");
    }
}

#[test]
fn half_precision_safetensors_load() {
    let config = LlamaConfig::tiny(50);
    let w = random_weights(&config, 8);
    let dir = tmp("f16");
    write_folder(&dir, &config, &w.0, 1);
    // Rewrite one tensor as f16 and one as bf16 by hand.
    let name16 = "model.norm.weight";
    let t = &w.0[name16];
    let b16: Vec<u8> = t
        .data
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
        .collect();
    let name_bf = "model.embed_tokens.weight";
    let tb = &w.0[name_bf];
    let bbf: Vec<u8> = tb
        .data
        .iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
        .collect();
    let views = vec![
        (
            name16.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F16, t.shape.clone(), &b16)
                .unwrap(),
        ),
        (
            name_bf.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, tb.shape.clone(), &bbf)
                .unwrap(),
        ),
    ];
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let st = SafetensorsWeights::open(&dir).unwrap();
    let got = st.tensor(name16).unwrap();
    for (a, b) in got.data.iter().zip(&t.data) {
        assert!((a - b).abs() < 1e-3 * b.abs().max(1.0));
    }
    let got = st.tensor(name_bf).unwrap();
    for (a, b) in got.data.iter().zip(&tb.data) {
        assert!((a - b).abs() < 1e-2 * b.abs().max(1.0));
    }
}

#[test]
fn bad_files_give_typed_errors() {
    let config = LlamaConfig::tiny(50);
    let w = random_weights(&config, 9);
    // Missing folder / file.
    assert!(matches!(
        ModelFiles::open(Path::new("/nonexistent/x")),
        Err(ModelError::NotFound { .. })
    ));
    // Malformed config.json.
    let dir = tmp("badcfg");
    write_folder(&dir, &config, &w.0, 1);
    std::fs::write(dir.join("config.json"), "{\"hidden_size\": ").unwrap();
    assert!(matches!(
        ModelFiles::open(&dir),
        Err(ModelError::InvalidConfig { .. })
    ));
    // Malformed tokenizer.json.
    let dir = tmp("badtok");
    write_folder(&dir, &config, &w.0, 1);
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    assert!(matches!(
        ModelFiles::open(&dir),
        Err(ModelError::Tokenizer(_))
    ));
    // Truncated safetensors.
    let dir = tmp("trunc");
    write_folder(&dir, &config, &w.0, 1);
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(matches!(
        ModelFiles::open(&dir),
        Err(ModelError::InvalidSafetensors { .. })
    ));
    // Shape mismatch with config.
    let dir = tmp("shape");
    let mut other = config.clone();
    other.intermediate_size = 48;
    write_folder(&dir, &config, &w.0, 1);
    std::fs::write(dir.join("config.json"), other.to_hf_json().to_string()).unwrap();
    let files = ModelFiles::open(&dir).unwrap();
    let err = build_model::<B>(
        &files.config,
        files.weights.as_ref(),
        &Default::default(),
        &f32_options(),
    )
    .err()
    .unwrap();
    assert!(matches!(err, ModelError::ShapeMismatch { .. }), "{err}");
    // Unsupported dtype in safetensors.
    let dir = tmp("i32");
    write_folder(&dir, &config, &w.0, 1);
    let data = vec![0u8; 4 * 32];
    let views = vec![(
        "model.norm.weight".to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I32, vec![32], &data).unwrap(),
    )];
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let st = SafetensorsWeights::open(&dir).unwrap();
    assert!(matches!(
        st.tensor("model.norm.weight"),
        Err(ModelError::UnsupportedTensorType { .. })
    ));
}
