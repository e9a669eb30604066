//! `socratune model score`: the token-weighted cross-entropy of a model (with or without an
//! adapter) on any tokenized file in the `train.jsonl` format — the trainer's own evaluation,
//! so a score and a run's val loss agree on the same data.

use super::data::{load_examples, Example};
use super::trainer::evaluate;
use super::TrainError;
use crate::model::CausalLm;
use candle_core::Device;
use serde::Serialize;
use std::path::Path;

/// The mean loss over every supervised token (labels shifted as in Hugging Face).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    pub loss: f64,
    /// Supervised tokens the mean is over.
    pub tokens: usize,
    pub examples: usize,
    pub perplexity: f64,
}

/// Scores `model` on the examples of `data`, `batch` at a time, without a gradient graph.
pub fn score_file(
    model: &CausalLm,
    data: &Path,
    batch: usize,
    device: &Device,
) -> Result<Score, TrainError> {
    if batch == 0 {
        return Err(TrainError::Config("--batch must be at least 1".into()));
    }
    let file = load_examples(data, model.cfg.max_position_embeddings)?;
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    let loss = evaluate(
        model,
        &file.examples,
        batch,
        pad,
        model.cfg.vocab_size,
        device,
    )?;
    Ok(Score {
        loss,
        tokens: file.examples.iter().map(Example::supervised).sum(),
        examples: file.examples.len(),
        perplexity: loss.exp(),
    })
}
