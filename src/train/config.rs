//! Training options: `configs/train.toml`, overridden by command-line flags, validated once.

use super::batching::Batching;
use super::TrainError;
use crate::model::lora::{LoraConfig, Target};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// Everything that decides a run. Field names are the TOML keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Hub repo id or local folder of the base model.
    pub model: String,
    pub revision: Option<String>,
    /// cpu, cuda, cuda:N, metal or auto.
    pub device: String,
    /// f32, bf16, f16 or auto.
    pub dtype: String,
    pub lora_r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f32,
    /// Any of q,k,v,o,gate,up,down.
    pub lora_targets: Vec<String>,
    pub use_rslora: bool,
    /// Full-parameter training: every weight trained (f32 master weights and AdamW state), a
    /// whole model written instead of an adapter; the `lora_*` keys are then unused.
    pub full: bool,
    pub epochs: usize,
    /// When set, train exactly this many optimizer steps (cycling through epochs).
    pub max_steps: Option<usize>,
    pub micro_batch: usize,
    pub grad_accum: usize,
    /// `random` or `grouped` (similar lengths share a micro-batch); see `train::batching`.
    /// Left out of the serialized config at its default, so that the hashes of runs made
    /// before it existed do not change.
    #[serde(skip_serializing_if = "Batching::is_random")]
    pub batching: Batching,
    /// When set, micro-batches are filled up to this many tokens (rows × longest row, padding
    /// included) instead of `micro_batch` examples each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micro_batch_tokens: Option<usize>,
    /// Several examples a row of `max_seq_len` tokens, kept apart by the attention mask and
    /// positions (see `train::batching`); `micro_batch` then counts rows. Left out of the
    /// serialized config when off, like `batching`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub pack: bool,
    /// Longest example (tokens); longer ones are refused, not cut.
    pub max_seq_len: usize,
    pub eval_batch: usize,
    pub learning_rate: f64,
    pub schedule: Schedule,
    pub warmup_steps: Option<usize>,
    /// Used when `warmup_steps` is not set.
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    /// Global gradient-norm clip; 0 disables.
    pub max_grad_norm: f64,
    pub seed: u64,
    /// Evaluate every N steps (and at the end); 0: only at the end.
    pub eval_every: usize,
    /// Checkpoint every N steps (and at the end); 0: only at the end.
    pub save_every: usize,
    /// Checkpoints kept (the newest); at least 1.
    pub keep_checkpoints: usize,
    /// Stop after this many evaluations without improvement; 0: never.
    pub early_stopping_patience: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            model: "google/gemma-2-2b-it".into(),
            revision: None,
            device: "auto".into(),
            dtype: "auto".into(),
            lora_r: 16,
            lora_alpha: 32.0,
            lora_dropout: 0.05,
            lora_targets: ["q", "k", "v", "o", "gate", "up", "down"]
                .map(String::from)
                .to_vec(),
            use_rslora: false,
            full: false,
            epochs: 3,
            max_steps: None,
            micro_batch: 4,
            grad_accum: 4,
            batching: Batching::Random,
            micro_batch_tokens: None,
            pack: false,
            max_seq_len: 1024,
            eval_batch: 8,
            learning_rate: 2e-4,
            schedule: Schedule::Cosine,
            warmup_steps: None,
            warmup_ratio: 0.03,
            weight_decay: 0.0,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            max_grad_norm: 1.0,
            seed: 42,
            eval_every: 50,
            save_every: 50,
            keep_checkpoints: 3,
            early_stopping_patience: 0,
        }
    }
}

/// Fields that may change between an interrupted run and its resumption: they do not change
/// the adapter that comes out.
const RESUMABLE_CHANGES: [&str; 4] = ["save_every", "keep_checkpoints", "device", "eval_batch"];

impl TrainConfig {
    /// Reads a TOML file; unknown keys are refused with their name, and invalid values with
    /// the file's name and the field's.
    pub fn from_toml_file(path: &Path) -> Result<Self, TrainError> {
        let text = std::fs::read_to_string(path).map_err(|e| TrainError::io(path, e))?;
        let c: Self = toml::from_str(&text).map_err(|e| TrainError::parse(path, e))?;
        c.validate()
            .map_err(|e| TrainError::file(path, e.to_string()))?;
        Ok(c)
    }

    pub fn lora(&self) -> Result<LoraConfig, TrainError> {
        let mut targets = Vec::new();
        for t in &self.lora_targets {
            targets.push(Target::parse(t)?);
        }
        targets.sort();
        targets.dedup();
        let l = LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            targets,
            use_rslora: self.use_rslora,
        };
        l.validate()?;
        Ok(l)
    }

    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::Config(m));
        self.lora()?;
        for (name, v) in [
            ("micro_batch", self.micro_batch),
            ("grad_accum", self.grad_accum),
            ("max_seq_len", self.max_seq_len),
            ("eval_batch", self.eval_batch),
            ("keep_checkpoints", self.keep_checkpoints),
        ] {
            if v == 0 {
                return bad(format!("{name} must be at least 1"));
            }
        }
        if self.max_steps.is_none() && self.epochs == 0 {
            return bad("epochs must be at least 1 (or set max_steps)".into());
        }
        if self.micro_batch_tokens == Some(0) {
            return bad("micro_batch_tokens must be at least 1 (or left out)".into());
        }
        if self.pack && self.batching == Batching::Grouped {
            // Packed rows are already full: grouping would have nothing left to remove.
            return bad(
                "pack = true and batching = \"grouped\" together: packing leaves no padding to group away; use one of them".into(),
            );
        }
        if self.max_steps == Some(0) {
            return bad("max_steps must be at least 1".into());
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad(format!(
                "learning_rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return bad(format!(
                "warmup_ratio must be in [0, 1), got {}",
                self.warmup_ratio
            ));
        }
        for (name, b) in [
            ("adam_beta1", self.adam_beta1),
            ("adam_beta2", self.adam_beta2),
        ] {
            if !(0.0..1.0).contains(&b) {
                return bad(format!("{name} must be in [0, 1), got {b}"));
            }
        }
        if self.adam_eps <= 0.0 || self.weight_decay < 0.0 || self.max_grad_norm < 0.0 {
            return bad(
                "adam_eps must be positive; weight_decay and max_grad_norm non-negative".into(),
            );
        }
        Ok(())
    }

    /// The fields that differ from `other` and would change the result of a resumed run.
    pub fn resume_conflicts(&self, other: &TrainConfig) -> Vec<String> {
        let a = serde_json::to_value(self).expect("config serializes");
        let b = serde_json::to_value(other).expect("config serializes");
        let (a, b) = (
            a.as_object().expect("object"),
            b.as_object().expect("object"),
        );
        // Both sides' keys: a field left out at its default on one side still counts.
        let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let value = |m: &serde_json::Map<String, serde_json::Value>, k: &String| {
            m.get(k).cloned().unwrap_or_default()
        };
        keys.into_iter()
            .filter(|k| !RESUMABLE_CHANGES.contains(&k.as_str()) && a.get(*k) != b.get(*k))
            .map(|k| format!("{k}: {} → {}", value(b, k), value(a, k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_overrides_defaults_and_rejects_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.toml");
        std::fs::write(
            &p,
            "learning_rate = 1e-3\nschedule = \"linear\"\nlora_targets = [\"q\", \"v\"]\n",
        )
        .unwrap();
        let c = TrainConfig::from_toml_file(&p).unwrap();
        assert_eq!(c.learning_rate, 1e-3);
        assert_eq!(c.schedule, Schedule::Linear);
        assert_eq!(
            c.lora().unwrap().targets,
            vec![Target::QProj, Target::VProj]
        );
        assert_eq!(c.micro_batch, 4);
        std::fs::write(&p, "batching = \"grouped\"\nmicro_batch_tokens = 4096\n").unwrap();
        let c = TrainConfig::from_toml_file(&p).unwrap();
        assert_eq!(
            (c.batching, c.micro_batch_tokens),
            (Batching::Grouped, Some(4096))
        );
        for (text, field) in [
            ("batching = \"sorted\"\n", "batching"),
            ("micro_batch_tokens = 0\n", "micro_batch_tokens"),
        ] {
            std::fs::write(&p, text).unwrap();
            let e = TrainConfig::from_toml_file(&p).unwrap_err().to_string();
            assert!(e.contains("train.toml") && e.contains(field), "{e}");
        }
        std::fs::write(&p, "learning_rat = 1e-3\n").unwrap();
        let e = TrainConfig::from_toml_file(&p).unwrap_err().to_string();
        assert!(
            e.contains("train.toml") && e.contains("learning_rat"),
            "{e}"
        );
    }

    #[test]
    fn validation_names_the_field() {
        let c = TrainConfig {
            micro_batch: 0,
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("micro_batch"));
        let c = TrainConfig {
            lora_targets: vec!["lm_head".into()],
            ..Default::default()
        };
        assert!(c.validate().unwrap_err().to_string().contains("lm_head"));
        assert!(TrainConfig::default().validate().is_ok());
    }

    #[test]
    fn default_batching_leaves_the_serialized_config_as_before() {
        // Runs made before `batching` existed must keep their config hash.
        let v = serde_json::to_value(TrainConfig::default()).unwrap();
        assert!(
            v.get("batching").is_none()
                && v.get("micro_batch_tokens").is_none()
                && v.get("pack").is_none()
        );
        let g = TrainConfig {
            batching: Batching::Grouped,
            micro_batch_tokens: Some(2048),
            ..Default::default()
        };
        assert_eq!(
            g.resume_conflicts(&TrainConfig::default()),
            vec![
                "batching: null → \"grouped\"".to_string(),
                "micro_batch_tokens: null → 2048".to_string()
            ]
        );
        assert_eq!(TrainConfig::default().resume_conflicts(&g).len(), 2);
    }

    #[test]
    fn the_shipped_config_packs_and_pack_with_grouping_is_refused() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/train.toml");
        let c = TrainConfig::from_toml_file(&p).unwrap();
        assert!(c.pack && c.micro_batch_tokens == Some(1024), "{c:?}");
        // Without the key: off, and left out of the serialized config (old runs' hashes).
        assert!(!TrainConfig::default().pack);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["pack"], serde_json::json!(true));
        let g = TrainConfig {
            batching: Batching::Grouped,
            ..c
        };
        let e = g.validate().unwrap_err().to_string();
        assert!(e.contains("pack = true") && e.contains("grouped"), "{e}");
    }

    #[test]
    fn resume_conflicts_ignore_harmless_fields() {
        let a = TrainConfig::default();
        let b = TrainConfig {
            save_every: 7,
            device: "cpu".into(),
            ..a.clone()
        };
        assert!(a.resume_conflicts(&b).is_empty());
        let c = TrainConfig {
            learning_rate: 1.0,
            ..a.clone()
        };
        assert_eq!(
            c.resume_conflicts(&a),
            vec!["learning_rate: 0.0002 → 1.0".to_string()]
        );
    }
}
