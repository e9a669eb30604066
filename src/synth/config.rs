//! The synth configuration file (`configs/synth.toml`): one section per role (`[socrates]`,
//! `[user]`, `[judge]`), each naming an OpenAI-compatible endpoint and its sampling
//! parameters, an optional `[defaults]` section merged under every role, and `[limits]`.
//!
//! The API key is never in this file: `api_key_env` names the environment variable that
//! holds it.

use super::backend::{BackendChoice, FormatMode};
use super::SynthError;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One role's endpoint and sampling parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Base URL up to and including the version, e.g. `https://api.openai.com/v1`;
    /// `/chat/completions` is appended.
    pub base_url: String,
    pub model: String,
    /// Name of the environment variable holding the key (never the key itself).
    #[serde(default = "default_key_env")]
    pub api_key_env: String,
    /// Which backend's quirks to follow; `auto` guesses from the base URL.
    #[serde(default)]
    pub backend: BackendChoice,
    /// How structured output is requested; defaults to the backend's preference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<FormatMode>,
    /// Send the role prompt as a `system` message (false: fold it into the first user
    /// message, for chat templates without a system role, such as Gemma's).
    #[serde(default = "yes")]
    pub system_role: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequency_penalty: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence_penalty: Option<f64>,
    /// Seconds before one HTTP request is abandoned (and retried).
    #[serde(default = "default_timeout")]
    pub timeout_s: f64,
}

/// Limits shared by all worker threads of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Worker threads, and requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests started per minute, over all roles (absent: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<f64>,
    /// Attempts per call, the first included.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First backoff ceiling; it doubles on each failure up to `max_backoff_s`.
    #[serde(default = "default_base_delay")]
    pub base_delay_ms: u64,
    #[serde(default = "default_max_backoff")]
    pub max_backoff_s: f64,
    /// A server asking (`retry-after`) for a longer pause than this fails the call.
    #[serde(default = "default_max_wait")]
    pub max_retry_wait_s: f64,
    /// Stop the run after this many dialogues fail in a row (0: never).
    #[serde(default = "default_streak")]
    pub max_failures_in_a_row: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            concurrency: default_concurrency(),
            rpm: None,
            max_attempts: default_attempts(),
            base_delay_ms: default_base_delay(),
            max_backoff_s: default_max_backoff(),
            max_retry_wait_s: default_max_wait(),
            max_failures_in_a_row: default_streak(),
        }
    }
}

/// How the two sides are named when a transcript is shown (to the judge, and on the review
/// screen); the judge prompt should use the same names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    #[serde(default = "default_user_label")]
    pub user_label: String,
    #[serde(default = "default_model_label")]
    pub model_label: String,
}

impl Default for Transcript {
    fn default() -> Self {
        Self {
            user_label: default_user_label(),
            model_label: default_model_label(),
        }
    }
}

fn default_user_label() -> String {
    "user".into()
}
fn default_model_label() -> String {
    "model".into()
}

/// The whole file. Roles are optional so that, say, a judge-only file works; the stage that
/// needs a role says so when it is missing.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SynthConfig {
    pub socrates: Option<EndpointConfig>,
    pub user: Option<EndpointConfig>,
    pub judge: Option<EndpointConfig>,
    pub limits: Limits,
    pub transcript: Transcript,
}

fn default_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn yes() -> bool {
    true
}
fn default_timeout() -> f64 {
    120.0
}
fn default_concurrency() -> usize {
    4
}
fn default_attempts() -> u32 {
    6
}
fn default_base_delay() -> u64 {
    1000
}
fn default_max_backoff() -> f64 {
    60.0
}
fn default_max_wait() -> f64 {
    600.0
}
fn default_streak() -> usize {
    20
}

const ROLES: [&str; 3] = ["socrates", "user", "judge"];

impl SynthConfig {
    pub fn load(path: &Path) -> Result<Self, SynthError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| SynthError::Config(format!("{}: {e}", path.display())))?;
        Self::parse(&text).map_err(|m| SynthError::Config(format!("{}: {m}", path.display())))
    }

    /// Parses the TOML text; `[defaults]` keys apply to every role that does not set them.
    pub fn parse(text: &str) -> Result<Self, String> {
        let root: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut defaults = toml::Table::new();
        let mut cfg = SynthConfig::default();
        let mut roles: Vec<(String, toml::Table)> = Vec::new();
        for (key, value) in root {
            let table = match value {
                toml::Value::Table(t) => t,
                _ => return Err(format!("`{key}` must be a section ([{key}])")),
            };
            match key.as_str() {
                "defaults" => defaults = table,
                "transcript" => {
                    cfg.transcript = toml::Value::Table(table)
                        .try_into()
                        .map_err(|e| format!("[transcript]: {e}"))?
                }
                "limits" => {
                    cfg.limits = toml::Value::Table(table)
                        .try_into()
                        .map_err(|e| format!("[limits]: {e}"))?
                }
                k if ROLES.contains(&k) => roles.push((key, table)),
                _ => {
                    return Err(format!(
                        "unknown section [{key}] (expected defaults, socrates, user, judge, limits, transcript)"
                    ))
                }
            }
        }
        for (role, table) in roles {
            let mut merged = defaults.clone();
            merged.extend(table);
            let ep: EndpointConfig = toml::Value::Table(merged)
                .try_into()
                .map_err(|e| format!("[{role}]: {e}"))?;
            ep.check().map_err(|m| format!("[{role}]: {m}"))?;
            match role.as_str() {
                "socrates" => cfg.socrates = Some(ep),
                "user" => cfg.user = Some(ep),
                _ => cfg.judge = Some(ep),
            }
        }
        cfg.limits.check()?;
        Ok(cfg)
    }

    /// The role's section, or a clear error naming it.
    pub fn role(&self, name: &str) -> Result<&EndpointConfig, SynthError> {
        let r = match name {
            "socrates" => &self.socrates,
            "user" => &self.user,
            _ => &self.judge,
        };
        r.as_ref().ok_or_else(|| {
            SynthError::Config(format!(
                "the synth config has no [{name}] section (see README)"
            ))
        })
    }
}

impl EndpointConfig {
    fn check(&self) -> Result<(), String> {
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(format!(
                "base_url `{}` must start with http:// or https://",
                self.base_url
            ));
        }
        if self.model.trim().is_empty() {
            return Err("empty `model`".into());
        }
        if let Some(t) = self.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(format!("temperature {t} is outside 0–2"));
            }
        }
        if let Some(p) = self.top_p {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("top_p {p} is outside 0–1"));
            }
        }
        if self.timeout_s <= 0.0 || !self.timeout_s.is_finite() {
            return Err("timeout_s must be positive".into());
        }
        Ok(())
    }

    /// The chat-completions URL.
    pub fn url(&self) -> String {
        format!("{}/chat/completions", self.base_url.trim_end_matches('/'))
    }
}

impl Limits {
    fn check(&self) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err("[limits]: concurrency must be at least 1".into());
        }
        if self.max_attempts == 0 {
            return Err("[limits]: max_attempts must be at least 1".into());
        }
        if matches!(self.rpm, Some(r) if !(r > 0.0 && r.is_finite())) {
            return Err("[limits]: rpm must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_merge_under_roles_and_roles_override() {
        let cfg = SynthConfig::parse(
            r#"
            [defaults]
            base_url = "http://localhost:8000/v1"
            model = "m"
            [socrates]
            temperature = 0.8
            [judge]
            model = "judge-m"
            api_key_env = "JUDGE_KEY"
            [limits]
            rpm = 30
            [transcript]
            model_label = "ソクラテス"
            "#,
        )
        .unwrap();
        let s = cfg.socrates.as_ref().unwrap();
        assert_eq!((s.model.as_str(), s.temperature), ("m", Some(0.8)));
        assert_eq!(s.api_key_env, "OPENAI_API_KEY");
        let j = cfg.judge.as_ref().unwrap();
        assert_eq!(
            (j.model.as_str(), j.api_key_env.as_str()),
            ("judge-m", "JUDGE_KEY")
        );
        assert_eq!(j.base_url, "http://localhost:8000/v1");
        assert!(cfg.user.is_none());
        assert_eq!(cfg.limits.rpm, Some(30.0));
        assert_eq!(cfg.limits.concurrency, 4);
        assert_eq!(
            (
                cfg.transcript.user_label.as_str(),
                cfg.transcript.model_label.as_str()
            ),
            ("user", "ソクラテス")
        );
        assert!(cfg
            .role("user")
            .unwrap_err()
            .to_string()
            .contains("no [user] section"));
        assert_eq!(s.url(), "http://localhost:8000/v1/chat/completions");
    }

    #[test]
    fn the_shipped_config_parses() {
        let cfg = SynthConfig::parse(include_str!("../../configs/synth.toml")).unwrap();
        for role in ["socrates", "user", "judge"] {
            assert!(cfg
                .role(role)
                .unwrap()
                .url()
                .starts_with("https://api.openai.com/v1/"));
        }
        assert!(cfg.role("user").unwrap().temperature.is_none());
        assert!(cfg.role("judge").unwrap().temperature.is_none());
        assert_eq!(cfg.transcript.model_label, "ソクラテス");
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let e = SynthConfig::parse("[socrates]\nbase_url='http://x'\nmodel='m'\ntemprature=1\n")
            .unwrap_err();
        assert!(e.contains("[socrates]") && e.contains("temprature"), "{e}");
        let e = SynthConfig::parse("[socratess]\n").unwrap_err();
        assert!(e.contains("unknown section [socratess]"), "{e}");
        let e = SynthConfig::parse("[user]\nbase_url='x'\nmodel='m'\n").unwrap_err();
        assert!(e.contains("must start with http"), "{e}");
        let e = SynthConfig::parse("[limits]\nconcurrency=0\n").unwrap_err();
        assert!(e.contains("concurrency"), "{e}");
    }
}
