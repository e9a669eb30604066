//! Gemma-2 with LoRA: config, loading (local folder or Hub), the training forward pass, the
//! cached generation path, PEFT adapter IO and merging.

pub mod adapter;
pub mod config;
pub mod device;
pub mod export;
pub mod gemma2;
pub mod generate;
pub mod hub;
pub mod kernels;
pub mod lora;
pub mod loss;
pub mod ops;
pub mod weights;

pub use config::{Activation, Gemma2Config};
pub use gemma2::{Gemma2, KvCache};
pub use hub::Source;
pub use lora::{LoraConfig, Target};

use candle_core::{DType, Device};
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
        ModelError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<crate::fsutil::FileError> for ModelError {
    fn from(e: crate::fsutil::FileError) -> Self {
        ModelError::file(&e.path, e.source.to_string())
    }
}

/// max |a − b| over all elements (unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Loads a base model (config + weights) from a folder or the Hub.
pub fn load(src: &Source, dtype: DType, device: &Device) -> Result<Gemma2> {
    let cfg = Gemma2Config::from_file(&src.file("config.json")?)?;
    let weights = weights::Weights::open(src)?;
    Gemma2::from_weights(&cfg, &weights, dtype, device)
}
