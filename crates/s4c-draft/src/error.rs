//! Typed errors of drafting, data generation and training.

use std::path::PathBuf;

/// Everything that can go wrong in `s4c-draft`. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DraftError {
    /// The target model failed.
    #[error(transparent)]
    Model(#[from] s4c_models::ModelError),
    /// An I/O error on a path.
    #[error("{path}: {source}")]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A heads file or its JSON config is malformed.
    #[error("invalid draft heads {path}: {reason}; retrain them with `s4c train-heads`")]
    InvalidHeads {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Heads trained for another target model.
    #[error("draft heads {path} were trained for another model ({reason}); use heads trained for this model or train them with `s4c train-heads --model <this model>`")]
    WrongTarget {
        /// The heads file.
        path: PathBuf,
        /// Which part of the fingerprint differs.
        reason: String,
    },
    /// A cached training-data chunk is malformed.
    #[error("invalid training data {path}: {reason}; delete the data folder to regenerate it")]
    InvalidData {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An option is out of range.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// Reading a tensor back from the device failed.
    #[error("reading a tensor from the device failed: {0}")]
    Read(String),
}

impl DraftError {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DraftError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result with [`DraftError`].
pub type Result<T, E = DraftError> = std::result::Result<T, E>;
