//! Typed errors of the engine and the CLI.

/// Everything the engine can report.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Loading or running the target model failed.
    #[error(transparent)]
    Model(#[from] s4c_models::ModelError),
    /// Drafting, heads loading or training failed.
    #[error(transparent)]
    Draft(#[from] s4c_draft::DraftError),
    /// Acceptance failed.
    #[error(transparent)]
    Verify(#[from] s4c_verify::VerifyError),
    /// Building a tree failed.
    #[error(transparent)]
    Tree(#[from] s4c_tree::TreeError),
    /// An option is out of range or inconsistent; the message says what is allowed.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result alias of the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;
