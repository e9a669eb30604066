//! `socratune eval` end to end: two runs trained on the tiny fixture, judged by the fake
//! OpenAI-compatible server in `fake_llm`.

mod common;
mod fake_llm;

use common::fixture;
use fake_llm::FakeLlm;
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const KEY_ENV: &str = "SOCRATUNE_EVAL_TEST_KEY";
const KEY: &str = "sk-eval-test-key-never-written";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_socratune"))
        .args(args)
        .current_dir(cwd)
        .env("HF_HUB_OFFLINE", "1")
        .env(KEY_ENV, KEY)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "{e}");
    (o, e)
}

/// Two finished runs (model4: no prefix, model6: a prefix) on the fixture, the
/// judge templates, an eval config with greedy decoding, and a synth config pointing at `srv`.
fn setup(d: &Path, srv: &FakeLlm) {
    let sample = repo().join("data/dialogues/sample.jsonl");
    let vocab: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let vocab = vocab["vocab_size"].to_string();
    let (s, tok) = (sample.to_str().unwrap(), d.join("tok.json"));
    let t = tok.to_str().unwrap();
    ok(&bin(
        d,
        &[
            "data",
            "tokenizer",
            "--dialogues",
            s,
            "--vocab-size",
            &vocab,
            "--out",
            t,
        ],
    ));
    let (variants, model) = (repo().join("configs/variants"), fixture());
    let sweep = [
        "sweep",
        "--variants",
        "model4,model6",
        "--runs",
        "runs",
        "--dialogues",
        s,
        "--tokenizer",
        t,
        "--max-len",
        "256",
        "--device",
        "cpu",
        "--max-steps",
        "2",
        "--micro-batch",
        "2",
        "--variants-dir",
        variants.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
    ];
    std::fs::write(d.join("train.toml"), "lora_dropout = 0.0\neval_every = 2\n").unwrap();
    let mut args = sweep.to_vec();
    args.extend(["--config", "train.toml"]);
    ok(&bin(d, &args));
    fake_llm::eval_project(d, &srv.base_url, KEY_ENV);
    std::fs::write(
        d.join("eval.toml"),
        "prompts = 5\nseed = 3\nresamples = 200\n[sampling]\ntemperature = 0\nmax_new_tokens = 6\n[base]\nprefix = \"P。\"\n",
    )
    .unwrap();
}

fn eval_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = vec!["--base"];
    a.extend(extra);
    common::eval_args("runs", &a)
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// The stored replies of every entry: (entry, prompt, reply).
fn stored_replies(d: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for e in ["base", "model4", "model6"] {
        let text = std::fs::read_to_string(d.join(format!("runs/eval/replies/{e}.jsonl"))).unwrap();
        for l in text.lines() {
            let v: Value = serde_json::from_str(l).unwrap();
            out.push((
                e.to_string(),
                v["prompt"].as_str().unwrap().to_string(),
                v["reply"].as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn judge_message(body: &Value) -> String {
    body["messages"][0]["content"].as_str().unwrap().to_string()
}

fn is_pairwise(body: &Value) -> bool {
    body["response_format"]["json_schema"]["name"] == "preference"
}

#[test]
fn the_judge_sees_exactly_the_generated_replies_and_a_rerun_pays_nothing() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, &srv);

    // Without eval.json, compare names the best by loss only.
    let (before, _) = ok(&bin(d, &["compare", "runs"]));
    assert!(
        !before.contains("judged score") && !before.contains("by judged"),
        "{before}"
    );

    // --judge none: replies only, not a single call.
    let (out, err) = ok(&bin(d, &eval_args(&["--judge", "none"])));
    assert_eq!(srv.count(), 0);
    assert!(
        out.contains("| model6 |") && out.contains("ends in ?"),
        "{out}"
    );
    assert!(
        err.contains("eval: 3 entries × 5 held-out prompts"),
        "{err}"
    );
    let report = read_json(&d.join("runs/eval.json"));
    assert!(report["judge"].is_null());
    let replies = stored_replies(d);
    assert_eq!(replies.len(), 15);

    // Killed mid-generation (two of model4's replies stored, a third torn): the rerun makes
    // only the missing ones, and they are the same as without the kill, though decoded in
    // other batches (2 and 1 instead of all 5 at once).
    let f = d.join("runs/eval/replies/model4.jsonl");
    let text = std::fs::read_to_string(&f).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(
        &f,
        format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..20]),
    )
    .unwrap();
    let (_, err) = ok(&bin(
        d,
        &eval_args(&["--judge", "none", "--batch-size", "2"]),
    ));
    assert!(err.contains("model4: 3 replies in"), "{err}");
    assert!(err.contains("tokens/s, batches of 2)"), "{err}");
    let report = read_json(&d.join("runs/eval.json"));
    let model4 = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "model4");
    let speed = &model4.unwrap()["speed"];
    assert_eq!(speed["generated"], 3, "{speed}");
    assert_eq!(speed["batch_size"], 2, "{speed}");
    assert!(speed["prompts_per_s"].as_f64().unwrap() > 0.0, "{speed}");
    assert!(
        err.contains("model6: all 5 replies stored already"),
        "{err}"
    );
    let sorted = |mut v: Vec<(String, String, String)>| {
        v.sort();
        v
    };
    assert_eq!(sorted(stored_replies(d)), sorted(replies.clone()));

    // With the judge: the stored replies are reused, and the judge gets each non-empty one.
    let (out, err) = ok(&bin(d, &eval_args(&[])));
    assert!(
        err.contains("model6: all 5 replies stored already"),
        "{err}"
    );
    let judged: Vec<String> = srv
        .requests()
        .iter()
        .map(|r| judge_message(&r.body))
        .collect();
    let non_empty: Vec<&(String, String, String)> =
        replies.iter().filter(|r| !r.2.trim().is_empty()).collect();
    assert_eq!(judged.len(), non_empty.len(), "one call per reply");
    // Each call shows the held-out conversation up to the prompt's user turn (from the corpus
    // itself), then exactly the reply generated: the same multiset, call for call.
    let corpus: Vec<Value> = std::fs::read_to_string(repo().join("data/dialogues/sample.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut want: Vec<String> = non_empty
        .iter()
        .map(|(_, prompt, reply)| {
            let (id, pair) = prompt.split_once("#p").unwrap();
            let pair: usize = pair.parse().unwrap();
            let dl = corpus.iter().find(|x| x["id"] == id).unwrap();
            let mut lines: Vec<String> = dl["turns"].as_array().unwrap()[..=2 * pair]
                .iter()
                .map(|t| {
                    let label = if t["role"] == "user" {
                        "ユーザー"
                    } else {
                        "ソクラテス"
                    };
                    format!("{label}: {}", t["text"].as_str().unwrap().trim())
                })
                .collect();
            lines.push(format!("ソクラテス: {}", reply.trim()));
            lines.join("\n")
        })
        .collect();
    let mut seen: Vec<String> = judged
        .iter()
        .map(|m| {
            let from = m.find("対話の記録：\n").unwrap() + "対話の記録：\n".len();
            let to = m.rfind("\n\nまず記録を読み").unwrap();
            m[from..to].to_string()
        })
        .collect();
    want.sort();
    seen.sort();
    assert_eq!(seen, want);
    let report = read_json(&d.join("runs/eval.json"));
    assert_eq!(report["judge"]["calls"]["calls"], judged.len());
    assert!(
        out.contains("judged") && out.contains("Best by judged score"),
        "{out}"
    );
    for e in report["entries"].as_array().unwrap() {
        let n = non_empty
            .iter()
            .filter(|r| r.0 == e["name"].as_str().unwrap())
            .count();
        if n == e["replies"].as_u64().unwrap() as usize {
            // The fake judge always says socratic 3, coherence 4.
            assert_eq!(e["socratic"]["value"], 3.0);
            assert_eq!(e["score"]["value"], 3.5);
        }
    }
    let md = std::fs::read_to_string(d.join("runs/eval.md")).unwrap();
    assert!(md.contains("| model4 |") && md.contains("Judge: "), "{md}");

    // A rerun: no call at all, the same report.
    let n = srv.count();
    let (_, err) = ok(&bin(d, &eval_args(&[])));
    assert_eq!(srv.count(), n, "{err}");
    let again = read_json(&d.join("runs/eval.json"));
    assert_eq!(again["entries"], report["entries"]);
    assert_eq!(again["judge"]["calls"]["replayed"], judged.len());
    // What was spent in all stays: every call once, 10 + 5 tokens each from the fake.
    assert_eq!(again["judge"]["calls"]["spent"]["calls"], judged.len());
    assert_eq!(
        again["judge"]["calls"]["spent"]["prompt_tokens"],
        10 * judged.len()
    );

    // compare now shows the judged columns and names the best by judged score.
    let (after, _) = ok(&bin(d, &["compare", "runs"]));
    assert!(
        after.contains("judged score") && after.contains("win vs base"),
        "{after}"
    );
    assert!(after.contains("**Best by judged score: model"), "{after}");
    // The fixture's context is too short for the common metric: the loss hint stays.
    assert!(after.contains("**Lowest best val loss: model"), "{after}");

    // synth review opens the judged replies like any judged file.
    let (out, _) = ok(&bin(
        d,
        &[
            "synth",
            "review",
            "--input",
            "runs/eval/judged.jsonl",
            "--out",
            "runs/eval/reviewed.jsonl",
            "--apply",
            "--config",
            "synth.toml",
        ],
    ));
    assert!(out.contains("review:"), "{out}");
    assert!(d.join("runs/eval/reviewed.calibration.md").exists());

    // The key is never written.
    for entry in walk(&d.join("runs")) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(KEY),
            "{}",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn pairwise_asks_both_orders_and_a_kill_mid_eval_repeats_no_call() {
    let srv = FakeLlm::start();
    // Always prefers the first reply shown: a pure position bias, which the two orders cancel.
    srv.set_judge(|body| {
        if is_pairwise(body) {
            r#"{"comment":"Aのほうが問い返している","better":"A"}"#.into()
        } else {
            r#"{"comment":"問い返しが自然","socratic":2,"coherence":3}"#.into()
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    setup(d, &srv);
    ok(&bin(d, &eval_args(&["--judge", "none"])));
    let replies = stored_replies(d);

    // Hold every call after the 7th, kill the eval while calls are held, then resume.
    srv.hold_after(7);
    let mut child = Command::new(env!("CARGO_BIN_EXE_socratune"))
        .args(eval_args(&["--pairwise"]))
        .current_dir(d)
        .env("HF_HUB_OFFLINE", "1")
        .env(KEY_ENV, KEY)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    // Both workers (concurrency 2) blocked: each journaled its previous answer before asking.
    while srv.holding() < 2 {
        assert!(start.elapsed().as_secs() < 120, "no call was held");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let answered: Vec<Value> = srv
        .requests()
        .into_iter()
        .filter(|r| r.answered)
        .map(|r| r.body)
        .collect();
    assert!(answered.len() >= 7);
    srv.release();
    srv.clear();
    let (out, _) = ok(&bin(d, &eval_args(&["--pairwise"])));
    let after: Vec<Value> = srv.requests().into_iter().map(|r| r.body).collect();
    // Both orders of every pair of non-empty replies to each prompt.
    let pair_msgs: Vec<String> = after
        .iter()
        .chain(&answered)
        .filter(|b| is_pairwise(b))
        .map(judge_message)
        .collect();
    let prompts: BTreeSet<&String> = replies.iter().map(|r| &r.1).collect();
    let mut want = 0;
    for p in &prompts {
        let k = replies
            .iter()
            .filter(|r| &&r.1 == p && !r.2.trim().is_empty())
            .count();
        want += k * k.saturating_sub(1);
    }
    assert_eq!(pair_msgs.len(), want);
    // No call answered before the kill was made again: the calls of both invocations add up
    // to exactly one per reply and one per ordered pair. (Bodies alone cannot tell: two runs
    // may give the same reply to a prompt, and each is still judged once.)
    let replies_to_judge = replies.iter().filter(|r| !r.2.trim().is_empty()).count();
    assert_eq!(answered.len() + after.len(), replies_to_judge + want);
    let report = read_json(&d.join("runs/eval.json"));
    assert_eq!(report["judge"]["pairwise"]["verdicts"], want);
    // Position bias cancels: every entry that was compared has strength 0 and wins half
    // against the base model.
    for e in report["entries"].as_array().unwrap() {
        let s = &e["pairwise"]["strength"]["value"];
        if let Some(s) = s.as_f64() {
            assert!(s.abs() < 1e-9, "{e}");
        }
        if let Some(w) = e["pairwise_win_vs_base"]["value"].as_f64() {
            assert!((w - 0.5).abs() < 1e-12, "{e}");
        }
    }
    assert!(out.contains("Pairwise ranking (Bradley–Terry)"), "{out}");
    assert!(
        out.contains("Rank agreement") || report["rank_agreement"].is_null(),
        "{out}"
    );
}

#[test]
fn bad_flags_and_files_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("runs")).unwrap();
    let e = bin(d, &["eval", "--runs", "runs", "--judge", "none"]);
    assert!(!e.status.success());
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("no finished runs"), "{err}");
    let e = bin(
        d,
        &[
            "eval",
            "--runs",
            "runs",
            "--variants",
            "model9",
            "--judge",
            "none",
        ],
    );
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("no finished run `model9`"), "{err}");
    let e = bin(d, &["eval", "--runs", "runs", "--batch-size", "0"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("--batch-size: batch_size must be between 1 and 1024, got 0"),
        "{err}"
    );
    let e = bin(d, &["eval", "--runs", "runs", "--judge", "gpt"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(err.contains("--judge `gpt`"), "{err}");
    std::fs::write(
        d.join("e.toml"),
        "prompts = 3\n[sampling]\ntemprature = 1\n",
    )
    .unwrap();
    let e = bin(d, &["eval", "--runs", "runs", "--eval-config", "e.toml"]);
    let err = String::from_utf8_lossy(&e.stderr);
    assert!(
        err.contains("e.toml:3:") && err.contains("temprature"),
        "{err}"
    );
}
