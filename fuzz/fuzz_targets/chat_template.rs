//! A Jinja chat template, compiled and rendered for a short conversation and for none.
#![no_main]

use libfuzzer_sys::fuzz_target;
use s4c_models::{ChatTemplate, Message};

fuzz_target!(|data: &[u8]| {
    let source = String::from_utf8_lossy(data);
    if let Ok(template) = ChatTemplate::from_jinja(&source, "<s>", "</s>") {
        let conversation = [
            Message::new("system", "Be brief."),
            Message::new("user", "  hi  "),
            Message::new("assistant", "Hello."),
            Message::new("user", "Again?"),
        ];
        let _ = template.render(&conversation);
        let _ = template.render(&[]);
    }
});
