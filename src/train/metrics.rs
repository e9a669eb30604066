//! `metrics.jsonl`: one JSON event a line, flushed as it happens.

use super::TrainError;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `metrics.jsonl`, tagged by its `event` field; the trainer writes these and
/// `compare` reads them back, so both sides share this one type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Start(Begin),
    Resume(Begin),
    Train {
        step: usize,
        #[serde(deserialize_with = "nan_if_null")]
        epoch: f64,
        #[serde(deserialize_with = "nan_if_null")]
        loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        lr: f64,
        #[serde(deserialize_with = "nan_if_null")]
        grad_norm: f64,
        tokens: usize,
        #[serde(deserialize_with = "nan_if_null")]
        tokens_per_s: f64,
        #[serde(deserialize_with = "nan_if_null")]
        elapsed_s: f64,
    },
    Eval {
        step: usize,
        #[serde(deserialize_with = "nan_if_null")]
        val_loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        elapsed_s: f64,
    },
    Checkpoint {
        step: usize,
        path: String,
    },
    CommonEval {
        step: usize,
        #[serde(deserialize_with = "nan_if_null")]
        common_val_loss: f64,
        tokens: usize,
    },
    End {
        step: usize,
        status: String,
        #[serde(deserialize_with = "nan_if_null")]
        best_val_loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        final_val_loss: f64,
        #[serde(deserialize_with = "nan_if_null")]
        elapsed_s: f64,
    },
}

/// serde_json writes a non-finite float as null (no evaluation yet: NaN); read it back as NaN.
fn nan_if_null<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// What a `start` or `resume` event records about the run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Begin {
    pub step: usize,
    pub total_steps: usize,
    pub train_examples: usize,
    pub val_examples: usize,
    pub device: String,
    pub dtype: String,
    pub model: String,
    pub variant: String,
}

impl Event {
    /// The optimizer step the event happened at.
    pub fn step(&self) -> usize {
        match self {
            Event::Start(b) | Event::Resume(b) => b.step,
            Event::Train { step, .. }
            | Event::Eval { step, .. }
            | Event::Checkpoint { step, .. }
            | Event::CommonEval { step, .. }
            | Event::End { step, .. } => *step,
        }
    }
}

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
                        serde_json::from_str::<Event>(l)
                            .ok()
                            .is_none_or(|e| e.step() <= last)
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

    pub fn log(&mut self, event: &Event) -> Result<(), TrainError> {
        let json = serde_json::to_string(event).expect("a metrics event serializes");
        let line = format!("{json}\n");
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| TrainError::io(&self.path, e))?;
        self.file.flush().map_err(|e| TrainError::io(&self.path, e))
    }
}

/// Reads the events of a metrics file (unparseable lines and unknown events are skipped).
pub fn read_events(path: &Path) -> Result<Vec<Event>, TrainError> {
    let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines as the trainer wrote them before the typed events (serde_json's `json!`, keys
    /// sorted): they must still read, and the typed writer must give the same JSON values.
    #[test]
    fn reads_and_writes_the_existing_format() {
        let old = [
            r#"{"device":"cpu","dtype":"F32","event":"start","model":"m","step":0,"total_steps":4,"train_examples":8,"val_examples":2,"variant":"model4"}"#,
            r#"{"elapsed_s":0.5,"epoch":0.25,"event":"train","grad_norm":1.5,"loss":2.25,"lr":0.001,"step":1,"tokens":40,"tokens_per_s":80.0}"#,
            r#"{"elapsed_s":0.75,"event":"eval","step":1,"val_loss":2.5}"#,
            r#"{"event":"checkpoint","path":"runs/x/checkpoints/step-1","step":1}"#,
            r#"{"common_val_loss":2.0,"event":"common_eval","step":1,"tokens":12}"#,
            r#"{"best_val_loss":null,"elapsed_s":1.0,"event":"end","final_val_loss":2.5,"status":"completed","step":1}"#,
        ];
        for line in old {
            let e: Event = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
            let back: serde_json::Value = serde_json::to_value(&e).unwrap();
            let orig: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(back, orig, "{line}");
        }
        let end: Event = serde_json::from_str(old[5]).unwrap();
        assert!(matches!(end, Event::End { best_val_loss, .. } if best_val_loss.is_nan()));
        let e: Event = serde_json::from_str(old[1]).unwrap();
        assert_eq!(e.step(), 1);
        assert!(matches!(e, Event::Train { loss, .. } if loss == 2.25));
    }

    #[test]
    fn resume_drops_later_events_and_unknown_lines_stay_out_of_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open(&path, None).unwrap();
        for step in 1..=3 {
            log.log(&Event::Eval {
                step,
                val_loss: step as f64,
                elapsed_s: 0.0,
            })
            .unwrap();
        }
        drop(log);
        let mut log = MetricsLog::open(&path, Some(2)).unwrap();
        log.log(&Event::Checkpoint {
            step: 2,
            path: "p".into(),
        })
        .unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"event\":\"future\",\"step\":9}\nnot json\n"))
            .unwrap();
        let steps: Vec<usize> = read_events(&path)
            .unwrap()
            .iter()
            .map(Event::step)
            .collect();
        assert_eq!(steps, [1, 2, 2]);
    }
}
