//! Gemma-2 with LoRA: config, loading (local folder or Hub), the training forward pass, the
//! cached generation path, PEFT adapter IO and merging.

pub mod config;
pub mod hub;

pub use config::{Activation, Gemma2Config};
pub use hub::Source;

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Something wrong with a file: missing, malformed, a tensor of the wrong shape…
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{repo}: {message}")]
    Hub { repo: String, message: String },
    /// A request that does not fit the model (adapter rank, targets, options).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        ModelError::File { path: path.to_path_buf(), message: message.into() }
    }
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
