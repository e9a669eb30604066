//! Per-backend request profiles: the same request, minus the fields a backend rejects.
//!
//! Backends differ in small ways that fail whole runs: Gemini's OpenAI endpoint rejects `seed`
//! and `frequency_penalty`/`presence_penalty`; OpenAI wants `max_completion_tokens` (newer
//! models reject `max_tokens`); the servers people run locally take the classic fields.

use super::client::ChatRequest;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// What the configuration asks for: a backend, or `auto` (guess from the base URL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    #[default]
    Auto,
    Openai,
    Gemini,
    Vllm,
    Llamacpp,
    Ollama,
    Lmstudio,
    /// Any other OpenAI-compatible server: every field sent, classic names.
    Generic,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Openai,
    Gemini,
    Vllm,
    Llamacpp,
    Ollama,
    Lmstudio,
    Generic,
}

/// How structured (JSON) output is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FormatMode {
    /// `{"type":"json_schema","json_schema":{"name","schema","strict":true}}`
    JsonSchema,
    /// `{"type":"json_object"}`: valid JSON, shape left to the prompt.
    JsonObject,
    /// No `response_format` at all; the reply is still validated.
    None,
}

/// Which optional fields a backend accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    pub max_tokens_field: &'static str,
    pub seed: bool,
    pub penalties: bool,
    pub format: FormatMode,
    /// Hosted APIs need a key; local servers usually take none.
    pub needs_key: bool,
}

impl BackendChoice {
    pub fn resolve(self, base_url: &str) -> Backend {
        match self {
            BackendChoice::Auto => Backend::detect(base_url),
            BackendChoice::Openai => Backend::Openai,
            BackendChoice::Gemini => Backend::Gemini,
            BackendChoice::Vllm => Backend::Vllm,
            BackendChoice::Llamacpp => Backend::Llamacpp,
            BackendChoice::Ollama => Backend::Ollama,
            BackendChoice::Lmstudio => Backend::Lmstudio,
            BackendChoice::Generic => Backend::Generic,
        }
    }
}

impl Backend {
    /// Guesses from the host and the usual default ports (vLLM 8000, llama.cpp 8080,
    /// Ollama 11434, LM Studio 1234); anything else is `generic`.
    pub fn detect(base_url: &str) -> Backend {
        let rest = base_url
            .split_once("://")
            .map(|(_, r)| r)
            .unwrap_or(base_url);
        let authority = rest.split('/').next().unwrap_or("").to_ascii_lowercase();
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => (h.to_string(), Some(p)),
            _ => (authority.clone(), None),
        };
        if host == "api.openai.com" {
            return Backend::Openai;
        }
        if host == "generativelanguage.googleapis.com" {
            return Backend::Gemini;
        }
        match port {
            Some("11434") => Backend::Ollama,
            Some("1234") => Backend::Lmstudio,
            Some("8000") => Backend::Vllm,
            Some("8080") => Backend::Llamacpp,
            _ => Backend::Generic,
        }
    }

    pub fn profile(self) -> Profile {
        let classic = Profile {
            max_tokens_field: "max_tokens",
            seed: true,
            penalties: true,
            format: FormatMode::JsonSchema,
            needs_key: false,
        };
        match self {
            Backend::Openai => Profile {
                max_tokens_field: "max_completion_tokens",
                needs_key: true,
                ..classic
            },
            Backend::Gemini => Profile {
                seed: false,
                penalties: false,
                needs_key: true,
                ..classic
            },
            _ => classic,
        }
    }
}

/// Builds the JSON body for `model` under `profile`.
pub fn request_body(
    profile: &Profile,
    format: FormatMode,
    system_role: bool,
    model: &str,
    req: &ChatRequest,
) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), json!(model));
    body.insert("messages".into(), messages(system_role, req));
    let s = &req.sampling.common;
    if let Some(t) = s.temperature {
        body.insert("temperature".into(), json!(t));
    }
    if let Some(p) = s.top_p {
        body.insert("top_p".into(), json!(p));
    }
    // Not OpenAI's; vLLM, llama.cpp and `socratune serve` take them. No endpoint config sets
    // them, so an API that refuses them never sees them.
    if let Some(k) = s.top_k {
        body.insert("top_k".into(), json!(k));
    }
    if let Some(r) = s.repetition_penalty {
        body.insert("repetition_penalty".into(), json!(r));
    }
    if let Some(m) = s.max_new_tokens {
        body.insert(profile.max_tokens_field.into(), json!(m));
    }
    if let (Some(seed), true) = (s.seed, profile.seed) {
        body.insert("seed".into(), json!(seed));
    }
    if profile.penalties {
        if let Some(f) = req.sampling.frequency_penalty {
            body.insert("frequency_penalty".into(), json!(f));
        }
        if let Some(p) = req.sampling.presence_penalty {
            body.insert("presence_penalty".into(), json!(p));
        }
    }
    if let Some(schema) = &req.schema {
        match format {
            FormatMode::JsonSchema => {
                let js = json!({"name": schema.name, "schema": schema.schema, "strict": true});
                body.insert(
                    "response_format".into(),
                    json!({"type": "json_schema", "json_schema": js}),
                );
            }
            FormatMode::JsonObject => {
                body.insert("response_format".into(), json!({"type": "json_object"}));
            }
            FormatMode::None => {}
        }
    }
    Value::Object(body)
}

/// Without a system role the system text opens the first user message, or becomes one when
/// the conversation opens with the assistant (which also keeps roles alternating).
fn messages(system_role: bool, req: &ChatRequest) -> Value {
    let mut out: Vec<Value> = Vec::with_capacity(req.messages.len());
    let mut pending_system: Option<&str> = None;
    for m in &req.messages {
        if m.role == "system" && !system_role {
            pending_system = Some(&m.content);
            continue;
        }
        match pending_system.take() {
            Some(sys) if m.role == "user" => {
                out.push(json!({"role": "user", "content": format!("{sys}\n\n{}", m.content)}));
                continue;
            }
            Some(sys) => out.push(json!({"role": "user", "content": sys})),
            None => {}
        }
        out.push(json!({"role": m.role, "content": m.content}));
    }
    if let Some(sys) = pending_system {
        out.push(json!({"role": "user", "content": sys}));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::generate::SamplingRequest;
    use crate::synth::client::{JsonSchema, Message, Sampling};

    fn req() -> ChatRequest {
        ChatRequest {
            messages: vec![
                Message::new("system", "S"),
                Message::new("assistant", "A"),
                Message::new("user", "U"),
            ],
            sampling: Sampling {
                common: SamplingRequest {
                    temperature: Some(0.7),
                    top_p: Some(0.9),
                    max_new_tokens: Some(100),
                    seed: Some(1),
                    ..Default::default()
                },
                frequency_penalty: Some(0.1),
                presence_penalty: None,
            },
            schema: Some(JsonSchema {
                name: "v".into(),
                schema: json!({"type": "object"}),
            }),
        }
    }

    #[test]
    fn detects_backends_from_urls() {
        assert_eq!(
            Backend::detect("https://api.openai.com/v1"),
            Backend::Openai
        );
        assert_eq!(
            Backend::detect("https://generativelanguage.googleapis.com/v1beta/openai/"),
            Backend::Gemini
        );
        assert_eq!(
            Backend::detect("http://localhost:11434/v1"),
            Backend::Ollama
        );
        assert_eq!(Backend::detect("http://127.0.0.1:8000/v1"), Backend::Vllm);
        assert_eq!(Backend::detect("http://gpu-box:8080/v1"), Backend::Llamacpp);
        assert_eq!(
            Backend::detect("http://localhost:1234/v1"),
            Backend::Lmstudio
        );
        assert_eq!(Backend::detect("https://example.com/v1"), Backend::Generic);
        assert_eq!(
            BackendChoice::Vllm.resolve("https://api.openai.com/v1"),
            Backend::Vllm
        );
    }

    #[test]
    fn profiles_drop_what_backends_reject() {
        let r = req();
        let g = Backend::Gemini.profile();
        let b = request_body(&g, g.format, true, "gemini-2.0-flash", &r);
        assert!(b.get("seed").is_none() && b.get("frequency_penalty").is_none());
        assert_eq!(b["max_tokens"], 100);
        assert_eq!(b["response_format"]["json_schema"]["name"], "v");
        let o = Backend::Openai.profile();
        let b = request_body(&o, o.format, true, "gpt-4o", &r);
        assert_eq!(b["max_completion_tokens"], 100);
        assert!(b.get("max_tokens").is_none());
        assert_eq!(
            (b["seed"].as_u64(), b["frequency_penalty"].as_f64()),
            (Some(1), Some(0.1))
        );
        let v = Backend::Vllm.profile();
        let b = request_body(&v, FormatMode::JsonObject, true, "m", &r);
        assert_eq!(b["response_format"], json!({"type": "json_object"}));
        let b = request_body(&v, FormatMode::None, true, "m", &r);
        assert!(b.get("response_format").is_none());
        assert!(b.get("top_k").is_none() && b.get("repetition_penalty").is_none());
        // The shared fields no endpoint config sets go out under their own names when set.
        let mut r = req();
        r.sampling.common.top_k = Some(40);
        r.sampling.common.repetition_penalty = Some(1.5);
        let b = request_body(&v, FormatMode::None, true, "m", &r);
        assert_eq!(
            (b["top_k"].as_u64(), b["repetition_penalty"].as_f64()),
            (Some(40), Some(1.5))
        );
    }

    #[test]
    fn system_text_folds_into_a_user_message_when_asked() {
        let p = Backend::Generic.profile();
        let b = request_body(&p, p.format, false, "m", &req());
        let roles: Vec<_> = b["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].clone())
            .collect();
        assert_eq!(
            roles,
            vec![json!("user"), json!("assistant"), json!("user")]
        );
        assert_eq!(b["messages"][0]["content"], "S");
        let mut r = req();
        r.messages.remove(1);
        let b = request_body(&p, p.format, false, "m", &r);
        assert_eq!(
            b["messages"],
            json!([{"role": "user", "content": "S\n\nU"}])
        );
        let b = request_body(&p, p.format, true, "m", &r);
        assert_eq!(b["messages"][0]["role"], "system");
    }
}
