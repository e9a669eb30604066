//! Training: one LoRA run per dataset variant, exact resume from checkpoints, sweeps.

pub mod adamw;
pub mod bench;
pub mod checkpoint;
pub(crate) mod config;
pub mod data;
pub(crate) mod metrics;
#[cfg(test)]
mod no_subnormals;
pub(crate) mod schedule;
pub mod score;
pub mod sweep;
pub mod trainer;

pub use config::{Schedule, TrainConfig};
pub use trainer::{train, RunSpec, Summary};

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    /// A file that was read but does not parse (JSON, TOML, safetensors).
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("invalid training config: {0}")]
    Config(String),
    #[error("{0}")]
    Data(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{run} holds an earlier run ({state}); pass --resume to continue it or --fresh to start over")]
    Exists { run: String, state: String },
    #[error("cannot resume {run}: {reason}")]
    Resume { run: String, reason: String },
    #[error("loss is {value} at step {step}; last good checkpoint: {checkpoint} (lower the learning rate or check the data)")]
    NonFinite {
        step: usize,
        value: f64,
        checkpoint: String,
    },
    #[error(
        "interrupted at step {step}; checkpoint saved to {checkpoint}; continue with --resume"
    )]
    Interrupted { step: usize, checkpoint: String },
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Io(#[from] crate::fsutil::FileError),
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl TrainError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        TrainError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// `path` does not parse; `source` says where and why.
    pub fn parse(path: &Path, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        TrainError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        }
    }

    /// Reading or writing `path` failed.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        TrainError::Io(crate::fsutil::FileError::new(path, source))
    }
}
