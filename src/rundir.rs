//! The layout of a run folder (`runs/<variant>/`), spelled out here and nowhere else:
//!
//! ```text
//! runs/<variant>/
//!   data/            train.jsonl, val.jsonl, common.jsonl, split.json, stats.json (`data build`)
//!   config.json      the training options
//!   metrics.jsonl    one event a line
//!   summary.json     written when the run ends
//!   checkpoints/     step-N/ (adapter, optimizer, state)
//!   adapter/         the last step's adapter
//!   best/            the adapter of the best validation loss
//!   .lock            held while a process writes here
//! ```

use std::path::{Path, PathBuf};

/// A run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// `<runs>/<variant>`.
    pub fn of(runs: &Path, variant: &str) -> Self {
        Self::new(runs.join(variant))
    }

    /// The run an adapter folder belongs to (`<run>/best`, `<run>/adapter`,
    /// `<run>/checkpoints/step-N`): the first of its parent and grandparent that holds
    /// `data/stats.json`.
    pub fn containing(adapter: &Path) -> Option<Self> {
        adapter
            .ancestors()
            .skip(1)
            .take(2)
            .map(Self::new)
            .find(|r| r.data().stats().is_file())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder's own name (the variant's, for runs made by `--variant`).
    pub fn name(&self) -> Option<String> {
        self.root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    }

    /// Where `data build` writes the run's dataset.
    pub fn data(&self) -> DataDir {
        DataDir::new(self.root.join("data"))
    }

    pub fn config(&self) -> PathBuf {
        self.root.join("config.json")
    }

    pub fn metrics(&self) -> PathBuf {
        self.root.join("metrics.jsonl")
    }

    pub fn summary(&self) -> PathBuf {
        self.root.join("summary.json")
    }

    pub fn checkpoints(&self) -> PathBuf {
        self.root.join("checkpoints")
    }

    /// The last step's adapter.
    pub fn adapter(&self) -> PathBuf {
        self.root.join("adapter")
    }

    /// The last step's whole model (full-parameter runs), in the Hub layout.
    pub fn model(&self) -> PathBuf {
        self.root.join("model")
    }

    /// The adapter (or, for a full-parameter run, the model) of the best validation loss.
    pub fn best(&self) -> PathBuf {
        self.root.join("best")
    }

    /// The output of `train` when a sweep runs it as a child process.
    pub fn log(&self) -> PathBuf {
        self.root.join("train.log")
    }

    /// What a run writes (never its data): folders, then files. `--fresh` removes them.
    pub fn outputs(&self) -> ([PathBuf; 4], [PathBuf; 3]) {
        (
            [
                self.checkpoints(),
                self.adapter(),
                self.model(),
                self.best(),
            ],
            [self.metrics(), self.summary(), self.config()],
        )
    }
}

/// A dataset folder: a run's `data/`, or any folder given to `train --data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Tokenized training examples.
    pub fn train(&self) -> PathBuf {
        self.root.join("train.jsonl")
    }

    /// Tokenized validation examples (the variant's own windows).
    pub fn val(&self) -> PathBuf {
        self.root.join("val.jsonl")
    }

    /// The held-out dialogues in full: the metric every variant shares.
    pub fn common(&self) -> PathBuf {
        self.root.join("common.jsonl")
    }

    /// Which dialogues went where.
    pub fn split(&self) -> PathBuf {
        self.root.join("split.json")
    }

    /// The variant, the tokenizer and the token statistics.
    pub fn stats(&self) -> PathBuf {
        self.root.join("stats.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_adapter_finds_its_run_one_or_two_folders_up() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::of(dir.path(), "model3");
        std::fs::create_dir_all(run.data().root()).unwrap();
        assert_eq!(RunDir::containing(&run.best()), None, "no stats.json yet");
        std::fs::write(run.data().stats(), "{}").unwrap();
        assert_eq!(RunDir::containing(&run.best()), Some(run.clone()));
        let step = run.checkpoints().join("step-10");
        assert_eq!(RunDir::containing(&step), Some(run.clone()));
        assert_eq!(RunDir::containing(&step.join("deeper")), None);
        assert_eq!(run.name().as_deref(), Some("model3"));
    }
}
