//! Comparing runs: a Markdown table, the best variant named, loss curves as SVG.

pub(crate) mod compare;
pub(crate) mod curves;

pub use compare::{collect, compare, markdown, RunReport};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0}")]
    NoRuns(String),
    #[error("{path}: cannot draw the chart: {message}")]
    Chart { path: String, message: String },
    #[error(transparent)]
    Io(#[from] crate::fsutil::FileError),
    #[error(transparent)]
    Train(#[from] crate::train::TrainError),
}
