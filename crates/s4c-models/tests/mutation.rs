//! Parsers never panic on malformed input: seeded mutations (proptest) of a small valid GGUF
//! file, of `config.json`, of a `tokenizer.json` and of chat templates must give `Ok` or a typed
//! error (`fuzz/` runs the same parsers under cargo-fuzz); count and length
//! fields that claim more than the file holds are refused before anything is allocated.

use proptest::prelude::*;
use s4c_models::gguf::GgufFile;
use s4c_models::{ChatTemplate, LlamaConfig, Message, ModelError, Tokenizer};

/// A GGUF metadata value, as written.
enum V<'a> {
    U32(u32),
    F32(f32),
    Str(&'a str),
    Strs(&'a [&'a str]),
    I32s(&'a [i32]),
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

/// A small Llama GGUF file: hyper-parameters, a 6-token BPE vocabulary, two f32 tensors.
fn tiny_gguf() -> Vec<u8> {
    let tokens = ["a", "b", "ab", "<s>", "</s>", "Ġ"];
    let meta: Vec<(&str, V)> = vec![
        ("general.architecture", V::Str("llama")),
        ("llama.embedding_length", V::U32(8)),
        ("llama.block_count", V::U32(1)),
        ("llama.feed_forward_length", V::U32(16)),
        ("llama.attention.head_count", V::U32(2)),
        ("llama.attention.head_count_kv", V::U32(1)),
        ("llama.context_length", V::U32(64)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(&tokens)),
        ("tokenizer.ggml.token_type", V::I32s(&[1, 1, 1, 3, 3, 1])),
        ("tokenizer.ggml.merges", V::Strs(&["a b"])),
        ("tokenizer.ggml.bos_token_id", V::U32(3)),
        ("tokenizer.ggml.eos_token_id", V::U32(4)),
    ];
    let tensors = [
        ("token_embd.weight", [8u64, 6]),
        ("output_norm.weight", [8, 1]),
    ];
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in &meta {
        put_str(&mut b, k);
        match v {
            V::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            V::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            V::Strs(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|s| put_str(&mut b, s));
            }
            V::I32s(v) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((v.len() as u64).to_le_bytes());
                v.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    for (name, [d0, d1]) in tensors {
        put_str(&mut b, name);
        let dims: Vec<u64> = if d1 == 1 { vec![d0] } else { vec![d0, d1] };
        b.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
        b.extend(0u32.to_le_bytes()); // f32
        b.extend(offset.to_le_bytes());
        offset += d0 * d1 * 4;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    b.extend(vec![0u8; offset as usize]);
    b
}

/// Writes `bytes` to a file of its own and parses it as every loader does.
fn parse(bytes: &[u8], tag: &str) -> Result<(), ModelError> {
    let path = std::env::temp_dir().join(format!("s4c-mutation-{}-{tag}.gguf", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    let result = GgufFile::open(&path).and_then(|g| {
        let config = LlamaConfig::from_gguf(&g);
        let tokenizer = Tokenizer::from_gguf(&g);
        config.and(tokenizer).map(|_| ())
    });
    let _ = std::fs::remove_file(&path);
    result
}

fn tmp_tag() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[test]
fn the_tiny_file_is_valid() {
    parse(&tiny_gguf(), "valid").unwrap();
}

#[test]
fn counts_beyond_the_file_are_refused_before_allocating() {
    let base = tiny_gguf();
    // Offsets: tensor count at 8, metadata count at 16, the first key's length at 24.
    for (at, what) in [(8, "tensors"), (16, "metadata"), (24, "key length")] {
        let mut b = base.clone();
        b[at..at + 8].copy_from_slice(&(1u64 << 60).to_le_bytes());
        match parse(&b, &tmp_tag()) {
            Err(ModelError::InvalidGguf { reason, path }) => {
                assert!(reason.contains("exceeds the file"), "{what}: {reason}");
                assert!(path.to_string_lossy().contains("s4c-mutation"));
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A truncated file names the offset.
    match parse(&base[..base.len() / 3], &tmp_tag()) {
        Err(ModelError::InvalidGguf { reason, .. }) => {
            assert!(
                reason.contains("offset") || reason.contains("past the end"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_syntax_error_inside_a_tokenizer_json_decoder_is_an_error() {
    // The tokenizers crate panics on this one by itself (found by
    // fuzz/fuzz_targets/tokenizer_json.rs).
    let text = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": null, "post_processor": null,
        "decoder": {"type" "Fuse"},
        "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}"#;
    match Tokenizer::from_json(text) {
        Err(ModelError::Tokenizer(reason)) => assert!(reason.contains("malformed"), "{reason}"),
        other => panic!("{:?}", other.map(|t| t.vocab_size())),
    }
}

/// A Llama 2 style `tokenizer.json` (SentencePiece BPE with byte fallback, 448 tokens).
fn fixture_tokenizer_json() -> String {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/family/llama2/hf/tokenizer.json");
    std::fs::read_to_string(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, rng_seed: proptest::test_runner::RngSeed::Fixed(7), ..ProptestConfig::default() })]

    #[test]
    fn mutated_gguf_files_never_panic(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut b = tiny_gguf();
        for (at, byte) in edits {
            let i = at.index(b.len());
            b[i] = byte;
        }
        if truncate {
            b.truncate(cut.index(b.len()));
        }
        let _ = parse(&b, &tmp_tag());
    }

    #[test]
    fn mutated_config_json_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 32u8..127), 0..6),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut text = r#"{"architectures": ["LlamaForCausalLM"], "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "vocab_size": 6, "max_position_embeddings": 64, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "tie_word_embeddings": true, "bos_token_id": 3, "eos_token_id": [4],
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}"#.as_bytes().to_vec();
        for (at, byte) in edits {
            let i = at.index(text.len());
            text[i] = byte;
        }
        text.truncate(cut.index(text.len() + 1).max(1));
        let text = String::from_utf8_lossy(&text);
        let _ = LlamaConfig::from_hf_json(&text, "config.json");
    }

    #[test]
    fn mutated_tokenizer_json_never_panics(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 32u8..127), 1..6),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut text = fixture_tokenizer_json().into_bytes();
        for (at, byte) in edits {
            let i = at.index(text.len());
            text[i] = byte;
        }
        if truncate {
            text.truncate(cut.index(text.len()));
        }
        let text = String::from_utf8_lossy(&text);
        if let Ok(t) = Tokenizer::from_json(&text) {
            if let Ok(ids) = t.encode_prompt("Hello world, ünïcode 🦙") {
                let _ = t.decode(&ids, true);
            }
        }
    }

    #[test]
    fn random_templates_never_panic(
        parts in proptest::collection::vec(prop::sample::select(vec![
            "{% for m in messages %}", "{% endfor %}", "{{ m['content'] }}", "{{ m.role | upper }}",
            "{% if add_generation_prompt %}", "{% endif %}", "{{ raise_exception('no') }}",
            "{{ bos_token + eos_token }}", "{{ messages[0]['content'].strip() }}", "{%", "}}",
            "{{ strftime_now('%d %b %Y') }}", "{{ messages[9] }}", "{{ 1 / 0 }}", "text", "\n",
            "{% set x = namespace(a=1) %}{{ x.a }}", "{{ messages | length }}", "{{ range(3) | list }}",
        ]), 0..12),
    ) {
        let source: String = parts.concat();
        if let Ok(t) = ChatTemplate::from_jinja(&source, "<s>", "</s>") {
            let _ = t.render(&[Message::new("system", "S"), Message::new("user", "  hi  ")]);
            let _ = t.render(&[]);
        }
    }
}
