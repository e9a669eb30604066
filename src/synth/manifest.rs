//! Run manifests: a JSON file beside each output saying what produced it (models, endpoints,
//! sampling parameters, prompt hashes, counts). The API key is never in it, only the name of
//! the variable that held it.

use super::config::EndpointConfig;
use super::progress::Stats;
use super::SynthError;
use crate::fsutil::{sha256_file, sha256_hex};
use serde_json::{json, Value};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What one role sends: endpoint, model, resolved backend and the sampling fields (not the
/// key's variable name, which does not change what is generated).
pub fn endpoint(cfg: &EndpointConfig) -> Value {
    json!({
        "base_url": cfg.base_url,
        "model": cfg.model,
        "backend": cfg.backend.resolve(&cfg.base_url),
        "system_role": cfg.system_role,
        "response_format": cfg.response_format,
        "temperature": cfg.temperature,
        "top_p": cfg.top_p,
        "max_tokens": cfg.max_tokens,
        "seed": cfg.seed,
        "frequency_penalty": cfg.frequency_penalty,
        "presence_penalty": cfg.presence_penalty,
    })
}

/// A file's path, hash and record count.
pub fn input(path: &Path, count: usize) -> Result<Value, SynthError> {
    Ok(json!({"path": path, "sha256": sha256_file(path)?, "count": count}))
}

pub fn counts(stats: &Stats) -> Value {
    json!({
        "calls": Stats::get(&stats.calls),
        "replayed": Stats::get(&stats.replayed),
        "requests": Stats::get(&stats.requests),
        "retries": Stats::get(&stats.retries),
        "failed_calls": Stats::get(&stats.failed_calls),
        "prompt_tokens": Stats::get(&stats.prompt_tokens),
        "completion_tokens": Stats::get(&stats.completion_tokens),
    })
}

/// Hash of the settings that shape every record, to notice a resumed run whose settings
/// changed under it.
pub fn settings_sha(settings: &Value) -> String {
    sha256_hex(settings.to_string().as_bytes())
}

/// The `settings_sha256` of an existing manifest, if there is a readable one.
pub fn previous_settings_sha(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    v.get("settings_sha256")?.as_str().map(str::to_string)
}

pub fn write(path: &Path, manifest: &Value) -> Result<(), SynthError> {
    crate::fsutil::write_json(path, manifest)?;
    Ok(())
}
