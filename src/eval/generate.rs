//! The one place eval touches the model: load a base model once, put each run's adapter on it
//! in turn, render a prompt the way that run was trained (chat's prompt code), and generate
//! replies to a batch of prompts, decoded together ([`generate_batch`]: left-padded, one KV
//! cache with a row per prompt, each with its own seed, so a reply does not depend on what
//! else is in its batch).

use super::Result;
use crate::chat::load::{load_base, use_adapter, ModelSpec};
use crate::chat::{stop_tokens, Loaded, Prompt, PromptFormat, Reply, RunInfo};
use crate::dataset::Utterance;
use crate::model::generate::{decode, generate_batch, SamplingParams};
use std::path::{Path, PathBuf};

/// A base model in memory, with one adapter (or none) on it.
pub struct Replier {
    loaded: Loaded,
    stop: Vec<u32>,
    /// The adapter on the model now (None: the base model).
    adapter: Option<PathBuf>,
}

/// One prompt of a batch: its token ids and sampling (each its own seed).
pub struct Job<'a> {
    pub ids: &'a [u32],
    pub params: SamplingParams,
}

impl Replier {
    /// Loads the base model `adapters` share (or `spec.model`) with the tokenizer of the first
    /// run that names one (or `spec.tokenizer`, or the model's).
    pub fn load(spec: &ModelSpec, adapters: &[&Path], runs: &[Option<&RunInfo>]) -> Result<Self> {
        let loaded = load_base(spec, adapters, runs)?;
        let stop = stop_tokens(&loaded.model.cfg, &loaded.tokenizer);
        Ok(Self {
            loaded,
            stop,
            adapter: None,
        })
    }

    /// What was loaded, where (one line).
    pub fn summary(&self) -> &str {
        &self.loaded.summary
    }

    /// The base model as the adapters (or `--model`) name it.
    pub fn base(&self) -> &str {
        &self.loaded.base
    }

    /// Puts `dir`'s adapter on the model (None: the base model alone); a no-op when it is on.
    pub fn use_adapter(&mut self, dir: Option<&Path>) -> Result<()> {
        if self.adapter.as_deref() != dir || dir.is_none() {
            self.adapter = None;
            use_adapter(&mut self.loaded.model, dir)?;
            self.adapter = dir.map(Path::to_path_buf);
        }
        Ok(())
    }

    /// The prompt for a reply to `history`, cut and prefixed by `format`, leaving room for
    /// `max_new_tokens` (the oldest rounds go when it does not fit, as in chat).
    pub fn prompt(
        &self,
        format: &PromptFormat,
        history: &[Utterance],
        max_new_tokens: usize,
    ) -> Result<Prompt> {
        let context = self.loaded.model.cfg.max_position_embeddings;
        Ok(format.build(&self.loaded.tokenizer, history, context, max_new_tokens)?)
    }

    /// Replies to every job, in order (text trimmed as chat shows it), all decoded as one
    /// batch (the caller sizes it).
    pub fn generate(&self, jobs: &[Job]) -> Result<Vec<Reply>> {
        let prompts: Vec<&[u32]> = jobs.iter().map(|j| j.ids).collect();
        let params: Vec<SamplingParams> = jobs.iter().map(|j| j.params.clone()).collect();
        let out = generate_batch(&self.loaded.model, &prompts, &params, &self.stop)?;
        out.into_iter()
            .map(|(ids, stop)| {
                let text = decode(self.loaded.tokenizer.inner(), &ids)?;
                Ok(Reply {
                    text: text.trim().to_string(),
                    tokens: ids.len(),
                    stop,
                })
            })
            .collect()
    }
}
