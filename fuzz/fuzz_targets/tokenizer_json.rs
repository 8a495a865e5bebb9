//! A Hugging Face `tokenizer.json`, built and used to encode and decode a fixed text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s4c_models::Tokenizer;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(tokenizer) = Tokenizer::from_json(&text) {
        if let Ok(ids) = tokenizer.encode("Hello world, 12 <s> ünïcode") {
            let _ = tokenizer.decode(&ids, true);
        }
        let _ = tokenizer.token(0);
        let _ = tokenizer.vocab_size();
    }
});
