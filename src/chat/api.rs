//! The OpenAI chat-completions wire format: request validation and response bodies.
//!
//! `system` (and `developer`) messages at the start become the request's system text (joined by
//! blank lines), which replaces the served variant's; the family's template places it (a system
//! turn, or before the first user text for Gemma, which has no system role). Fields that would
//! change the answer and that this server cannot honour (`n` > 1, tools, logprobs, JSON
//! output, frequency/presence penalties) are refused rather than ignored; unknown fields are
//! ignored.

use crate::corpus::Role;
use crate::dataset::Utterance;
use crate::model::generate::{SamplingParams, SamplingRequest};
use serde_json::{json, Map, Value};

/// An OpenAI-style error: HTTP status and `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// 400 `invalid_request_error`.
    pub fn invalid(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(String::from),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// 500 `server_error`.
    pub fn server(message: impl Into<String>) -> Self {
        Self {
            status: 500,
            message: message.into(),
            kind: "server_error",
            param: None,
            code: None,
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

/// A validated chat-completions request.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub model: Option<String>,
    /// The system messages' text, if any.
    pub system: Option<String>,
    /// Alternating user and model turns, ending with user.
    pub turns: Vec<Utterance>,
    /// Sampling; `max_new_tokens` is settled once the prompt length is known.
    pub params: SamplingParams,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
}

/// OpenAI's own default sampling: temperature 1, no nucleus or top-k cut.
fn default_params() -> SamplingParams {
    SamplingParams {
        temperature: 1.0,
        top_p: None,
        top_k: None,
        repetition_penalty: 1.0,
        seed: rand::random(),
        min_new_tokens: 0,
        ..SamplingParams::default()
    }
}

type Fields = Map<String, Value>;

/// The value of a field, treating JSON `null` as absent.
fn field<'a>(o: &'a Fields, k: &str) -> Option<&'a Value> {
    o.get(k).filter(|v| !v.is_null())
}

fn number(o: &Fields, k: &str) -> Result<Option<f64>, ApiError> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ApiError::invalid(Some(k), format!("'{k}' must be a number, got {v}"))),
    }
}

fn integer(o: &Fields, k: &str) -> Result<Option<i64>, ApiError> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            ApiError::invalid(Some(k), format!("'{k}' must be an integer, got {v}"))
        }),
    }
}

fn boolean(o: &Fields, k: &str) -> Result<Option<bool>, ApiError> {
    match field(o, k) {
        None => Ok(None),
        Some(v) => v.as_bool().map(Some).ok_or_else(|| {
            ApiError::invalid(Some(k), format!("'{k}' must be true or false, got {v}"))
        }),
    }
}

/// Parses and validates a request body.
pub fn parse_request(body: &[u8]) -> Result<ChatRequest, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(None, format!("the request body is not valid JSON ({e})"))
    })?;
    let Value::Object(o) = v else {
        return Err(ApiError::invalid(
            None,
            "the request body must be a JSON object",
        ));
    };
    refuse_unsupported(&o)?;
    let model = match field(&o, "model") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(ApiError::invalid(
                Some("model"),
                format!("'model' must be a string, got {v}"),
            ))
        }
    };
    let (system, turns) = messages(&o)?;

    // OpenAI's ranges here; the shared rules (top-p 1 and top-k 0 are off) in `resolve`.
    let mut asked = SamplingRequest::default();
    if let Some(t) = number(&o, "temperature")? {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("'temperature' must be between 0 and 2, got {t}"),
            ));
        }
        asked.temperature = Some(t);
    }
    if let Some(p) = number(&o, "top_p")? {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                Some("top_p"),
                format!("'top_p' must be greater than 0 and at most 1, got {p}"),
            ));
        }
        asked.top_p = Some(p);
    }
    if let Some(k) = integer(&o, "top_k")? {
        // 0 and -1 turn it off, as in llama.cpp and vLLM.
        if k < -1 {
            return Err(ApiError::invalid(
                Some("top_k"),
                format!("'top_k' must be at least 1 (or 0 / -1 for no limit), got {k}"),
            ));
        }
        asked.top_k = Some(k.max(0) as usize);
    }
    if let Some(r) = number(&o, "repetition_penalty")? {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::invalid(
                Some("repetition_penalty"),
                format!("'repetition_penalty' must be greater than 0 and at most 10, got {r}"),
            ));
        }
        asked.repetition_penalty = Some(r as f32);
    }
    if let Some(s) = integer(&o, "seed")? {
        asked.seed = Some(s as u64);
    }
    let params = asked
        .resolve(&default_params())
        .map_err(|e| ApiError::invalid(None, e.to_string()))?;
    let mut max_tokens = None;
    for k in ["max_tokens", "max_completion_tokens"] {
        if let Some(m) = integer(&o, k)? {
            if m < 1 {
                return Err(ApiError::invalid(
                    Some(k),
                    format!("'{k}' must be at least 1, got {m}"),
                ));
            }
            max_tokens = Some(m as usize);
        }
    }
    let stop = match field(&o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(String::from))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                ApiError::invalid(Some("stop"), "'stop' must be a string or a list of strings")
            })?,
        Some(v) => {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("'stop' must be a string or a list of strings, got {v}"),
            ))
        }
    };
    if stop.len() > 4 {
        return Err(ApiError::invalid(
            Some("stop"),
            format!("'stop' holds at most 4 strings, got {}", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid(
            Some("stop"),
            "'stop' strings must not be empty",
        ));
    }
    let stream = boolean(&o, "stream")?.unwrap_or(false);
    let include_usage = match field(&o, "stream_options") {
        None => false,
        Some(_) if !stream => {
            return Err(ApiError::invalid(
                Some("stream_options"),
                "'stream_options' is only allowed when 'stream' is true",
            ))
        }
        Some(Value::Object(so)) => boolean(so, "include_usage")
            .map_err(|e| ApiError {
                param: Some("stream_options.include_usage".into()),
                ..e
            })?
            .unwrap_or(false),
        Some(v) => {
            return Err(ApiError::invalid(
                Some("stream_options"),
                format!("'stream_options' must be an object, got {v}"),
            ))
        }
    };
    Ok(ChatRequest {
        model,
        system,
        turns,
        params,
        max_tokens,
        stop,
        stream,
        include_usage,
    })
}

/// Fields that would change the answer in ways this server cannot give.
fn refuse_unsupported(o: &Fields) -> Result<(), ApiError> {
    let unsupported = |k: &str, why: &str| {
        Err(ApiError::invalid(
            Some(k),
            format!("'{k}' is not supported: {why}"),
        ))
    };
    if let Some(n) = integer(o, "n")? {
        if n != 1 {
            return unsupported("n", "this server returns one choice per request (n = 1)");
        }
    }
    for k in ["tools", "functions"] {
        match field(o, k) {
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return unsupported(k, "the model has no tool calling"),
            None => {}
        }
    }
    for k in ["tool_choice", "function_call"] {
        match field(o, k) {
            None => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return unsupported(k, "the model has no tool calling"),
        }
    }
    if boolean(o, "logprobs")? == Some(true) || field(o, "top_logprobs").is_some() {
        let k = if field(o, "top_logprobs").is_some() {
            "top_logprobs"
        } else {
            "logprobs"
        };
        return unsupported(k, "log probabilities are not returned");
    }
    if let Some(rf) = field(o, "response_format") {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return unsupported(
                "response_format",
                "only {\"type\": \"text\"} (no JSON mode)",
            );
        }
    }
    for k in ["frequency_penalty", "presence_penalty"] {
        if number(o, k)?.is_some_and(|x| x != 0.0) {
            return unsupported(k, "use 'repetition_penalty' instead");
        }
    }
    if field(o, "logit_bias").is_some_and(|v| v.as_object().is_none_or(|m| !m.is_empty())) {
        return unsupported("logit_bias", "token biases are not applied");
    }
    Ok(())
}

/// A message's text: a string, or a list of text parts.
fn content(m: &Fields, i: usize) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match field(m, "content") {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => text.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            Some(&param),
                            format!(
                                "content parts must be text, got {}",
                                kind.unwrap_or("an unknown part")
                            ),
                        ))
                    }
                }
            }
            Ok(text)
        }
        None => Err(ApiError::invalid(
            Some(&param),
            format!("messages[{i}] has no content"),
        )),
        Some(v) => Err(ApiError::invalid(
            Some(&param),
            format!("'content' must be a string or a list of text parts, got {v}"),
        )),
    }
}

/// The conversation: system messages first (their text, joined), then user and assistant
/// alternating, starting and ending with user.
fn messages(o: &Fields) -> Result<(Option<String>, Vec<Utterance>), ApiError> {
    let list = match field(o, "messages") {
        None => {
            return Err(ApiError::invalid(
                Some("messages"),
                "Missing required parameter: 'messages'.",
            )
            .with_code("missing_required_parameter"))
        }
        Some(Value::Array(a)) => a,
        Some(v) => {
            return Err(ApiError::invalid(
                Some("messages"),
                format!("'messages' must be a list, got {v}"),
            ))
        }
    };
    if list.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "'messages' must hold at least one message",
        ));
    }
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Utterance> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}]")),
                "each message must be an object",
            ));
        };
        let param = format!("messages[{i}].role");
        let role = field(m, "role")
            .and_then(Value::as_str)
            .ok_or_else(|| ApiError::invalid(Some(&param), format!("messages[{i}] has no role")))?;
        let text = content(m, i)?;
        let role = match role {
            "system" | "developer" if turns.is_empty() => {
                system.push(text);
                continue;
            }
            "system" | "developer" => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!("a {role} message is only supported before the first user message"),
                ))
            }
            "user" => Role::User,
            "assistant" => Role::Model,
            "tool" | "function" => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!("'{role}' messages are not supported (no tool calling)"),
                ))
            }
            other => {
                return Err(ApiError::invalid(
                    Some(&param),
                    format!("unknown role '{other}' (use system, user or assistant)"),
                ))
            }
        };
        let want = if turns.len().is_multiple_of(2) {
            Role::User
        } else {
            Role::Model
        };
        if role != want {
            let name = |r: Role| if r == Role::User { "user" } else { "assistant" };
            return Err(ApiError::invalid(
                Some(&param),
                format!(
                    "messages[{i}] is a{} {} message where a{} {} message is expected: after any system messages, user and assistant messages must alternate, starting with user",
                    if role == Role::User { "" } else { "n" },
                    name(role),
                    if want == Role::User { "" } else { "n" },
                    name(want)
                ),
            ));
        }
        if text.trim().is_empty() {
            return Err(ApiError::invalid(
                Some(&format!("messages[{i}].content")),
                format!("messages[{i}] has empty content"),
            ));
        }
        turns.push(Utterance { role, text });
    }
    match turns.last() {
        None => {
            return Err(ApiError::invalid(
                Some("messages"),
                "there is no user message (only system messages)",
            ))
        }
        Some(u) if u.role != Role::User => {
            return Err(ApiError::invalid(
                Some("messages"),
                "the last message must be from the user (the model answers it)",
            ))
        }
        Some(_) => {}
    }
    // Trimmed, as the official templates trim it.
    let system = Some(system.join("\n\n").trim().to_string()).filter(|s| !s.is_empty());
    Ok((system, turns))
}

/// The JSON of a token count.
pub fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// A whole (non-streamed) answer.
pub fn completion(
    id: &str,
    created: u64,
    model: &str,
    text: &str,
    finish: &str,
    usage: Value,
) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": null},
            "logprobs": null,
            "finish_reason": finish,
        }],
        "usage": usage,
    })
}

/// One streamed chunk with one choice. With `include_usage` every chunk carries `usage: null`
/// and a last chunk without choices carries the counts (see [`usage_chunk`]).
pub fn chunk(
    id: &str,
    created: u64,
    model: &str,
    delta: Value,
    finish: Option<&str>,
    include_usage: bool,
) -> Value {
    let mut c = json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    c
}

pub fn usage_chunk(id: &str, created: u64, model: &str, usage: Value) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "system_fingerprint": null, "choices": [], "usage": usage,
    })
}

/// `GET /v1/models`.
pub fn models(name: &str, created: u64) -> Value {
    json!({"object": "list", "data": [model(name, created)]})
}

/// One model object.
pub fn model(name: &str, created: u64) -> Value {
    json!({"id": name, "object": "model", "created": created, "owned_by": "socratune"})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        parse_request(v.to_string().as_bytes())
    }

    fn texts(r: &ChatRequest) -> Vec<(Role, &str)> {
        r.turns.iter().map(|u| (u.role, u.text.as_str())).collect()
    }

    #[test]
    fn system_messages_are_the_system_text() {
        let r = parse(json!({"messages": [
            {"role": "system", "content": "あなたはソクラテスです。"},
            {"role": "developer", "content": [{"type": "text", "text": "短く。"}]},
            {"role": "user", "content": "正義とは？"},
            {"role": "assistant", "content": "君はどう思う？"},
            {"role": "user", "content": [{"type": "text", "text": "法に"}, {"type": "text", "text": "従うこと。"}]},
        ]}))
        .unwrap();
        assert_eq!(
            r.system.as_deref(),
            Some("あなたはソクラテスです。\n\n短く。")
        );
        assert_eq!(
            texts(&r),
            [
                (Role::User, "正義とは？"),
                (Role::Model, "君はどう思う？"),
                (Role::User, "法に従うこと。"),
            ]
        );
        assert!(!r.stream && r.stop.is_empty() && r.max_tokens.is_none());
        assert_eq!(r.params.temperature, 1.0);
    }

    #[test]
    fn reads_sampling_and_streaming_options() {
        let r = parse(json!({
            "model": "m", "messages": [{"role": "user", "content": "hi"}],
            "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7, "max_tokens": 9,
            "max_completion_tokens": 12, "stop": "END", "repetition_penalty": 1.1,
            "stream": true, "stream_options": {"include_usage": true}, "n": 1, "user": "x",
            "tools": [], "tool_choice": "none", "logprobs": false, "presence_penalty": 0,
            "response_format": {"type": "text"}
        }))
        .unwrap();
        assert_eq!(r.model.as_deref(), Some("m"));
        assert_eq!(r.params.temperature, 0.0);
        assert_eq!(
            (r.params.top_p, r.params.top_k, r.params.seed),
            (Some(0.9), Some(40), 7)
        );
        assert_eq!(r.params.repetition_penalty, 1.1f32);
        assert_eq!(r.max_tokens, Some(12));
        assert_eq!(r.stop, ["END"]);
        assert!(r.stream && r.include_usage);
        let r = parse(json!({"messages": [{"role": "user", "content": "hi"}], "top_k": -1, "top_p": 1, "stop": ["a", "b"]})).unwrap();
        assert_eq!((r.params.top_k, r.params.top_p), (None, None));
        assert_eq!(r.stop, ["a", "b"]);
    }

    #[test]
    fn each_bad_request_is_a_400_naming_the_field() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let with = |k: &str, v: Value| {
            let mut o = json!({"messages": user});
            o[k] = v;
            o
        };
        let cases: Vec<(Value, Option<&str>, &str)> = vec![
            (json!({}), Some("messages"), "Missing required parameter"),
            (json!({"messages": []}), Some("messages"), "at least one"),
            (
                json!({"messages": "hi"}),
                Some("messages"),
                "must be a list",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "a"}]}),
                Some("messages[0].role"),
                "alternate",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
                Some("messages[1].role"),
                "alternate",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}),
                Some("messages"),
                "last message",
            ),
            (
                json!({"messages": [{"role": "wizard", "content": "a"}]}),
                Some("messages[0].role"),
                "unknown role",
            ),
            (
                json!({"messages": [{"role": "tool", "content": "a"}]}),
                Some("messages[0].role"),
                "not supported",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]}),
                Some("messages[1].role"),
                "only supported before",
            ),
            (
                json!({"messages": [{"role": "system", "content": "a"}]}),
                Some("messages"),
                "no user message",
            ),
            (
                json!({"messages": [{"role": "user"}]}),
                Some("messages[0].content"),
                "no content",
            ),
            (
                json!({"messages": [{"role": "user", "content": "  "}]}),
                Some("messages[0].content"),
                "empty",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                Some("messages[0].content"),
                "must be text",
            ),
            (with("n", json!(2)), Some("n"), "not supported"),
            (
                with("tools", json!([{"type": "function"}])),
                Some("tools"),
                "tool calling",
            ),
            (
                with("functions", json!([{}])),
                Some("functions"),
                "tool calling",
            ),
            (
                with("tool_choice", json!("required")),
                Some("tool_choice"),
                "tool calling",
            ),
            (
                with("logprobs", json!(true)),
                Some("logprobs"),
                "not returned",
            ),
            (
                with("top_logprobs", json!(2)),
                Some("top_logprobs"),
                "not returned",
            ),
            (
                with("response_format", json!({"type": "json_object"})),
                Some("response_format"),
                "JSON",
            ),
            (
                with("frequency_penalty", json!(0.5)),
                Some("frequency_penalty"),
                "repetition_penalty",
            ),
            (
                with("logit_bias", json!({"5": 10})),
                Some("logit_bias"),
                "not applied",
            ),
            (
                with("temperature", json!(2.5)),
                Some("temperature"),
                "between 0 and 2",
            ),
            (
                with("temperature", json!("hot")),
                Some("temperature"),
                "must be a number",
            ),
            (with("top_p", json!(0)), Some("top_p"), "greater than 0"),
            (with("top_k", json!(-5)), Some("top_k"), "at least 1"),
            (with("top_k", json!(1.5)), Some("top_k"), "integer"),
            (
                with("max_tokens", json!(0)),
                Some("max_tokens"),
                "at least 1",
            ),
            (
                with("max_completion_tokens", json!(-3)),
                Some("max_completion_tokens"),
                "at least 1",
            ),
            (
                with("repetition_penalty", json!(0)),
                Some("repetition_penalty"),
                "greater than 0",
            ),
            (
                with("stop", json!(["a", "b", "c", "d", "e"])),
                Some("stop"),
                "at most 4",
            ),
            (with("stop", json!([""])), Some("stop"), "empty"),
            (with("stop", json!(3)), Some("stop"), "string"),
            (with("seed", json!("x")), Some("seed"), "integer"),
            (
                with("stream", json!("yes")),
                Some("stream"),
                "true or false",
            ),
            (
                with("stream_options", json!({"include_usage": true})),
                Some("stream_options"),
                "only allowed",
            ),
            (with("model", json!(3)), Some("model"), "string"),
        ];
        for (body, param, want) in cases {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            assert!(
                e.message.contains(want),
                "{body}: {:?} lacks {want:?}",
                e.message
            );
            let b = e.body();
            assert_eq!(b["error"]["type"], "invalid_request_error");
        }
        for bad in [&b"{not json"[..], b"[1, 2]", b""] {
            let e = parse_request(bad).unwrap_err();
            assert_eq!((e.status, e.param.as_deref()), (400, None));
        }
        assert_eq!(
            parse(json!({})).unwrap_err().body()["error"]["code"],
            "missing_required_parameter"
        );
    }
}
