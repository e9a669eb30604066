//! One OpenAI-compatible chat-completions client for every backend (OpenAI, Gemini's OpenAI
//! endpoint, vLLM, llama.cpp server, Ollama, LM Studio), with retries and shared limits.
//!
//! The API key is read once from the environment variable the configuration names. It only
//! ever goes into the `Authorization` header: `Debug` prints `***`, and every text that comes
//! back from a server is scrubbed of it before it reaches an error or a log line.

use super::backend::{request_body, Backend, FormatMode, Profile};
use super::config::{EndpointConfig, Limits};
use super::limiter::Limiter;
use super::progress::{Log, Stats};
use super::retry::{classify, retry_after, RetryPolicy, Verdict};
use super::SynthError;
use crate::model::generate::SamplingRequest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What a request asks of the API's sampling: the fields local generation shares
/// ([`SamplingRequest`]; its `max_new_tokens` is sent as the profile's max-tokens field), and
/// the penalties only OpenAI-compatible APIs take. `None` leaves the server's default.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sampling {
    pub common: SamplingRequest,
    pub frequency_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
}

impl Sampling {
    pub fn from_config(c: &EndpointConfig) -> Self {
        Self {
            common: SamplingRequest {
                temperature: c.temperature,
                top_p: c.top_p,
                max_new_tokens: c.max_tokens.map(|m| m as usize),
                seed: c.seed,
                ..Default::default()
            },
            frequency_penalty: c.frequency_penalty,
            presence_penalty: c.presence_penalty,
        }
    }
}

/// A JSON schema the reply must follow (structured output).
#[derive(Debug, Clone, PartialEq)]
pub struct JsonSchema {
    pub name: String,
    pub schema: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    pub schema: Option<JsonSchema>,
}

/// What came back, read tolerantly: missing `message`, `usage` or `content` leave defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The model the server says answered (may be more specific than the one asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl Completion {
    /// Reads a chat-completions response body.
    pub fn parse(body: &str) -> Result<Self, String> {
        let v: Value =
            serde_json::from_str(body).map_err(|e| format!("unreadable response: {e}"))?;
        let choices = match v.get("choices") {
            Some(Value::Array(c)) => c,
            _ => {
                return Err(match error_details(body) {
                    (m, _) if v.get("error").is_some() => format!("error in response: {m}"),
                    _ => "response has no `choices`".into(),
                })
            }
        };
        let choice = choices.first().ok_or("response has an empty `choices`")?;
        let message = choice.get("message");
        let content = match message.and_then(|m| m.get("content")) {
            Some(Value::String(s)) => s.clone(),
            // Content as a list of parts: join the text parts.
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str).or(p.as_str()))
                .collect(),
            // Legacy completions put the text on the choice.
            _ => choice
                .get("text")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        };
        let usage = v.get("usage");
        let tokens = |k: &str| {
            usage
                .and_then(|u| u.get(k))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let text = |x: Option<&Value>| x.and_then(Value::as_str).map(str::to_string);
        Ok(Completion {
            content,
            finish_reason: text(choice.get("finish_reason")),
            prompt_tokens: tokens("prompt_tokens"),
            completion_tokens: tokens("completion_tokens"),
            system_fingerprint: text(v.get("system_fingerprint")),
            model: text(v.get("model")),
        })
    }

    /// A reply cut off by the token limit, or with no text, is a failed call.
    pub fn check(&self) -> Result<(), SynthError> {
        if self.finish_reason.as_deref() == Some("length") {
            return Err(SynthError::Length);
        }
        if self.content.trim().is_empty() {
            let finish_reason = self.finish_reason.clone().unwrap_or_else(|| "none".into());
            return Err(SynthError::EmptyReply { finish_reason });
        }
        Ok(())
    }
}

/// The message and the `code`/`type` of an error body: `{"error":{…}}`, `{"error":"…"}`, a
/// JSON array of those (Gemini), or plain text.
fn error_details(body: &str) -> (String, Option<String>) {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let obj = match &parsed {
        Some(Value::Array(items)) => items.first(),
        Some(v) => Some(v),
        None => None,
    };
    let err = obj.map(|o| o.get("error").unwrap_or(o));
    let field = |k: &str| {
        err.and_then(|e| e.get(k))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let message = match err {
        Some(Value::String(s)) => s.clone(),
        _ => field("message").unwrap_or_else(|| body.trim().to_string()),
    };
    let quota = [field("code"), field("type"), field("status")]
        .into_iter()
        .flatten()
        .find(|c| c == "insufficient_quota");
    (shorten(&message, 300), quota.or_else(|| field("code")))
}

fn shorten(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The API key; its `Debug` never shows it.
#[derive(Clone)]
pub struct ApiKey(Option<String>);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "ApiKey(***)"
        } else {
            "ApiKey(none)"
        })
    }
}

impl ApiKey {
    /// Removes the key from a text that came from outside (an error body may echo it).
    pub fn redact(&self, s: &str) -> String {
        match &self.0 {
            Some(k) if k.len() >= 4 => s.replace(k.as_str(), "[redacted]"),
            _ => s.to_string(),
        }
    }
}

/// One endpoint (role) of a run.
pub struct Client {
    role: String,
    url: String,
    model: String,
    backend: Backend,
    profile: Profile,
    format: FormatMode,
    system_role: bool,
    key: ApiKey,
    key_env: String,
    agent: ureq::Agent,
    limiter: Arc<Limiter>,
    policy: RetryPolicy,
    stats: Arc<Stats>,
    log: Log,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("role", &self.role)
            .field("url", &self.url)
            .field("model", &self.model)
            .field("backend", &self.backend)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// The outcome of one HTTP attempt.
enum Attempt {
    Done(Completion),
    Retry {
        error: String,
        wait: Option<Duration>,
    },
    Fatal(SynthError),
}

impl Client {
    pub fn new(
        role: &str,
        cfg: &EndpointConfig,
        limiter: Arc<Limiter>,
        limits: &Limits,
        stats: Arc<Stats>,
        log: Log,
    ) -> Result<Self, SynthError> {
        let backend = cfg.backend.resolve(&cfg.base_url);
        let profile = backend.profile();
        let key = std::env::var(&cfg.api_key_env)
            .ok()
            .filter(|k| !k.trim().is_empty());
        if key.is_none() && profile.needs_key {
            return Err(SynthError::MissingKey {
                var: cfg.api_key_env.clone(),
                url: cfg.base_url.clone(),
            });
        }
        let timeout = Duration::from_secs_f64(cfg.timeout_s);
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeout.min(Duration::from_secs(30)))
            .timeout(timeout)
            .build();
        Ok(Self {
            role: role.into(),
            url: cfg.url(),
            model: cfg.model.clone(),
            backend,
            profile,
            format: cfg.response_format.unwrap_or(profile.format),
            system_role: cfg.system_role,
            key: ApiKey(key),
            key_env: cfg.api_key_env.clone(),
            agent,
            limiter,
            policy: RetryPolicy::from_limits(limits),
            stats,
            log,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }
    pub fn model(&self) -> &str {
        &self.model
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The exact JSON body this client sends for `req` (also what the journal key hashes).
    pub fn body(&self, req: &ChatRequest) -> Value {
        request_body(
            &self.profile,
            self.format,
            self.system_role,
            &self.model,
            req,
        )
    }

    /// Sends a body, retrying what may succeed later, and returns the parsed reply (which
    /// may still be cut off or empty: see [`Completion::check`]).
    pub fn send(&self, body: &Value) -> Result<Completion, SynthError> {
        let text = body.to_string();
        let max = self.policy.max_attempts;
        let mut rng = rand::rng();
        let mut last = String::new();
        for attempt in 1..=max {
            let wait = match self.attempt(&text) {
                Attempt::Done(c) => return Ok(c),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry { error, wait } => {
                    last = error;
                    wait
                }
            };
            if attempt == max {
                break;
            }
            let wait = match wait {
                Some(w) if w > self.policy.max_wait => {
                    return Err(SynthError::WaitTooLong {
                        url: self.url.clone(),
                        wait_s: w.as_secs_f64(),
                        max_s: self.policy.max_wait.as_secs_f64(),
                    })
                }
                Some(w) => {
                    self.limiter.hold_until(Instant::now() + w);
                    w
                }
                None => self.policy.backoff(attempt, &mut rng),
            };
            Stats::add(&self.stats.retries, 1);
            (self.log)(&format!(
                "{} ({}): {last}; retry {}/{} in {:.1} s",
                self.role,
                self.model,
                attempt + 1,
                max,
                wait.as_secs_f64()
            ));
            std::thread::sleep(wait);
        }
        Err(SynthError::RetriesExhausted {
            url: self.url.clone(),
            attempts: max,
            last,
        })
    }

    fn attempt(&self, body: &str) -> Attempt {
        let _permit = self.limiter.acquire();
        Stats::add(&self.stats.requests, 1);
        let mut req = self
            .agent
            .post(&self.url)
            .set("Content-Type", "application/json");
        if let Some(k) = &self.key.0 {
            req = req.set("Authorization", &format!("Bearer {k}"));
        }
        match req.send_string(body) {
            Ok(resp) => match resp.into_string() {
                Ok(text) => match Completion::parse(&text) {
                    Ok(c) => Attempt::Done(c),
                    Err(e) => Attempt::Retry {
                        error: self.key.redact(&e),
                        wait: None,
                    },
                },
                Err(e) => Attempt::Retry {
                    error: format!("reading the response: {e}"),
                    wait: None,
                },
            },
            Err(ureq::Error::Status(status, resp)) => {
                let wait = retry_after(|h| resp.header(h).map(str::to_string), SystemTime::now());
                let body = resp.into_string().unwrap_or_default();
                let (message, code) = error_details(&body);
                let message = self.key.redact(&message);
                match classify(status, code.as_deref()) {
                    Verdict::Retry => Attempt::Retry {
                        error: format!("HTTP {status}: {message}"),
                        wait,
                    },
                    Verdict::Quota => Attempt::Fatal(SynthError::Quota {
                        url: self.url.clone(),
                        message,
                    }),
                    Verdict::Fatal => {
                        let mut message = message;
                        if matches!(status, 401 | 403) && self.key.0.is_none() {
                            message.push_str(&format!(
                                " (no API key was sent: {} is not set)",
                                self.key_env
                            ));
                        }
                        Attempt::Fatal(SynthError::Http {
                            url: self.url.clone(),
                            status,
                            message,
                        })
                    }
                }
            }
            Err(ureq::Error::Transport(t)) => Attempt::Retry {
                error: self.key.redact(&t.to_string()),
                wait: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tolerantly() {
        let c = Completion::parse(
            r#"{"choices":[{"message":{"role":"assistant","content":"やあ"},"finish_reason":"stop"}],
                "usage":{"prompt_tokens":5,"completion_tokens":2},"system_fingerprint":"fp_1","model":"m-1"}"#,
        )
        .unwrap();
        assert_eq!(c.content, "やあ");
        assert_eq!((c.prompt_tokens, c.completion_tokens), (5, 2));
        assert_eq!(c.system_fingerprint.as_deref(), Some("fp_1"));
        assert!(c.check().is_ok());

        let c = Completion::parse(
            r#"{"choices":[{"message":{"content":null},"finish_reason":"stop"}]}"#,
        )
        .unwrap();
        assert_eq!((c.content.as_str(), c.prompt_tokens), ("", 0));
        assert!(matches!(c.check(), Err(SynthError::EmptyReply { .. })));

        let c = Completion::parse(r#"{"choices":[{"finish_reason":"length"}]}"#).unwrap();
        assert!(matches!(c.check(), Err(SynthError::Length)));

        let c = Completion::parse(r#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#).unwrap();
        assert_eq!(c.content, "ab");

        assert!(Completion::parse(r#"{"choices":[{"mess"#)
            .unwrap_err()
            .contains("unreadable"));
        assert!(Completion::parse(r#"{"error":{"message":"boom"}}"#)
            .unwrap_err()
            .contains("boom"));
        assert!(Completion::parse(r#"{"choices":[]}"#).is_err());
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let (m, c) = error_details(
            r#"{"error":{"message":"slow down","type":"requests","code":"rate_limit"}}"#,
        );
        assert_eq!(
            (m.as_str(), c.as_deref()),
            ("slow down", Some("rate_limit"))
        );
        let (m, c) = error_details(
            r#"[{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}]"#,
        );
        assert_eq!((m.as_str(), c), ("Resource exhausted", None));
        let (_, c) = error_details(
            r#"{"error":{"message":"no money","type":"insufficient_quota","code":null}}"#,
        );
        assert_eq!(c.as_deref(), Some("insufficient_quota"));
        let (m, _) = error_details(r#"{"error":"model not found"}"#);
        assert_eq!(m, "model not found");
        let (m, _) = error_details("<html>Bad Gateway</html>");
        assert_eq!(m, "<html>Bad Gateway</html>");
    }

    #[test]
    fn key_is_hidden_from_debug_and_redacted() {
        let k = ApiKey(Some("sk-secret-123".into()));
        assert_eq!(format!("{k:?}"), "ApiKey(***)");
        assert_eq!(k.redact("bad key sk-secret-123!"), "bad key [redacted]!");
    }
}
