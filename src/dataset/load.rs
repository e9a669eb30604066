//! The dialogue file a dataset is built from, with its hash so that a build can say exactly
//! which corpus it came from.

use super::Result;
use crate::corpus::{load_dialogues, BadLine, Dialogue, LoadOptions};
use crate::fsutil::sha256_file;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Corpus {
    pub path: PathBuf,
    pub sha256: String,
    /// Every valid dialogue, in file order (kept or not: variants choose).
    pub dialogues: Vec<Dialogue>,
    /// Lines left out under `--skip-bad`, each with its reason (empty otherwise).
    pub skipped: Vec<BadLine>,
}

impl Corpus {
    /// Reads and validates a dialogue file; a bad line is fatal unless `skip_bad`.
    pub fn load(path: &Path, skip_bad: bool) -> Result<Self> {
        let sha256 = sha256_file(path)?;
        let loaded = load_dialogues(
            path,
            LoadOptions {
                skip_bad,
                catalog: None,
            },
        )?;
        Ok(Corpus {
            path: path.to_path_buf(),
            sha256,
            dialogues: loaded.records.into_iter().map(|(_, d)| d).collect(),
            skipped: loaded.skipped,
        })
    }

    /// The ids of every dialogue in the file, which the split is decided over.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.dialogues.iter().map(|d| d.id.as_str())
    }
}
