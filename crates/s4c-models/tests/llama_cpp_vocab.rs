//! s4c's tokenizers built from GGUF metadata alone, against llama.cpp's tokenizer test suite:
//! the vocabulary files `ggml-vocab-*.gguf` with their `.inp` texts and `.out` token ids, as
//! shipped in the pinned llama-cpp-python source distribution (llama.cpp's
//! `tests/test-tokenizer-0`, special tokens not added), and decoding gives the text back. The test fetches them into
//! `target/llama-cpp-vocab` with pip (or reads `$S4C_LLAMA_CPP_VOCAB`); offline, it says so and
//! passes without checking.

use std::path::{Path, PathBuf};
use std::process::Command;

use s4c_models::gguf::GgufFile;
use s4c_models::Tokenizer;

/// The vocabularies s4c claims to read from GGUF metadata.
const SUPPORTED: [&str; 6] = [
    "gpt-2",
    "llama-bpe",
    "llama-spm",
    "qwen2",
    "refact",
    "starcoder",
];

const SDIST: &str = "llama-cpp-python==0.3.36";

fn vocab_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("S4C_LLAMA_CPP_VOCAB") {
        return Some(PathBuf::from(d));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = root.join("target/llama-cpp-vocab");
    if SUPPORTED
        .iter()
        .all(|v| dir.join(format!("ggml-vocab-{v}.gguf.out")).exists())
    {
        return Some(dir);
    }
    // pip downloads the source distribution; Python's tarfile extracts the vocabulary files.
    let sdist = root.join("target/llama-cpp-sdist");
    let ok = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            // The source distribution of this package only; its build tools come as wheels.
            "--no-binary",
            "llama-cpp-python",
        ])
        .arg(SDIST)
        .arg("-d")
        .arg(&sdist)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        return None;
    }
    let script = r#"
import glob, os, sys, tarfile
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with tarfile.open(glob.glob(src + "/llama_cpp_python-*.tar.gz")[0]) as t:
    for m in t.getmembers():
        name = os.path.basename(m.name)
        if "/vendor/llama.cpp/models/" in m.name and name.startswith("ggml-vocab-") and m.isfile():
            with t.extractfile(m) as f, open(os.path.join(out, name), "wb") as o:
                o.write(f.read())
"#;
    let ok = Command::new("python3")
        .args(["-c", script])
        .arg(&sdist)
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(dir)
}

/// The cases of `ggml-vocab-{name}.gguf.inp/.out`.
fn cases(dir: &Path, name: &str) -> Vec<(String, Vec<u32>)> {
    let base = dir.join(format!("ggml-vocab-{name}.gguf"));
    let inp = std::fs::read_to_string(base.with_extension("gguf.inp")).unwrap();
    let out = std::fs::read_to_string(base.with_extension("gguf.out")).unwrap();
    // As llama.cpp reads them: texts between separators, none after a final separator.
    let mut texts: Vec<&str> = inp.split("\n__ggml_vocab_test__\n").collect();
    if inp.ends_with("\n__ggml_vocab_test__\n") {
        texts.pop();
    }
    let ids: Vec<Vec<u32>> = out
        .lines()
        .map(|l| l.split_whitespace().map(|t| t.parse().unwrap()).collect())
        .collect();
    assert_eq!(texts.len(), ids.len(), "{name}");
    texts.into_iter().map(str::to_string).zip(ids).collect()
}

#[test]
fn gguf_tokenizers_match_llama_cpp_on_its_test_vocabularies() {
    let Some(dir) = vocab_dir() else {
        eprintln!(
            "SKIPPED: llama.cpp's test vocabularies could not be fetched ({SDIST} via pip); \
             set S4C_LLAMA_CPP_VOCAB to a folder holding ggml-vocab-*.gguf[.inp|.out]"
        );
        return;
    };
    let mut report = vec![];
    for name in SUPPORTED {
        let gguf = GgufFile::open(dir.join(format!("ggml-vocab-{name}.gguf"))).unwrap();
        let tok = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{name}: {e}"));
        let cases = cases(&dir, name);
        let failed: Vec<String> = cases
            .iter()
            .filter_map(|(text, want)| {
                let got = tok.encode(text).unwrap();
                let back = tok.decode(&got, false).unwrap();
                (got != *want || back != *text).then(|| {
                    format!("{text:?}: got {got:?} (decoded {back:?}), llama.cpp {want:?}")
                })
            })
            .collect();
        report.push(format!(
            "{name}: {}/{} cases",
            cases.len() - failed.len(),
            cases.len()
        ));
        assert!(failed.is_empty(), "{name}:\n{}", failed.join("\n"));
    }
    eprintln!("{}", report.join("; "));
}
