//! `socratune chat` driven through a pipe on the tiny fixture model (with a small tokenizer the
//! test makes), the KV-cached decoding against recomputing the whole sequence, and
//! `bench generate`'s output. No network.

mod common;
use candle_core::{DType, Device, IndexOp, Tensor};
use common::{fixture, write_model8_stats};
use serde_json::Value;
use socratune::dataset::tokenizer::train_small;
use socratune::model::generate::{generate, SamplingParams};
use socratune::model::{adapter, load, KvCache, Source};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::Output;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const TEXTS: [&str; 6] = [
    "正義とは何だろうか？",
    "君はどう思うかね？君の考えを聞かせてくれたまえ。",
    "ソクラテスさん。正義とは法に従うことだと思います。",
    "では法が間違っていたら、どうするのかね？",
    "勇気とは何でしょうか？恐れを知らないことだと思います。",
    "こんにちは。今日は徳について話しましょう。",
];

/// A small tokenizer whose ids fit the fixture's 384-token vocabulary.
fn tokenizer(dir: &Path) -> PathBuf {
    let p = dir.join("tokenizer.json");
    let t = train_small(&TEXTS, 384).unwrap();
    std::fs::write(&p, t.to_string(false).unwrap()).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the binary in `dir` with `input` on stdin.
fn socratune(dir: &Path, args: &[&str], input: &str) -> Output {
    common::with_stdin(dir, args, input)
}

fn ok(dir: &Path, args: &[&str], input: &str) -> (String, String) {
    let out = socratune(dir, args, input);
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{args:?} failed: {stderr}");
    (stdout, stderr)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn turns(d: &Value) -> Vec<(String, String)> {
    d["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["role"].as_str().unwrap().to_string(),
                t["text"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The fixture's model with its adapter, on the CPU.
fn chat_args<'a>(f: &'a Path, tok: &'a Path) -> Vec<&'a str> {
    vec![
        "chat",
        "--model",
        s(f),
        "--tokenizer",
        s(tok),
        "--device",
        "cpu",
        "--max-new-tokens",
        "12",
        "--seed",
        "3",
    ]
}

#[test]
fn a_piped_session_streams_saves_resets_and_quits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(d);
    let f = fixture();
    let adapter = f.join("adapter");
    let mut args = chat_args(&f, &tok);
    args.extend([
        "--adapter",
        s(&adapter),
        "--opening",
        "正義とは何だろうか？",
    ]);
    let input = "こんにちは\n\n/save talk.jsonl\n/reset\n勇気とは？\n/save talk.jsonl\n/nonsense\n/quit\n無視される行\n";
    let (out, err) = ok(d, &args, input);
    // The opening first, as the persona's, its reply on the same line.
    assert!(out.starts_with("model: 正義とは何だろうか？ "), "{out}");
    assert!(
        err.contains("no variant; each reply sees the whole history, no prefix"),
        "{err}"
    );
    assert!(err.contains("(unknown command /nonsense)"), "{err}");
    let saved = lines(&d.join("talk.jsonl"));
    assert_eq!(saved.len(), 2, "one line per /save");
    let (a, b) = (turns(&saved[0]), turns(&saved[1]));
    let roles: Vec<&str> = a.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(roles, ["user", "model", "user", "model"]);
    assert_eq!(a[0].1, "正義とは何だろうか？");
    assert_eq!(a[2].1, "こんにちは");
    // After /reset: the same opening and first reply (same seed), then the new line.
    assert_eq!(b[..2], a[..2]);
    assert_eq!(b[2].1, "勇気とは？");
    assert_eq!(b.len(), 4);
    // What was streamed is what was saved; nothing after /quit was read.
    for (_, text) in a.iter().chain(&b).filter(|t| t.0 == "model") {
        assert!(
            !text.is_empty() && out.contains(text.as_str()),
            "{text:?} not in {out}"
        );
    }
    assert!(!err.contains("無視") && !out.contains("無視"));
    for d in &saved {
        assert_eq!(d["persona"], "chat");
        assert_eq!(d["question"], "custom");
        assert_eq!(d["user_temperature"], 0.0);
        assert_eq!(d["source"], "chat");
        assert_eq!(d["sampling"]["seed"], 3);
        assert!(d["adapter"].as_str().unwrap().ends_with("adapter"));
    }
    assert_ne!(saved[0]["id"], saved[1]["id"]);

    // `data check` accepts the file (no personas/questions here to check references against).
    let check = socratune(d, &["data", "check", "talk.jsonl"], "");
    let report = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(report.contains("2 dialogue(s), 0 bad line(s)"), "{report}");

    // EOF ends the session like /quit.
    let (out, _) = ok(d, &args, "");
    assert!(out.starts_with("model: 正義とは何だろうか？ "), "{out}");
}

#[test]
fn the_adapters_run_decides_variant_window_prefix_and_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(d);
    let f = fixture();
    // runs/model8: the fixture's adapter as its best, the data folder's stats naming the variant.
    let best = d.join("runs/model8/best");
    std::fs::create_dir_all(&best).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(f.join("adapter").join(file), best.join(file)).unwrap();
    }
    write_model8_stats(&d.join("runs/model8"), &tok);
    let questions = repo().join("data/questions.jsonl");
    let args = [
        "chat",
        "--model",
        s(&f),
        "--adapter",
        "runs/model8/best",
        "--device",
        "cpu",
        "--max-new-tokens",
        "8",
        "--seed",
        "1",
        "--question",
        "q03",
        "--questions",
        s(&questions),
    ];
    let (out, err) = ok(d, &args, "一つ目\n二つ目\n/save t.jsonl\n");
    assert!(
        err.contains(
            "model8/best: variant model8 from runs/model8/data/stats.json; each reply sees 2 pairs, prefix \"ソクラテスさん。\""
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!("tokenizer {}", tok.display())),
        "{err}"
    );
    assert!(out.starts_with("model: 幸福とは何だろうか？ "), "{out}");
    let saved = lines(&d.join("t.jsonl"));
    let t = turns(&saved[0]);
    assert_eq!(t.len(), 6);
    // The prefix is part of the prompt, never of the saved conversation.
    assert_eq!(t[0].1, "幸福とは何だろうか？");
    assert_eq!((t[2].1.as_str(), t[4].1.as_str()), ("一つ目", "二つ目"));
    assert_eq!(saved[0]["question"], "q03");
    assert_eq!(saved[0]["variant"], "model8");
    assert_eq!(saved[0]["window_pairs"], 2);
    assert_eq!(saved[0]["prefix"], "ソクラテスさん。");
    assert!(saved[0]["system"].is_null() && saved[0]["format"] == "chat");

    // Flags win: the whole history, another prefix.
    let mut more = args.to_vec();
    more.extend(["--window", "all", "--prefix", ""]);
    let (_, err) = ok(d, &more, "");
    assert!(
        err.contains("variant model8 from runs/model8/data/stats.json; each reply sees the whole history, no prefix"),
        "{err}"
    );
}

#[test]
fn compare_answers_each_line_with_each_adapter_on_its_own_branch() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tok = tokenizer(d);
    let f = fixture();
    let adapter = f.join("adapter");
    let both = format!("{},base", adapter.display());
    let mut args = chat_args(&f, &tok);
    args.extend(["--compare", &both, "--opening", "問い"]);
    let (out, err) = ok(d, &args, "正義とは？\n/save c.jsonl\n");
    assert!(err.contains("gemma2-tiny/adapter: no variant"), "{err}");
    assert!(err.contains("base: no variant"), "{err}");
    let saved = lines(&d.join("c.jsonl"));
    assert_eq!(saved.len(), 2, "one line per branch");
    assert!(saved[0]["adapter"].as_str().is_some());
    assert!(saved[1]["adapter"].is_null());
    let (a, b) = (turns(&saved[0]), turns(&saved[1]));
    assert_eq!((a.len(), b.len()), (4, 4));
    assert_eq!(a[2].1, "正義とは？");
    assert_eq!(b[2].1, "正義とは？");
    assert_ne!(a[1].1, b[1].1, "the adapter changes the reply");
    // Each reply is shown under its branch's name.
    for (name, t) in [("gemma2-tiny/adapter", &a), ("base", &b)] {
        assert!(out.contains(&format!("[{name}] {}", t[1].1)), "{out}");
        assert!(out.contains(&format!("[{name}] {}", t[3].1)), "{out}");
    }
    // Each branch is the conversation its model has alone (adapters are swapped, not mixed).
    for (alone, t) in [(Some(&adapter), &a), (None, &b)] {
        let mut args = chat_args(&f, &tok);
        args.extend(["--opening", "問い"]);
        if let Some(dir) = alone {
            args.extend(["--adapter", s(dir)]);
        }
        let _ = ok(d, &args, "正義とは？\n/save one.jsonl\n");
        assert_eq!(&turns(lines(&d.join("one.jsonl")).last().unwrap()), t);
    }
}

#[test]
fn the_default_opening_and_labels_come_from_configs_chat_toml() {
    let dir = tempfile::tempdir().unwrap();
    let tok = tokenizer(dir.path());
    let f = fixture();
    let save = dir.path().join("s.jsonl");
    let (out, _) = ok(
        &repo(),
        &chat_args(&f, &tok),
        &format!("/save {}\n", save.display()),
    );
    assert!(
        out.starts_with("ソクラテス: 正義とは何だろうか？ "),
        "{out}"
    );
    assert_eq!(lines(&save)[0]["question"], "q01");
    // An unknown question id and a missing opening are one-line errors.
    let mut args = chat_args(&f, &tok);
    args.extend(["--question", "q999"]);
    let o = socratune(&repo(), &args, "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no question `q999`"),
        "{err}"
    );
    let o = socratune(dir.path(), &chat_args(&f, &tok), "");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("no opening line"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn kv_cache_gives_the_tokens_of_recomputing_the_whole_sequence() {
    let dev = Device::Cpu;
    let mut m = load(&Source::Local(fixture()), DType::F32, &dev).unwrap();
    // Longer than the fixture's sliding window (7), so the sliding layers drop keys.
    let prompt = [2u32, 106, 40, 41, 42, 43, 107, 10, 106, 44];
    for with_adapter in [false, true] {
        if with_adapter {
            adapter::load(&mut m, &fixture().join("adapter")).unwrap();
        }
        let (cached, _) = generate(
            &m,
            &mut KvCache::new(),
            &prompt,
            &SamplingParams::greedy(24),
            &[],
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
        let mut ids = prompt.to_vec();
        let mut whole = Vec::new();
        for _ in 0..24 {
            let x = Tensor::new(&ids[..], &dev).unwrap().unsqueeze(0).unwrap();
            let logits = m.logits(&x, None).unwrap();
            let next = logits
                .i((0, ids.len() - 1))
                .unwrap()
                .argmax(0)
                .unwrap()
                .to_scalar::<u32>()
                .unwrap();
            whole.push(next);
            ids.push(next);
        }
        assert_eq!(cached, whole, "adapter: {with_adapter}");
    }
}

#[test]
fn bench_generate_prints_one_json_line() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "generate",
        "--preset",
        "tiny",
        "--tokens",
        "6",
        "--prompt-len",
        "5",
        "--device",
        "cpu",
        "--json",
    ];
    let (out, _) = ok(dir.path(), &args, "");
    assert_eq!(out.lines().count(), 1, "{out}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["preset"].as_str(), v["tokens"].as_u64()),
        (Some("tiny"), Some(6))
    );
    assert_eq!(v["prompt_len"], 5);
    for k in [
        "prefill_s",
        "prefill_tokens_per_s",
        "decode_s",
        "decode_tokens_per_s",
        "ms_per_token",
    ] {
        assert!(v[k].as_f64().is_some_and(|x| x >= 0.0), "{k}: {v}");
    }
    // --batch 3: three prompts decoded together, every row to the end.
    let mut batched = args.to_vec();
    batched.extend(["--batch", "3"]);
    let (out, _) = ok(dir.path(), &batched, "");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        (v["batch"].as_u64(), v["batch_tokens"].as_u64()),
        (Some(3), Some(18)),
        "{v}"
    );
    for k in ["batch_tokens_per_s", "single_tokens_per_s", "batch_speedup"] {
        assert!(v[k].as_f64().is_some_and(|x| x > 0.0), "{k}: {v}");
    }
    let o = socratune(dir.path(), &["bench", "generate", "--preset", "huge"], "");
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown preset `huge`"));
}
