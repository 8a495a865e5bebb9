//! Typed errors of model loading and running.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
///
/// Each message says what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file or folder the loader needs does not exist.
    #[error("{path}: not found ({what}); check the path, or run scripts/fetch-default-model.sh for the default model")]
    NotFound {
        /// The missing path.
        path: PathBuf,
        /// What the loader expected to find there.
        what: &'static str,
    },
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A GGUF file is malformed (bad magic, truncated, inconsistent).
    #[error("invalid GGUF file {path}: {reason}; re-download or re-convert the model")]
    InvalidGguf {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A safetensors file is malformed.
    #[error("invalid safetensors file {path}: {reason}; re-download the weights")]
    InvalidSafetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A tensor has a storage type this crate cannot load.
    #[error("tensor {tensor}: unsupported type {dtype}; supported: {supported}")]
    UnsupportedTensorType {
        /// The tensor name.
        tensor: String,
        /// The type found in the file.
        dtype: String,
        /// The types that are supported.
        supported: &'static str,
    },
    /// A chat template does not compile, or refuses a conversation.
    #[error("chat template: {reason}")]
    Template {
        /// What the template engine or the template itself reported.
        reason: String,
    },
    /// A tensor the architecture needs is not in the weights.
    #[error("tensor {0} is missing from the weights; is this a Llama-family model?")]
    MissingTensor(String),
    /// A tensor's shape disagrees with the configuration.
    #[error("tensor {tensor}: shape {found:?} does not match the config, which implies {expected:?}; the config and the weights are from different models")]
    ShapeMismatch {
        /// The tensor name.
        tensor: String,
        /// The shape in the file (rows first).
        found: Vec<usize>,
        /// The shape the config implies.
        expected: Vec<usize>,
    },
    /// `config.json` or GGUF metadata is malformed or describes an unsupported model.
    #[error("invalid model config ({source_name}): {reason}")]
    InvalidConfig {
        /// Where the config came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },
    /// The tokenizer cannot be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The input does not fit the model (prompt too long, empty input, bad positions…).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// The requested dtype is not supported by this backend or this code path.
    #[error("dtype {dtype} is not supported on backend {backend}; use {supported}")]
    UnsupportedDtype {
        /// The requested dtype.
        dtype: String,
        /// The backend.
        backend: String,
        /// What to use instead.
        supported: &'static str,
    },
}

/// Result alias of this crate.
pub type Result<T, E = ModelError> = std::result::Result<T, E>;

impl ModelError {
    /// An [`ModelError::Io`] for `path`, or [`ModelError::NotFound`] when the file does not exist.
    pub fn io(path: impl Into<PathBuf>, what: &'static str, source: std::io::Error) -> Self {
        let path = path.into();
        if source.kind() == std::io::ErrorKind::NotFound {
            ModelError::NotFound { path, what }
        } else {
            ModelError::Io { path, source }
        }
    }
}
