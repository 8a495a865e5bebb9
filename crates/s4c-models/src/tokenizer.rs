//! Tokenizer: Hugging Face `tokenizers` loaded from `tokenizer.json`, or built from GGUF metadata.

use std::path::Path;

use serde_json::{json, Value};

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;

/// A text ↔ token-id codec with the model's special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    json: String,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

fn tok_err(e: impl std::fmt::Display) -> ModelError {
    ModelError::Tokenizer(e.to_string())
}

/// The Llama 3 pre-tokenizer split pattern.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split pattern: Llama 3's with single digits.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl Tokenizer {
    /// Parses the text of a `tokenizer.json`.
    pub fn from_json(text: &str) -> Result<Self> {
        let malformed = |e: &dyn std::fmt::Display| {
            ModelError::Tokenizer(format!(
                "malformed tokenizer.json: {e}; re-download the model's tokenizer files"
            ))
        };
        // The tokenizers crate panics on some syntax errors (inside a decoder, say) instead of
        // failing: check the syntax first, and turn any panic left into the same error.
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| malformed(&e))?;
        let inner: tokenizers::Tokenizer =
            std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
                .map_err(|_| malformed(&"the tokenizers crate could not read it"))?
                .map_err(|e| malformed(&e))?;
        Ok(Tokenizer {
            inner,
            json: text.to_string(),
        })
    }

    /// Loads a `tokenizer.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ModelError::io(path, "tokenizer.json", e))?;
        Self::from_json(&text)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", path.display())))
    }

    /// Builds the byte-level BPE tokenizer described by GGUF metadata (`tokenizer.ggml.*`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        Self::from_json(&Self::gguf_to_json(gguf)?.to_string())
    }

    /// The `tokenizer.json` equivalent of GGUF tokenizer metadata.
    pub fn gguf_to_json(gguf: &GgufFile) -> Result<Value> {
        let model = gguf.meta_str("tokenizer.ggml.model").unwrap_or("");
        if model == "llama" {
            return spm_to_json(gguf);
        }
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (byte-level BPE \"gpt2\" and \
                 SentencePiece \"llama\"); use the model's Hugging Face folder with its \
                 tokenizer.json instead"
            )));
        }
        let tokens = gguf
            .meta_strings("tokenizer.ggml.tokens")
            .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
        let merges = gguf
            .meta_strings("tokenizer.ggml.merges")
            .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.merges".into()))?;
        let types = gguf
            .meta_ints("tokenizer.ggml.token_type")
            .unwrap_or_default();
        let pre = gguf.meta_str("tokenizer.ggml.pre").unwrap_or("default");
        // Llama 3's BPE takes a pre-token that is a whole vocabulary entry as it is (its
        // tokenizer.json sets `ignore_merges`; llama.cpp does the same for this pre-tokenizer).
        let llama3 = matches!(pre, "llama-bpe" | "llama3");
        let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let pre_tokenizer = match pre {
            "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": true}, byte_level]}),
            "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]}),
            "qwen2" => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]}),
            "default" | "gpt2" | "gpt-2" => byte_level,
            other => {
                return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer {other:?} is not supported (smollm, llama-bpe, qwen2, gpt2); \
                     use the model's Hugging Face folder with its tokenizer.json instead"
            )))
            }
        };
        let mut vocab = serde_json::Map::new();
        let mut added = vec![];
        for (id, t) in tokens.iter().enumerate() {
            vocab.insert(t.to_string(), json!(id));
            // 3 = control, 4 = user-defined: matched whole in the input text.
            let ty = types.get(id).copied().unwrap_or(1);
            if ty == 3 || ty == 4 {
                added.push(
                    json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty == 3}),
                );
            }
        }
        Ok(json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor(gguf, &tokens, llama3),
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": llama3,
                "vocab": vocab, "merges": merges},
        }))
    }

    /// The `tokenizer.json` text (for `s4c convert`).
    pub fn to_json(&self) -> &str {
        &self.json
    }

    /// Token ids of `text`, special-token strings matched, no BOS/EOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    /// Token ids of a plain-text prompt: [`Tokenizer::encode`] with the BOS (or EOS) the model's
    /// tokenizer adds around a text — Llama 2 and Llama 3 put BOS first, SmolLM2 adds nothing —
    /// as transformers' `tokenizer(text)` and llama.cpp do.
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Token ids of `text`, with the post-processor's special tokens when `add_special`.
    fn encode_with(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, add_special).map_err(tok_err)?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids`; special tokens are kept when `skip_special` is false.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(tok_err)
    }

    /// The id of a token string, if it is in the vocabulary.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of token `id`, if it is in the vocabulary.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// Turns a stream of token ids into a stream of text pieces, holding back incomplete UTF-8.
///
/// Each step decodes a short window of recent ids twice — up to the last step and up to now —
/// and gives out the difference (as text-generation servers do), so the pieces add up to the
/// decoding of all ids even where a tokenizer decodes a token differently at the start of a text.
#[derive(Debug, Clone, Default)]
pub struct StreamDecoder {
    ids: Vec<u32>,
    /// Start of the window.
    prefix: usize,
    /// End of the window's text already given out.
    read: usize,
}

impl StreamDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds tokens and returns the newly completed text (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, new: &[u32]) -> Result<String> {
        self.ids.extend_from_slice(new);
        self.next_piece(tok, false)
    }

    /// Ends the stream: the text still held back (an unfinished character shows as U+FFFD).
    pub fn finish(&mut self, tok: &Tokenizer) -> Result<String> {
        self.next_piece(tok, true)
    }

    fn next_piece(&mut self, tok: &Tokenizer, last: bool) -> Result<String> {
        let before = tok.decode(&self.ids[self.prefix..self.read], true)?;
        let text = tok.decode(&self.ids[self.prefix..], true)?;
        if !last && (text.len() <= before.len() || text.ends_with('\u{FFFD}')) {
            return Ok(String::new());
        }
        let mut at = before.len().min(text.len());
        while !text.is_char_boundary(at) {
            at += 1;
        }
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(text[at..].to_string())
    }
}

/// The post-processor that puts BOS (and EOS) around a plain-text prompt where the file says so
/// (`tokenizer.ggml.add_bos_token`, `add_eos_token`; without them, BOS where llama.cpp adds it by
/// default: `bos_default`).
fn post_processor(gguf: &GgufFile, tokens: &[&str], bos_default: bool) -> Value {
    let token = |key: &str| {
        let id = gguf.meta_u64(key)?;
        Some((id, *tokens.get(usize::try_from(id).ok()?)?))
    };
    let add_bos = gguf
        .meta_bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(bos_default);
    let add_eos = gguf
        .meta_bool("tokenizer.ggml.add_eos_token")
        .unwrap_or(false);
    let bos = token("tokenizer.ggml.bos_token_id").filter(|_| add_bos);
    let eos = token("tokenizer.ggml.eos_token_id").filter(|_| add_eos);
    if bos.is_none() && eos.is_none() {
        return Value::Null;
    }
    // One sequence between the tokens: [BOS] A [EOS].
    let around = |seq: &str| {
        let special = |(_, t): (u64, &str)| json!({"SpecialToken": {"id": t, "type_id": 0}});
        let mut v: Vec<Value> = bos.map(special).into_iter().collect();
        v.push(json!({"Sequence": {"id": seq, "type_id": 0}}));
        v.extend(eos.map(special));
        v
    };
    let specials: serde_json::Map<String, Value> = bos
        .into_iter()
        .chain(eos)
        .map(|(id, t)| (t.to_string(), json!({"id": t, "ids": [id], "tokens": [t]})))
        .collect();
    let pair = [around("A"), around("B")].concat();
    json!({"type": "TemplateProcessing", "single": around("A"), "pair": pair,
        "special_tokens": specials})
}

/// The `tokenizer.json` equivalent of a SentencePiece BPE vocabulary in GGUF metadata
/// (`tokenizer.ggml.model` = `llama`: Llama 2, Vicuna, Mistral, TinyLlama): pieces with scores,
/// `▁` for spaces, a space put before the text, bytes of unknown characters as `<0xXX>` pieces.
/// Merges come from the scores: two pieces merge when their concatenation is a piece, higher
/// scores first — the order SentencePiece's BPE merges in.
fn spm_to_json(gguf: &GgufFile) -> Result<Value> {
    let tokens = gguf
        .meta_strings("tokenizer.ggml.tokens")
        .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?;
    let scores = gguf
        .meta_floats("tokenizer.ggml.scores")
        .unwrap_or_default();
    let types = gguf
        .meta_ints("tokenizer.ggml.token_type")
        .unwrap_or_default();
    let ty = |id: usize| types.get(id).copied().unwrap_or(1);
    let index: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter(|&(id, _)| ty(id) == 1)
        .map(|(id, t)| (*t, id))
        .collect();
    let mut merges: Vec<(f64, usize, usize, &str, &str)> = vec![];
    for (id, t) in tokens.iter().enumerate().filter(|&(id, _)| ty(id) == 1) {
        for (i, _) in t.char_indices().skip(1) {
            let (a, b) = (&t[..i], &t[i..]);
            if let (Some(&ia), Some(_)) = (index.get(a), index.get(b)) {
                merges.push((scores.get(id).copied().unwrap_or(0.0), id, ia, a, b));
            }
        }
    }
    merges.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let merges: Vec<String> = merges.iter().map(|m| format!("{} {}", m.3, m.4)).collect();
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (id, t) in tokens.iter().enumerate() {
        vocab.insert(t.to_string(), json!(id));
        // 2 = unknown, 3 = control, 4 = user-defined: matched whole in the input text.
        if matches!(ty(id), 2..=4) {
            added.push(
                json!({"id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty(id) != 4}),
            );
        }
    }
    let unk = tokens
        .iter()
        .enumerate()
        .find(|&(id, _)| ty(id) == 2)
        .map(|(_, t)| t.to_string());
    let prefix = !matches!(
        gguf.metadata().get("tokenizer.ggml.add_space_prefix"),
        Some(crate::gguf::MetaValue::Bool(false))
    );
    let mut normalizers = vec![];
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": post_processor(gguf, &tokens, true),
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": usize::from(prefix), "stop": 0}]},
        "model": {"type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}
