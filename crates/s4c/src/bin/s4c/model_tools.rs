//! `s4c tokenize`, `s4c convert` and `s4c info`: the model's files without loading the network.

use std::path::Path;

use s4c::Result;
use s4c_models::ModelFiles;
use serde_json::json;

/// Prints the token ids of `text`.
pub fn tokenize(model: &Path, as_json: bool, text: &str) -> Result<()> {
    let files = ModelFiles::open(model)?;
    let ids = files.tokenizer.encode(text)?;
    if as_json {
        println!("{}", json!({ "ids": ids }));
    } else {
        println!("{ids:?}");
    }
    Ok(())
}

/// Writes a Hugging Face folder from a GGUF file.
pub fn convert(model: &Path, out: &Path) -> Result<()> {
    s4c_models::convert_to_hf(model, out)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Prints a model's configuration, storage types and parameter count.
pub fn info(path: &Path) -> Result<()> {
    let files = ModelFiles::open(path)?;
    let c = &files.config;
    let info = json!({
        "path": path.display().to_string(),
        "architecture": "llama",
        "config": c,
        "file_dtypes": files.file_dtypes,
        "parameters": c.parameter_count(),
        "chat_template": files.template.as_ref().map(|t| t.describe()),
        "vocab_size_tokenizer": files.tokenizer.vocab_size(),
    });
    println!(
        "{}",
        serde_json::to_string_pretty(&info).unwrap_or_default()
    );
    Ok(())
}
