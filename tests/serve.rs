//! The OpenAI-compatible server on the tiny fixture model, through a real HTTP client: plain and
//! streamed answers agree, stop strings and limits, every bad request refused with a 400 and a
//! message, concurrent clients all answered, and the `serve` command itself.

mod common;
use common::fixture;
use serde_json::{json, Value};
use socratune::chat::{PromptFormat, ServeOptions, Server};
use socratune::dataset::tokenizer::train_small;
use socratune::dataset::ChatTokenizer;
use socratune::model::{adapter, load, Source};
use std::io::{BufRead, BufReader};
use std::path::Path;

const TEXTS: [&str; 5] = [
    "正義とは何だろうか？",
    "君はどう思うかね？君の考えを聞かせてくれたまえ。",
    "ソクラテスさん。正義とは法に従うことだと思います。",
    "では法が間違っていたら、どうするのかね？",
    "You are Socrates. Answer with a question.",
];

fn tokenizer() -> ChatTokenizer {
    ChatTokenizer::new(
        train_small(&TEXTS, 384).unwrap(),
        Path::new("test/tokenizer.json"),
    )
    .unwrap()
}

fn start(threads: usize) -> Server {
    start_with(threads, 16)
}

fn start_with(threads: usize, queue: usize) -> Server {
    let mut m = load(
        &Source::Local(fixture()),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    adapter::load(&mut m, &fixture().join("adapter")).unwrap();
    let opts = ServeOptions {
        name: "tiny".into(),
        addr: "127.0.0.1:0".into(),
        format: PromptFormat::whole(),
        threads,
        queue,
        api_key: None,
    };
    Server::start(m, tokenizer(), opts).unwrap()
}

fn url(s: &Server, path: &str) -> String {
    format!("http://{}{path}", s.addr())
}

/// Status and JSON body, for any status.
fn post(s: &Server, body: &str) -> (u16, Value) {
    match ureq::post(&url(s, "/v1/chat/completions"))
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_json().unwrap()),
        Err(e) => panic!("{e}"),
    }
}

fn answer(s: &Server, body: Value) -> Value {
    let (status, v) = post(s, &body.to_string());
    assert_eq!(status, 200, "{v}");
    v
}

/// The `data:` payloads of a streamed answer, in order.
fn stream(s: &Server, body: Value) -> Vec<String> {
    let r = ureq::post(&url(s, "/v1/chat/completions"))
        .send_json(body)
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r
        .header("Content-Type")
        .unwrap()
        .starts_with("text/event-stream"));
    let mut events = Vec::new();
    let mut blank_after_each = true;
    let mut lines = BufReader::new(r.into_reader()).lines();
    while let Some(line) = lines.next() {
        let line = line.unwrap();
        let data = line
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("not an event: {line:?}"));
        events.push(data.to_string());
        blank_after_each &= lines.next().map(|l| l.unwrap()).as_deref() == Some("");
    }
    assert!(blank_after_each, "each event ends with a blank line");
    events
}

fn question() -> Value {
    json!([
        {"role": "system", "content": "You are Socrates."},
        {"role": "user", "content": "正義とは何だろうか？"},
        {"role": "assistant", "content": "君はどう思うかね？"},
        {"role": "user", "content": "法に従うことだと思います。"},
    ])
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap()
}

/// The streamed deltas joined, the finish reason and the usage chunk (if any).
fn joined(events: &[String]) -> (String, String, Option<Value>) {
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], id, "one id for the whole stream");
        match c["choices"].as_array().unwrap().first() {
            Some(ch) => {
                assert!(
                    finish.is_none(),
                    "nothing after the finish reason but usage"
                );
                text.push_str(ch["delta"]["content"].as_str().unwrap_or(""));
                if let Some(f) = ch["finish_reason"].as_str() {
                    finish = Some(f.to_string());
                }
            }
            None => usage = Some(c["usage"].clone()),
        }
    }
    (text, finish.expect("a finish reason"), usage)
}

#[test]
fn plain_and_streamed_answers_agree() {
    let s = start(4);
    let models: Value = ureq::get(&url(&s, "/v1/models"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["object"], "list");

    for sampling in [
        json!({"temperature": 0}),
        json!({"temperature": 1.0, "top_p": 0.9, "seed": 11}),
    ] {
        let mut body = json!({"model": "tiny", "messages": question(), "max_tokens": 16});
        body.as_object_mut()
            .unwrap()
            .extend(sampling.as_object().unwrap().clone());
        let whole = answer(&s, body.clone());
        assert_eq!(whole["object"], "chat.completion");
        assert_eq!(whole["model"], "tiny");
        let finish = whole["choices"][0]["finish_reason"].as_str().unwrap();
        let usage = &whole["usage"];
        let completion = usage["completion_tokens"].as_u64().unwrap();
        assert!(completion <= 16);
        assert_eq!(finish == "length", completion == 16, "{whole}");
        assert_eq!(
            usage["total_tokens"].as_u64().unwrap(),
            usage["prompt_tokens"].as_u64().unwrap() + completion
        );
        // Same seed (or greedy): the stream's deltas add up to the same answer.
        body["stream"] = json!(true);
        body["stream_options"] = json!({"include_usage": true});
        let (text, f, u) = joined(&stream(&s, body.clone()));
        assert_eq!(text, content(&whole));
        assert_eq!(f, finish);
        assert_eq!(u.as_ref(), Some(usage));
        // Without include_usage: no usage chunk.
        body.as_object_mut().unwrap().remove("stream_options");
        let (text, _, u) = joined(&stream(&s, body));
        assert_eq!((text.as_str(), u), (content(&whole), None));
    }
}

#[test]
fn stop_strings_and_token_limits() {
    let s = start(2);
    let body = json!({"messages": question(), "max_tokens": 24, "temperature": 0});
    let whole = answer(&s, body.clone());
    let text = content(&whole).to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 4, "{text:?}");
    let stop: String = chars[2..4].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    let mut with_stop = body.clone();
    with_stop["stop"] = json!(["never appears 必ず", stop]);
    let v = answer(&s, with_stop.clone());
    assert_eq!(
        (content(&v), v["choices"][0]["finish_reason"].as_str()),
        (cut, Some("stop"))
    );
    with_stop["stream"] = json!(true);
    let (streamed, finish, _) = joined(&stream(&s, with_stop));
    assert_eq!((streamed.as_str(), finish.as_str()), (cut, "stop"));

    let mut short = body;
    short["max_completion_tokens"] = json!(3);
    let v = answer(&s, short);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

#[test]
fn bad_requests_are_refused_with_a_message() {
    let s = start(2);
    let user = json!([{"role": "user", "content": "hi"}]);
    let long = "あ".repeat(400);
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"messages\": [".into(), 400, "not valid JSON"),
        (json!({}).to_string(), 400, "'messages'"),
        (json!({"messages": []}).to_string(), 400, "at least one"),
        (
            json!({"messages": [{"role": "assistant", "content": "a"}]}).to_string(),
            400,
            "alternate",
        ),
        (
            json!({"messages": [{"role": "robot", "content": "a"}]}).to_string(),
            400,
            "unknown role",
        ),
        (json!({"messages": user, "n": 3}).to_string(), 400, "'n'"),
        (
            json!({"messages": user, "tools": [{"type": "function"}]}).to_string(),
            400,
            "tool",
        ),
        (
            json!({"messages": user, "logprobs": true}).to_string(),
            400,
            "log probabilities",
        ),
        (
            json!({"messages": user, "temperature": 7}).to_string(),
            400,
            "temperature",
        ),
        (
            json!({"messages": user, "top_p": 2}).to_string(),
            400,
            "top_p",
        ),
        (
            json!({"messages": user, "max_tokens": 0}).to_string(),
            400,
            "max_tokens",
        ),
        (
            json!({"messages": [{"role": "user", "content": long}]}).to_string(),
            400,
            "maximum context length is 256",
        ),
        (
            json!({"messages": user, "max_tokens": 255}).to_string(),
            400,
            "in the completion",
        ),
        (
            json!({"messages": user, "model": "gpt-4o"}).to_string(),
            404,
            "does not exist",
        ),
    ];
    for (body, status, want) in cases {
        let (got, v) = post(&s, &body);
        assert_eq!(got, status, "{body}: {v}");
        let m = v["error"]["message"].as_str().unwrap();
        assert!(m.contains(want), "{body}: {m}");
        assert!(
            v["error"]["type"].is_string()
                && v["error"].get("param").is_some()
                && v["error"].get("code").is_some()
        );
    }
    let (_, v) = post(
        &s,
        &json!({"messages": [{"role": "user", "content": long}]}).to_string(),
    );
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    // Unknown paths and methods.
    match ureq::get(&url(&s, "/v1/nothing")).call() {
        Err(ureq::Error::Status(404, r)) => {
            assert!(r.into_string().unwrap().contains("no such endpoint"))
        }
        other => panic!("{other:?}"),
    }
    match ureq::get(&url(&s, "/v1/chat/completions")).call() {
        Err(ureq::Error::Status(405, _)) => {}
        other => panic!("{other:?}"),
    }
    // Still serving after all that.
    answer(&s, json!({"messages": user, "max_tokens": 2}));
}

#[test]
fn concurrent_clients_are_queued_and_all_answered() {
    let s = start(8);
    let body = |seed: u64| json!({"messages": question(), "max_tokens": 12, "temperature": 0.8, "seed": seed});
    let alone: Vec<String> = (0..4)
        .map(|i| content(&answer(&s, body(i))).to_string())
        .collect();
    let addr = url(&s, "/v1/chat/completions");
    let handles: Vec<_> = (0..4u64)
        .map(|i| {
            let (addr, b) = (addr.clone(), body(i));
            std::thread::spawn(move || {
                let stream = i % 2 == 1;
                let mut b = b;
                b["stream"] = json!(stream);
                let r = ureq::post(&addr).send_json(b).unwrap();
                assert_eq!(r.status(), 200);
                if stream {
                    let text = r.into_string().unwrap();
                    let events: Vec<String> = text
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: ").map(String::from))
                        .collect();
                    joined(&events).0
                } else {
                    let v: Value = r.into_json().unwrap();
                    content(&v).to_string()
                }
            })
        })
        .collect();
    let together: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        together, alone,
        "each client gets its own answer, as if alone"
    );
}

#[test]
fn the_serve_command_listens_and_answers() {
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tokenizer.json");
    std::fs::write(
        &tok,
        train_small(&TEXTS, 384).unwrap().to_string(false).unwrap(),
    )
    .unwrap();
    let server = common::ServeChild::start(
        &tok,
        &[
            "--adapter",
            fixture().join("adapter").to_str().unwrap(),
            "--name",
            "socrates",
        ],
    );
    let addr = &server.addr;
    let r = ureq::post(&format!("http://{addr}/v1/chat/completions"))
        .send_json(json!({"model": "socrates", "messages": [{"role": "user", "content": "正義とは？"}], "max_tokens": 4}));
    // Read the whole answer before stopping the server: its body may still be on the way.
    let v: Value = r.unwrap().into_json().unwrap();
    drop(server);
    assert_eq!(v["model"], "socrates");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4);
}

#[test]
fn requests_beyond_the_queue_are_told_to_retry() {
    // No request may wait: while one is answered, the others are refused at once.
    let s = start_with(8, 0);
    let addr = url(&s, "/v1/chat/completions");
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                let body = json!({"messages": question(), "max_tokens": 150, "temperature": 0.0});
                match ureq::post(&addr).send_json(body) {
                    Ok(r) => (r.status(), None),
                    Err(ureq::Error::Status(code, r)) => {
                        (code, r.header("Retry-After").map(String::from))
                    }
                    Err(e) => panic!("{e}"),
                }
            })
        })
        .collect();
    let got: Vec<(u16, Option<String>)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(got.iter().any(|(c, _)| *c == 200), "{got:?}");
    assert!(
        got.iter()
            .any(|(c, r)| *c == 503 && r.as_deref() == Some("1")),
        "{got:?}"
    );
    assert!(got.iter().all(|(c, _)| *c == 200 || *c == 503), "{got:?}");
    // Idle again: answered.
    answer(&s, json!({"messages": question(), "max_tokens": 2}));
}
