//! A GGUF file: header, metadata, tensor directory, the Llama configuration and tokenizer read
//! from it, and every tensor read both ways (dequantized and as a weight matrix).
#![no_main]

use libfuzzer_sys::fuzz_target;
use s4c_models::gguf::GgufFile;
use s4c_models::{LlamaConfig, Tokenizer};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data, "fuzz.gguf") else {
        return;
    };
    if let Ok(config) = LlamaConfig::from_gguf(&file) {
        let _ = config.validate("fuzz");
    }
    if let Ok(tokenizer) = Tokenizer::from_gguf(&file) {
        if let Ok(ids) = tokenizer.encode("Hello world, 12 <s> ünïcode") {
            let _ = tokenizer.decode(&ids, false);
        }
    }
    let mut names: Vec<String> = file.tensors().keys().cloned().collect();
    names.sort();
    for name in names {
        let _ = file.tensor(&name);
        let _ = file.matrix(&name);
    }
});
