//! The synth stage: AI×AI dialogue generation, LLM judging, human review and filtering, over
//! any OpenAI-compatible chat-completions API.
//!
//! Every paid call goes through a [`journal::Journal`], so a run killed at any moment resumes
//! where it stopped without paying twice; every output file is written atomically or appended
//! one whole line at a time.

pub(crate) mod backend;
pub mod calibrate;
pub mod client;
pub mod config;
pub mod filter;
pub mod generate;
pub(crate) mod journal;
pub mod judge;
pub mod limiter;
pub(crate) mod manifest;
pub mod minhash;
pub(crate) mod pool;
pub mod progress;
pub(crate) mod prompts;
pub(crate) mod retry;
pub mod review;
mod sidecar;
pub mod tui;

pub use client::{ChatRequest, Client, Completion, Message, Sampling};
pub use config::{EndpointConfig, Limits, SynthConfig, Transcript};
pub use journal::Journal;
pub use sidecar::sidecar;

use std::path::PathBuf;

/// Everything that can go wrong in the synth stage. Messages never contain the API key: every
/// text that comes from a server is redacted before it lands here.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    /// A bad configuration file or argument.
    #[error("{0}")]
    Config(String),
    /// A prompt template with missing, unknown or malformed placeholders.
    #[error("{}: {message}", path.display())]
    Template { path: PathBuf, message: String },
    /// The environment variable that should hold the API key is not set.
    #[error("environment variable {var} is not set (it should hold the API key for {url})")]
    MissingKey { var: String, url: String },
    /// A status the server will answer the same way however often we ask (400, 401, 403, 404…).
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    /// The account is out of credit; retrying cannot help.
    #[error("{url}: quota exhausted (insufficient_quota): {message}")]
    Quota { url: String, message: String },
    /// Every attempt failed with a retryable error.
    #[error("{url}: gave up after {attempts} attempt(s); last error: {last}")]
    RetriesExhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    /// The server asked us to wait longer than we are willing to.
    #[error("{url}: server asked to wait {wait_s:.0} s (more than max_retry_wait_s = {max_s:.0})")]
    WaitTooLong {
        url: String,
        wait_s: f64,
        max_s: f64,
    },
    /// The reply was cut off by the token limit (`finish_reason = length`).
    #[error("reply cut off at the token limit (finish_reason = length); raise max_tokens")]
    Length,
    /// The reply had no text.
    #[error("empty reply (finish_reason = {finish_reason})")]
    EmptyReply { finish_reason: String },
    /// A journal line that cannot be read (not the torn last line, which is repaired).
    #[error("{}:{line}: {message}", path.display())]
    Journal {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// The terminal could not be driven.
    #[error("terminal: {0}")]
    Terminal(#[source] std::io::Error),
    /// Review was asked for without a terminal to review in.
    #[error(
        "terminal: review needs an interactive terminal; --apply writes the decisions saved so far"
    )]
    NotInteractive,
    /// Too many items failed one after another; the run stopped.
    #[error("{count} items failed in a row, so the run stopped (a setting is probably wrong); last error: {last}")]
    FailureStreak { count: usize, last: String },
    /// The judge never gave a valid answer.
    #[error("no valid answer after {attempts} attempt(s): {error}")]
    InvalidJudgement {
        attempts: u32,
        error: String,
        output: Option<String>,
    },
    /// The run finished, but some items failed (listed in `file`).
    #[error("{failed} of {total} failed (see {}); rerun the same command to ask again for them (failed answers are not replayed)", file.display())]
    Incomplete {
        failed: usize,
        total: usize,
        file: PathBuf,
    },
    /// The run was stopped (Ctrl-C); rerunning resumes it.
    #[error("interrupted; rerun the same command to resume")]
    Interrupted,
}

impl SynthError {
    /// Whether this error will repeat on every further call, so the whole run should stop
    /// instead of failing each remaining dialogue the same way.
    pub fn is_fatal(&self) -> bool {
        match self {
            SynthError::Length
            | SynthError::EmptyReply { .. }
            | SynthError::InvalidJudgement { .. }
            | SynthError::RetriesExhausted { .. } => false,
            // A 400 is usually about one request (too long a context); others are not.
            SynthError::Http { status, .. } => *status != 400,
            _ => true,
        }
    }
}

/// Parses a comma-separated list of temperatures, e.g. `0.3,0.7`.
pub fn parse_temperatures(s: &str) -> Result<Vec<f64>, SynthError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let t: f64 = part
            .parse()
            .map_err(|_| SynthError::Config(format!("temperature `{part}` is not a number")))?;
        if !(0.0..=2.0).contains(&t) {
            return Err(SynthError::Config(format!(
                "temperature {t} is outside 0–2"
            )));
        }
        out.push(t);
    }
    if out.is_empty() {
        return Err(SynthError::Config("no temperatures given".into()));
    }
    Ok(out)
}
