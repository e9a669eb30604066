//! Hostile and unlucky users: each probe that once broke a command, replayed so that it cannot
//! come back. Loopback only, bounded in time and memory.

mod common;
mod fake_llm;
use common::ServeChild;
use fake_llm::{project, FakeLlm};
use serde_json::{json, Value};
use socratune::dataset::tokenizer::train_small;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tokenizer_file(dir: &Path) -> PathBuf {
    let texts = [
        "正義とは何だろうか？",
        "You are Socrates. Answer with a question.",
    ];
    let path = dir.join("tokenizer.json");
    std::fs::write(
        &path,
        train_small(&texts, 384).unwrap().to_string(false).unwrap(),
    )
    .unwrap();
    path
}

/// Sends raw bytes and reads the answer until the server closes (or 20 s pass).
fn raw(addr: &str, head: &[u8], body: &[u8]) -> String {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(head).unwrap();
    // The server may answer (and close) before the whole body is sent.
    let _ = c.write_all(body);
    let mut got = Vec::new();
    let _ = c.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

fn post_head(len: usize) -> Vec<u8> {
    format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n").into_bytes()
}

fn chat_body(content_len: usize) -> Vec<u8> {
    json!({"messages": [{"role": "user", "content": "a".repeat(content_len)}]})
        .to_string()
        .into_bytes()
}

#[test]
fn serve_survives_a_huge_content_length_and_a_closed_socket() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = ServeChild::start(&tokenizer_file(dir.path()), &[]);
    {
        let mut c = TcpStream::connect(&s.addr).unwrap();
        c.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n{}")
            .unwrap();
    }
    // Announced but over the cap: refused before the body is read.
    let got = raw(
        &s.addr,
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
        b"{}",
    );
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(s.alive(), "serve died");
    let r: Value = ureq::get(&format!("http://{}/v1/models", s.addr))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(r["object"], "list");
}

#[test]
fn serve_memory_returns_after_large_refused_requests() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServeChild::start(&tokenizer_file(dir.path()), &[]);
    let before = s.rss_mib();
    // 15 MB, under the body cap, far over the context: refused without tokenizing it.
    let body = chat_body(15_000_000);
    let got = raw(&s.addr, &post_head(body.len()), &body);
    assert!(
        got.starts_with("HTTP/1.1 400"),
        "{}",
        &got[..got.len().min(300)]
    );
    assert!(got.contains("context_length_exceeded"), "{got}");
    let after_one = s.rss_mib();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let (addr, body) = (s.addr.clone(), body.clone());
            std::thread::spawn(move || raw(&addr, &post_head(body.len()), &body))
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap().starts_with("HTTP/1.1 400"));
    }
    std::thread::sleep(Duration::from_millis(200));
    let after_three = s.rss_mib();
    assert!(
        after_one <= before + 50 && after_three <= before + 50,
        "RSS {before} MiB before, {after_one} after one 15 MB request, {after_three} after three"
    );
}

#[test]
fn serve_bounds_nesting_and_message_count() {
    let dir = tempfile::tempdir().unwrap();
    let s = ServeChild::start(&tokenizer_file(dir.path()), &[]);
    let post = |body: String| match ureq::post(&format!("http://{}/v1/chat/completions", s.addr))
        .send_string(&body)
    {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(c, r)) => (c, r.into_string().unwrap()),
        Err(e) => panic!("{e}"),
    };
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (code, text) = post(format!(r#"{{"messages": {deep}}}"#));
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("recursion limit"), "{text}");
    let many: Vec<Value> = (0..5000)
        .map(|i| json!({"role": if i % 2 == 0 {"user"} else {"assistant"}, "content": "x"}))
        .collect();
    let (code, text) = post(json!({ "messages": many }).to_string());
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("messages"), "{text}");
}

#[test]
fn serve_requires_the_key_when_asked_and_never_prints_it() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer_file(dir.path());
    std::env::set_var("HOSTILE_TEST_KEY", "sk-hostile-42");
    let s = ServeChild::start(&tok, &["--api-key-env", "HOSTILE_TEST_KEY"]);
    let url = format!("http://{}/v1/models", s.addr);
    match ureq::get(&url).call() {
        Err(ureq::Error::Status(401, r)) => {
            assert!(r.into_string().unwrap().contains("invalid_api_key"))
        }
        other => panic!("{other:?}"),
    }
    match ureq::get(&url)
        .set("Authorization", "Bearer sk-wrong")
        .call()
    {
        Err(ureq::Error::Status(401, _)) => {}
        other => panic!("{other:?}"),
    }
    let ok = ureq::get(&url)
        .set("Authorization", "Bearer sk-hostile-42")
        .call()
        .unwrap();
    assert_eq!(ok.status(), 200);
    drop(s);
    // A missing variable is refused before anything loads; a public host is warned about.
    let out = common::bin()
        .args([
            "serve",
            "--model",
            "/nonexistent-model",
            "--host",
            "0.0.0.0",
        ])
        .args(["--tokenizer", tok.to_str().unwrap(), "--port", "0"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("warning: serving on 0.0.0.0"), "{err}");
    let out = common::bin()
        .args(["serve", "--model", "/nonexistent-model"])
        .args(["--api-key-env", "HOSTILE_TEST_UNSET_VAR"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HOSTILE_TEST_UNSET_VAR") && err.contains("not set"),
        "{err}"
    );
}

#[test]
fn a_judge_failure_is_asked_again_on_the_next_run_not_replayed() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = project(d, &srv.base_url, "HOSTILE_JUDGE_KEY", "");
    let input = d.join("dialogues.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"id":"d1","persona":"p001","question":"q01","user_temperature":0.3,"turns":[{"role":"user","text":"問い1とは何だろうか？"},{"role":"model","text":"きみはどう思う？"}]}"#,
            "\n"
        ),
    )
    .unwrap();
    let run = || {
        common::bin()
            .args(["synth", "judge", "--config"])
            .arg(&cfg)
            .arg("--prompts")
            .arg(d.join("prompts"))
            .arg("--input")
            .arg(&input)
            .arg("--out")
            .arg(d.join("judged.jsonl"))
            .env("HOSTILE_JUDGE_KEY", "k")
            .output()
            .unwrap()
    };
    // Truncated JSON with `finish_reason: stop`, on every attempt.
    srv.set_judge(|_| r#"{"comment":"途中で"#.into());
    let o = run();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(err.contains("ask again"), "{err}");
    // The judge is healthy now: the rerun asks it, and the dialogue is judged.
    srv.clear();
    srv.set_judge(|_| r#"{"comment":"良い","socratic":3,"coherence":4}"#.into());
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(srv.count(), 1);
    let judged = std::fs::read_to_string(d.join("judged.jsonl")).unwrap();
    assert!(judged.contains(r#""socratic":3"#), "{judged}");
}

/// A writable copy of the fixture model (the original is read-only and shared).
fn model_copy(dir: &Path) -> PathBuf {
    let m = dir.join("model");
    std::fs::create_dir_all(m.join("adapter")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(common::fixture().join(f), m.join(f)).unwrap();
    }
    for f in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(
            common::fixture().join("adapter").join(f),
            m.join("adapter").join(f),
        )
        .unwrap();
    }
    for f in walk(&m) {
        let mut p = std::fs::metadata(&f).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        p.set_readonly(false);
        std::fs::set_permissions(&f, p).unwrap();
    }
    m
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v.sort();
    v
}

/// Every file under `dir` with its content hash.
fn snapshot(dir: &Path) -> Vec<(PathBuf, String)> {
    walk(dir)
        .into_iter()
        .map(|p| {
            let h = socratune::fsutil::sha256_file(&p).unwrap();
            (p, h)
        })
        .collect()
}

#[test]
fn export_never_writes_over_its_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = model_copy(d);
    let adapter = m.join("adapter");
    std::os::unix::fs::symlink(&m, d.join("link")).unwrap();
    let before = snapshot(&m);
    let export = |out: &Path| {
        common::bin()
            .args(["export", "--dtype", "f32", "--adapter"])
            .arg(&adapter)
            .arg("--model")
            .arg(&m)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    for (out, want) in [
        (m.clone(), "is the base model"),
        (d.join("link"), "is the base model"),
        (d.to_path_buf(), "contains the base model"),
        (m.join("merged"), "lies inside the base model"),
        (d.join("link/merged"), "lies inside the base model"),
    ] {
        let o = export(&out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{}: {err}", out.display());
        assert!(err.contains(want), "{}: {err}", out.display());
    }
    assert_eq!(snapshot(&m), before, "the inputs are untouched");
    // Apart from the inputs, it works.
    let o = export(&d.join("merged"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn data_build_refuses_an_out_holding_its_dialogues() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("dialogues.jsonl"), "").unwrap();
    let o = common::bin()
        .args(["data", "build", "--all", "--dialogues"])
        .arg(corpus.join("dialogues.jsonl"))
        .arg("--out")
        .arg(&corpus)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("contains the dialogue file"), "{err}");
}
