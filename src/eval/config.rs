//! `configs/eval.toml`: the fixed sampling every run's replies are generated with, how many
//! held-out prompts, how many are decoded at once, the resamples of the intervals, and how the
//! base model is prompted.

use super::{EvalError, Result};
use crate::model::generate::SamplingRequest;
use serde::Deserialize;
use std::path::Path;

pub const DEFAULT_CONFIG: &str = "configs/eval.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out prompts per run (all of them when there are fewer).
    #[serde(default = "default_prompts")]
    pub prompts: usize,
    /// Seed of the prompt sample, of the bootstrap, and of sampling (the reply to prompt i
    /// uses seed + i, the same for every run).
    #[serde(default)]
    pub seed: u64,
    /// Bootstrap resamples for the 95 % intervals.
    #[serde(default = "default_resamples")]
    pub resamples: usize,
    /// Wins added each way to every compared pair before the Bradley–Terry fit.
    #[serde(default = "default_prior")]
    pub bt_prior: f64,
    /// Prompts decoded at once (left-padded, one KV cache with a row each).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default)]
    pub sampling: SamplingRequest,
    #[serde(default)]
    pub base: BaseFormat,
    #[serde(default)]
    pub judge: JudgeTemplates,
}

/// How the base model (no adapter) is prompted: it was trained on no variant.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaseFormat {
    /// Pairs the reply sees (None: the whole history).
    pub window: Option<usize>,
    /// Put before the first user turn of the window.
    #[serde(default)]
    pub prefix: String,
}

/// Prompt templates (in the synth `--prompts` folder) for judging one reply and a pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JudgeTemplates {
    #[serde(default = "default_reply_template")]
    pub reply: String,
    #[serde(default = "default_pair_template")]
    pub pair: String,
}

impl Default for JudgeTemplates {
    fn default() -> Self {
        Self {
            reply: default_reply_template(),
            pair: default_pair_template(),
        }
    }
}

fn default_prompts() -> usize {
    100
}
fn default_batch_size() -> usize {
    8
}
fn default_resamples() -> usize {
    2000
}
fn default_prior() -> f64 {
    0.5
}
fn default_reply_template() -> String {
    "judge_reply.txt".into()
}
fn default_pair_template() -> String {
    "judge_pair.txt".into()
}

impl Default for EvalConfig {
    fn default() -> Self {
        toml::from_str("").expect("the defaults parse")
    }
}

impl EvalConfig {
    /// Reads the file; a missing default file gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() && path == Path::new(DEFAULT_CONFIG) {
            return Ok(Self::default());
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::fsutil::FileError::new(path, e))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let c: Self = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start].matches('\n').count() + 1)
                .map_or(String::new(), |l| format!(":{l}"));
            EvalError::Config(format!("{}{line}: {}", path.display(), e.message().trim()))
        })?;
        let bad = |m: &str| Err(EvalError::Config(format!("{}: {m}", path.display())));
        if c.prompts == 0 {
            return bad("prompts must be at least 1");
        }
        if c.resamples == 0 {
            return bad("resamples must be at least 1");
        }
        c.check_batch_size()
            .map_err(|m| EvalError::Config(format!("{}: {m}", path.display())))?;
        if !(c.bt_prior >= 0.0 && c.bt_prior.is_finite()) {
            return bad("bt_prior must be ≥ 0");
        }
        if c.base.window == Some(0) {
            return bad(
                "[base] window must be at least 1 pair (leave it out for the whole history)",
            );
        }
        Ok(c)
    }

    /// The most prompts a batch may hold: each row keeps a KV cache of its whole context.
    pub const MAX_BATCH_SIZE: usize = 1024;

    /// Whether `batch_size` is usable (the message names the key, without a file).
    pub fn check_batch_size(&self) -> std::result::Result<(), String> {
        let n = self.batch_size;
        if !(1..=Self::MAX_BATCH_SIZE).contains(&n) {
            return Err(format!(
                "batch_size must be between 1 and {}, got {n}",
                Self::MAX_BATCH_SIZE
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(DEFAULT_CONFIG);
        let c = EvalConfig::load(&p).unwrap();
        assert!(c.sampling.temperature.is_some() && c.sampling.max_new_tokens.is_some());
        assert_eq!(c.judge.reply, "judge_reply.txt");
    }

    #[test]
    fn bad_values_name_the_file_and_line() {
        let e = EvalConfig::parse(
            "prompts = 10\n[sampling]\ntemprature = 1\n",
            Path::new("e.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("e.toml:3:") && e.contains("temprature"),
            "{e}"
        );
        let e = EvalConfig::parse("prompts = 0\n", Path::new("e.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("prompts must be at least 1"), "{e}");
        let e = EvalConfig::parse("batch_size = 0\n", Path::new("e.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "e.toml: batch_size must be between 1 and 1024, got 0");
        let c = EvalConfig::parse("batch_size = 3\n", Path::new("e.toml")).unwrap();
        assert_eq!(c.batch_size, 3);
    }
}
