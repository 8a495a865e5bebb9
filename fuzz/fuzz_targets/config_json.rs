//! A Hugging Face `config.json`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s4c_models::LlamaConfig;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = LlamaConfig::from_hf_json(&text, "config.json") {
        let _ = config.validate("fuzz");
    }
});
