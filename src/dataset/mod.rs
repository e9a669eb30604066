//! From kept dialogues to training data: variant specs, example extraction, each family's chat
//! template (and the Alpaca layout) with its loss mask, the 80/20 split by dialogue, token
//! statistics and charts.
//!
//! The flow is `Corpus` → [`extract`] (per `Variant`) → [`TokenCounts`] (each distinct text
//! tokenized once) → [`stats`], and → [`Segments`] → [`render`] (input ids and labels) → files.

pub(crate) mod build;
pub mod charts;
pub mod chat_format;
pub(crate) mod check;
pub(crate) mod extract;
pub(crate) mod load;
pub(crate) mod split;
pub(crate) mod stats;
pub(crate) mod template;
pub mod tokenizer;
pub(crate) mod variant;

pub use build::{
    build, prepare, BuildOptions, BuildReport, Inputs, Prepared, Selection, StatsFile,
};
pub use chat_format::{ChatTemplate, Format, Layout, Specials};
pub use check::{check, CheckReport};
pub use extract::{extract, Example, Extracted, Utterance};
pub use load::Corpus;
pub use split::{Manifest, Split, DEFAULT_SEED, VAL_FRACTION};
pub use stats::{markdown_table, VariantStats};
pub use template::{
    render, render_prompt, render_text, Fit, Overflow, Segments, TokenCounts, Tokenized, IGNORE,
};
pub use tokenizer::ChatTokenizer;
pub use variant::{Pairs, Variant};

use std::path::{Path, PathBuf};

/// Everything that can go wrong turning dialogues into training data. Each message is one line
/// that names the file (and field or dialogue) at fault.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    #[error(transparent)]
    Overlap(#[from] crate::fsutil::Overlap),
    /// A variant file that does not parse or asks for something impossible (`line` when the
    /// fault can be pinned to one).
    #[error("{}{}: {message}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    Variant {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// A `stats.json` that does not parse or holds a bad value.
    #[error("{}: {message}", path.display())]
    Stats { path: PathBuf, message: String },
    /// A tokenizer that cannot be loaded, lacks a special token, or fails to encode.
    #[error("{}: {message}", path.display())]
    Tokenizer { path: PathBuf, message: String },
    /// A dialogue with fewer pairs than a variant's examples need.
    #[error("variant {variant}: {message}")]
    TooShort { variant: String, message: String },
    /// A chart that could not be drawn.
    #[error("{}: cannot draw the chart: {message}", path.display())]
    Chart { path: PathBuf, message: String },
    /// Options that do not fit together, or a request for something that does not exist.
    #[error("{0}")]
    Invalid(String),
}

impl DatasetError {
    pub fn variant(path: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        DatasetError::Variant {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
    pub fn tokenizer(path: &Path, message: impl std::fmt::Display) -> Self {
        DatasetError::Tokenizer {
            path: path.to_path_buf(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = DatasetError> = std::result::Result<T, E>;
