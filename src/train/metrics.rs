//! `metrics.jsonl`: one JSON event a line, flushed as it happens.

use super::TrainError;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// Opens the log for appending. On resume, events after `keep_until_step` (written after
    /// the checkpoint being resumed) are dropped so that they are not logged twice.
    pub fn open(path: &Path, keep_until_step: Option<usize>) -> Result<Self, TrainError> {
        if let Some(last) = keep_until_step {
            if path.exists() {
                let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
                let kept: String = text
                    .lines()
                    .filter(|l| {
                        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
                        v.get("step")
                            .and_then(Value::as_u64)
                            .is_none_or(|s| s as usize <= last)
                    })
                    .map(|l| format!("{l}\n"))
                    .collect();
                crate::fsutil::write_atomic(path, kept.as_bytes())?;
            }
        } else if path.exists() {
            std::fs::remove_file(path).map_err(|e| TrainError::io(path, e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| TrainError::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn log(&mut self, event: Value) -> Result<(), TrainError> {
        let line = format!("{event}\n");
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads the events of a metrics file (unparseable lines are skipped).
pub fn read_events(path: &Path) -> Result<Vec<Value>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}
