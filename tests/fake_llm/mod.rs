//! A local chat-completions server for tests (127.0.0.1, tiny_http). It records every request,
//! answers deterministically, and can be scripted to fail: 429 with retry-after, 5xx, JSON
//! array error bodies, truncated JSON, slow answers, `finish_reason = length`, null content,
//! or to hold requests unanswered (to kill a client mid-call).

#![allow(dead_code)]

use serde_json::{json, Value};
use socratune::fsutil::sha256_hex;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// What to do with one request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status, body and extra headers.
    Status {
        code: u16,
        body: String,
        headers: Vec<(String, String)>,
    },
    /// 200 with a JSON body cut off in the middle.
    Truncated,
    /// Answer normally after a pause.
    Slow(Duration),
    /// 200 with `finish_reason = length`.
    Length,
    /// 200 with `content: null`, no `usage`.
    NullContent,
}

impl Fault {
    pub fn status(code: u16, body: &str) -> Self {
        Fault::Status {
            code,
            body: body.into(),
            headers: vec![],
        }
    }
    pub fn with_header(self, k: &str, v: &str) -> Self {
        match self {
            Fault::Status {
                code,
                body,
                mut headers,
            } => {
                headers.push((k.into(), v.into()));
                Fault::Status {
                    code,
                    body,
                    headers,
                }
            }
            other => other,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Recorded {
    /// Arrival number since the server started (not reset by `clear`).
    pub seq: usize,
    pub body: Value,
    pub auth: Option<String>,
    /// The response was written.
    pub answered: bool,
    pub at: Instant,
}

type JudgeFn = Box<dyn Fn(&Value) -> String + Send>;

struct State {
    script: VecDeque<Fault>,
    requests: Vec<Recorded>,
    arrived: usize,
    delay: Duration,
    /// Once this many requests were answered, hold the others until `release`.
    hold_after: Option<usize>,
    released: bool,
    /// Requests blocked in the hold right now.
    holding: usize,
    judge: JudgeFn,
}

pub struct FakeLlm {
    pub base_url: String,
    state: Arc<(Mutex<State>, Condvar)>,
    server: Arc<tiny_http::Server>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The normal answer's text: a function of the request, so a repeated request is answered
/// the same way.
pub fn reply_for(body: &Value) -> String {
    let h = sha256_hex(body.to_string().as_bytes());
    let model = body["model"].as_str().unwrap_or("?");
    format!("{model}の返答（{}）です。きみはどう思うかね？", &h[..8])
}

fn completion(content: Value, finish: &str, usage: bool) -> String {
    let mut v = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "served-model",
        "system_fingerprint": "fp_test",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish}],
    });
    if usage {
        v["usage"] = json!({"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15});
    }
    v.to_string()
}

impl FakeLlm {
    pub fn start() -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind 127.0.0.1"));
        let port = server.server_addr().to_ip().expect("ip listener").port();
        let state = Arc::new((
            Mutex::new(State {
                script: VecDeque::new(),
                requests: Vec::new(),
                arrived: 0,
                delay: Duration::ZERO,
                hold_after: None,
                released: false,
                holding: 0,
                judge: Box::new(|_| {
                    r#"{"comment":"問い返しが自然","socratic":3,"coherence":4}"#.to_string()
                }),
            }),
            Condvar::new(),
        ));
        let (srv, st) = (Arc::clone(&server), Arc::clone(&state));
        let thread = std::thread::spawn(move || {
            for req in srv.incoming_requests() {
                let st = Arc::clone(&st);
                std::thread::spawn(move || handle(req, st));
            }
        });
        Self {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            state,
            server,
            thread: Some(thread),
        }
    }

    /// Faults for the next requests, in order (one each); after them, normal answers.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .script
            .extend(faults);
    }
    pub fn set_delay(&self, d: Duration) {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).delay = d;
    }
    pub fn hold_after(&self, answered: usize) {
        let mut s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        s.hold_after = Some(answered);
        s.released = false;
    }
    /// Lets held requests go (their clients may be gone) and stops holding.
    pub fn release(&self) {
        let mut s = self.state.0.lock().unwrap_or_else(|e| e.into_inner());
        s.released = true;
        s.hold_after = None;
        self.state.1.notify_all();
    }
    pub fn set_judge(&self, f: impl Fn(&Value) -> String + Send + 'static) {
        self.state.0.lock().unwrap_or_else(|e| e.into_inner()).judge = Box::new(f);
    }
    pub fn requests(&self) -> Vec<Recorded> {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clone()
    }
    pub fn count(&self) -> usize {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .len()
    }
    /// Requests blocked by `hold_after` right now.
    pub fn holding(&self) -> usize {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .holding
    }
    pub fn clear(&self) {
        self.state
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .requests
            .clear();
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.release();
        self.server.unblock();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn handle(mut req: tiny_http::Request, st: Arc<(Mutex<State>, Condvar)>) {
    let mut text = String::new();
    let _ = req.as_reader().read_to_string(&mut text);
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let auth = req
        .headers()
        .iter()
        .find(|h| h.field.equiv("Authorization"))
        .map(|h| h.value.to_string());
    let (seq, fault, delay, reply) = {
        let (lock, cv) = &*st;
        let mut s = lock.lock().unwrap_or_else(|e| e.into_inner());
        let seq = s.arrived;
        s.arrived += 1;
        s.requests.push(Recorded {
            seq,
            body: body.clone(),
            auth,
            answered: false,
            at: Instant::now(),
        });
        let answered = s.requests.iter().filter(|r| r.answered).count();
        if matches!(s.hold_after, Some(n) if answered >= n) {
            s.holding += 1;
            while !s.released {
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
            s.holding -= 1;
        }
        let fault = s.script.pop_front();
        let reply = if body.get("response_format").is_some() {
            (s.judge)(&body)
        } else {
            reply_for(&body)
        };
        (seq, fault, s.delay, reply)
    };
    std::thread::sleep(delay);
    let json_header = tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap();
    let ok = |s: String| tiny_http::Response::from_string(s).with_header(json_header.clone());
    let resp = match fault {
        None => ok(completion(json!(reply), "stop", true)),
        Some(Fault::Slow(d)) => {
            std::thread::sleep(d);
            ok(completion(json!(reply), "stop", true))
        }
        Some(Fault::Truncated) => {
            let full = completion(json!(reply), "stop", true);
            ok(full[..full.len() / 2].to_string())
        }
        Some(Fault::Length) => ok(completion(json!("途中で切れ"), "length", true)),
        Some(Fault::NullContent) => ok(completion(Value::Null, "stop", false)),
        Some(Fault::Status {
            code,
            body,
            headers,
        }) => {
            let mut r = ok(body).with_status_code(code);
            for (k, v) in headers {
                r = r.with_header(
                    tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap(),
                );
            }
            r
        }
    };
    if req.respond(resp).is_ok() {
        let mut s = st.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = s.requests.iter_mut().find(|r| r.seq == seq) {
            r.answered = true;
        }
    }
}

/// Writes a small project: prompts, personas, questions and a config pointing every role at
/// `base_url` (API key from the variable `key_env`). Returns the config path.
/// [`project`], with the repository's judge templates for `eval` in `prompts/`.
pub fn eval_project(dir: &Path, base_url: &str, key_env: &str) {
    project(dir, base_url, key_env, "");
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/prompts");
    for f in ["judge_reply.txt", "judge_pair.txt"] {
        std::fs::copy(shipped.join(f), dir.join("prompts").join(f)).unwrap();
    }
}

pub fn project(
    dir: &Path,
    base_url: &str,
    key_env: &str,
    extra_limits: &str,
) -> std::path::PathBuf {
    let prompts = dir.join("prompts");
    std::fs::create_dir_all(&prompts).unwrap();
    std::fs::write(
        prompts.join("socrates.txt"),
        "あなたはソクラテスです。問い「{{question}}」について問い返してください。",
    )
    .unwrap();
    std::fs::write(
        prompts.join("user.txt"),
        "あなたは{{persona_name}}です。{{persona_description}}\n話題は「{{question}}」。",
    )
    .unwrap();
    std::fs::write(
        prompts.join("judge.txt"),
        "次の対話を採点してください。\n{{dialogue}}\nJSONで答えてください。",
    )
    .unwrap();
    std::fs::write(
        dir.join("personas.jsonl"),
        concat!(
            r#"{"id":"p001","kind":"ordinary","name":"佐藤","description":"町工場の経営者。"}"#,
            "\n",
            r#"{"id":"p002","kind":"historical","name":"孔子","description":"春秋時代の思想家。"}"#,
            "\n",
        ),
    )
    .unwrap();
    let qs: String = (1..=6)
        .map(|i| format!("{{\"id\":\"q{i:02}\",\"text\":\"問い{i}とは何だろうか？\"}}\n"))
        .collect();
    std::fs::write(dir.join("questions.jsonl"), qs).unwrap();
    let cfg = dir.join("synth.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[defaults]
base_url = "{base_url}"
api_key_env = "{key_env}"
timeout_s = 5

[socrates]
model = "socrates-model"
temperature = 0.8
top_p = 0.95
max_tokens = 300
seed = 7

[user]
model = "user-model"
max_tokens = 300

[judge]
model = "judge-model"

[transcript]
user_label = "ユーザー"
model_label = "ソクラテス"

[limits]
concurrency = 2
max_attempts = 4
base_delay_ms = 5
max_backoff_s = 0.05
{extra_limits}
"#
        ),
    )
    .unwrap();
    cfg
}
