//! Judge, review and filter, and the whole chain through the binary with an API key that must
//! never appear in any file or output.

mod common;
mod fake_llm;

use fake_llm::{project, FakeLlm, Fault};
use serde_json::Value;
use socratune::corpus::{load_dialogues, Decision, Dialogue, LoadOptions};
use socratune::fsutil::sha256_file;
use socratune::synth::filter::{filter, FilterOptions};
use socratune::synth::judge::{judge, JudgeOptions};
use socratune::synth::minhash::MinHashParams;
use socratune::synth::review::{Effect, Key, Session};
use socratune::synth::SynthConfig;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn dialogue(
    id: &str,
    persona: &str,
    question: &str,
    t: f64,
    texts: &[&str],
    judge: Option<(u8, u8)>,
) -> Dialogue {
    let turns: Vec<Value> = texts
        .iter()
        .enumerate()
        .map(|(i, x)| serde_json::json!({"role": if i % 2 == 0 { "user" } else { "model" }, "text": x}))
        .collect();
    let mut v = serde_json::json!({"id": id, "persona": persona, "question": question, "user_temperature": t, "turns": turns});
    if let Some((s, c)) = judge {
        v["judge"] =
            serde_json::json!({"socratic": s, "coherence": c, "comment": "c", "model": "m"});
    }
    serde_json::from_value(v).unwrap()
}

fn write(path: &Path, ds: &[Dialogue]) {
    socratune::corpus::write_jsonl(path, ds).unwrap();
}

fn read(path: &Path) -> Vec<Dialogue> {
    load_dialogues(path, LoadOptions::default())
        .unwrap()
        .records
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

fn first_message(body: &Value) -> String {
    body["messages"][0]["content"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn judge_validates_reasks_and_records_failures_without_guessing() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_JUDGE_TEST_KEY", "");
    let input = dir.path().join("dialogues.jsonl");
    write(
        &input,
        &[
            dialogue(
                "d-ok",
                "p001",
                "q01",
                0.3,
                &["問い1とは何だろうか？", "きみはどう思う？"],
                None,
            ),
            dialogue(
                "d-once",
                "p001",
                "q02",
                0.3,
                &["問い2とは何だろうか？", "ONCE"],
                None,
            ),
            dialogue(
                "d-never",
                "p001",
                "q03",
                0.3,
                &["問い3とは何だろうか？", "NEVER"],
                None,
            ),
            dialogue(
                "d-low",
                "p001",
                "q04",
                0.3,
                &["問い4とは何だろうか？", "LOW"],
                None,
            ),
            dialogue(
                "d-had",
                "p001",
                "q05",
                0.3,
                &["問い5とは何だろうか？", "ok"],
                Some((4, 4)),
            ),
        ],
    );
    srv.set_judge(|body| {
        let prompt = first_message(body);
        let asks = body["messages"].as_array().unwrap().len();
        if prompt.contains("ONCE") && asks == 1 {
            r#"{"comment":"x","socratic":7,"coherence":3}"#.into()
        } else if prompt.contains("NEVER") {
            r#"{"comment":"途中で"#.into()
        } else if prompt.contains("LOW") {
            r#"{"comment":"説明が長い","socratic":1,"coherence":2}"#.into()
        } else {
            r#"{"comment":"問い返しが自然","socratic":3,"coherence":4}"#.into()
        }
    });
    let input_sha = sha256_file(&input).unwrap();
    let out = dir.path().join("judged.jsonl");
    let opts = JudgeOptions {
        config: SynthConfig::load(&cfg).unwrap(),
        prompts: dir.path().join("prompts"),
        template: socratune::synth::judge::JUDGE_PROMPT.into(),
        input: input.clone(),
        out: out.clone(),
        max_reasks: 2,
        rejudge: false,
        user_label: "ユーザー".into(),
        model_label: "ソクラテス".into(),
        retry_failed: false,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let s = judge(&opts).unwrap();
    assert_eq!(
        (s.total, s.judged, s.already_judged, s.flagged),
        (5, 3, 1, 1)
    );
    assert_eq!(s.failures.len(), 1);
    let f = &s.failures[0];
    assert_eq!((f.id.as_str(), f.attempts), ("d-never", 3));
    assert!(f.error.contains("truncated"), "{}", f.error);
    // d-ok 1 + d-once 2 + d-never 3 + d-low 1.
    let reqs = srv.requests();
    assert_eq!(reqs.len(), 7);
    for r in &reqs {
        assert_eq!(r.body["temperature"].as_f64(), Some(0.0));
        assert_eq!(r.body["response_format"]["type"], "json_schema");
        let schema = &r.body["response_format"]["json_schema"]["schema"];
        assert_eq!(
            schema["required"],
            serde_json::json!(["comment", "socratic", "coherence"])
        );
        assert!(first_message(&r.body).contains("ユーザー: 問い"));
    }
    let reask = reqs
        .iter()
        .find(|r| {
            first_message(&r.body).contains("ONCE")
                && r.body["messages"].as_array().unwrap().len() == 3
        })
        .unwrap();
    assert_eq!(reask.body["messages"][1]["role"], "assistant");
    assert!(reask.body["messages"][2]["content"]
        .as_str()
        .unwrap()
        .contains("`socratic` must be an integer 0–4, got 7"));

    let judged = read(&out);
    assert_eq!(judged.len(), 5);
    let j = judged[0].judge.as_ref().unwrap();
    assert_eq!(
        (j.socratic, j.coherence, j.comment.as_str()),
        (3, 4, "問い返しが自然")
    );
    assert_eq!(j.model.as_deref(), Some("judge-model"));
    assert_eq!(j.extra["fingerprint"], "fp_test");
    assert_eq!(j.extra["served_model"], "served-model");
    assert_eq!(judged[1].judge.as_ref().unwrap().socratic, 3);
    assert!(
        judged[2].judge.is_none(),
        "a failed judgement is never guessed"
    );
    assert_eq!(judged[3].judge.as_ref().unwrap().coherence, 2);
    assert_eq!(
        judged[4].judge.as_ref().unwrap().model.as_deref(),
        Some("m"),
        "already judged: kept"
    );
    let failures = std::fs::read_to_string(dir.path().join("judged.failures.jsonl")).unwrap();
    assert!(
        failures.contains("d-never") && failures.contains("途中で"),
        "{failures}"
    );
    assert_eq!(
        sha256_file(&input).unwrap(),
        input_sha,
        "the input is never modified"
    );

    // Resumable: every answer is in the journal, and only the failed judgement is asked
    // again (its answers are not replayed as final).
    srv.clear();
    let before = std::fs::read(&out).unwrap();
    judge(&opts).unwrap();
    assert_eq!(srv.count(), 3);
    assert!(srv
        .requests()
        .iter()
        .all(|r| first_message(&r.body).contains("NEVER")));
    assert_eq!(std::fs::read(&out).unwrap(), before);

    let e = judge(&JudgeOptions {
        out: input.clone(),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("never modifies its input"), "{e}");
}

#[test]
fn review_decisions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ds = vec![
        dialogue("a", "p001", "q01", 0.3, &["q", "m"], Some((2, 4))),
        dialogue("b", "p001", "q02", 0.3, &["q", "m"], Some((4, 4))),
        dialogue("c", "p001", "q03", 0.3, &["q", "m"], Some((1, 1))),
        dialogue("d", "p001", "q04", 0.3, &["q", "m"], Some((3, 0))),
    ];
    let mut ds = ds;
    ds[1].review = Some(socratune::corpus::Review {
        decision: Decision::Drop,
        note: None,
        extra: Default::default(),
    });
    let path = dir.path().join("judged.review.json");
    let (mut s, warnings) = Session::open(&ds, "sha-1", &path, 0.0, 0).unwrap();
    assert!(warnings.is_empty());
    // A review already in the input seeds the decisions.
    assert_eq!(
        s.queue.decision("b").unwrap().decision,
        Some(Decision::Drop)
    );
    assert_eq!(s.queue.cursor(), Some("a"));
    assert_eq!(s.key(Key::Char('k')).unwrap(), Effect::Save);
    for k in [
        Key::Char('n'),
        Key::Char('長'),
        Key::Char('い'),
        Key::Enter,
        Key::Char('2'),
        Key::Char('1'),
        Key::Char('d'),
    ] {
        s.key(k).unwrap();
    }
    assert_eq!(s.queue.cursor(), Some("d"));
    // The process ends here without any explicit save (as if the terminal closed).
    drop(s);

    let (s, _) = Session::open(&ds, "sha-1", &path, 0.0, 0).unwrap();
    assert_eq!(
        s.queue.cursor(),
        Some("d"),
        "resumes where the reviewer was"
    );
    let a = s.queue.decision("a").unwrap();
    assert_eq!(a.decision, Some(Decision::Keep));
    assert_eq!(
        s.queue.decision("b").unwrap().decision,
        Some(Decision::Drop)
    );
    let c = s.queue.decision("c").unwrap();
    assert_eq!(
        (c.decision, c.note.as_deref(), c.socratic, c.coherence),
        (Some(Decision::Drop), Some("長い"), Some(2), Some(1))
    );

    let (_, warnings) = Session::open(&ds, "sha-2", &path, 0.1, 0).unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

#[test]
fn filter_drops_with_reasons_finds_duplicates_and_reports_coverage() {
    let dir = tempfile::tempdir().unwrap();
    project(dir.path(), "http://127.0.0.1:9/v1", "UNUSED", "");
    let long = "友よ、きみは正義を強い者の利益だと言ったね。では、靴職人が自分の利益のために靴を作るとき、それは正しい仕事と言えるのだろうか。私にはよくわからないのだが、ぜひ教えてくれないか。";
    let near = long.replace("靴職人", "大工").replace("靴を", "家を");
    let mut ds = vec![
        dialogue(
            "d1",
            "p001",
            "q01",
            0.3,
            &["問い1とは何だろうか？", long],
            Some((3, 4)),
        ),
        dialogue(
            "d2",
            "p001",
            "q02",
            0.7,
            &[
                "問い2とは何だろうか？",
                "幸福とは富のことだろうか。病の金持ちはどうだろう。",
            ],
            Some((2, 4)),
        ),
        dialogue(
            "d3",
            "p001",
            "q03",
            0.3,
            &[
                "問い3とは何だろうか？",
                "勇気とは何か、戦場の兵士を考えてみよう。",
            ],
            Some((4, 4)),
        ),
        dialogue(
            "d4",
            "p001",
            "q01",
            0.7,
            &["問い1とは何だろうか？", &near],
            Some((4, 3)),
        ),
        dialogue(
            "d5",
            "p001",
            "q05",
            0.3,
            &["問い5とは何だろうか？", "美とは何だろうね。"],
            None,
        ),
    ];
    ds[2].review = Some(socratune::corpus::Review {
        decision: Decision::Drop,
        note: Some("口調が現代的".into()),
        extra: Default::default(),
    });
    let input = dir.path().join("reviewed.jsonl");
    write(&input, &ds);
    let opts = FilterOptions {
        input: input.clone(),
        out: dir.path().join("kept.jsonl"),
        personas: dir.path().join("personas.jsonl"),
        questions: dir.path().join("questions.jsonl"),
        include_unjudged: false,
        dup_threshold: 0.6,
        drop_duplicates: false,
        minhash: MinHashParams::default(),
    };
    let s = filter(&opts).unwrap();
    assert_eq!((s.total, s.kept), (5, 2));
    let reasons: Vec<(&str, &str)> = s
        .dropped
        .iter()
        .map(|(i, r)| (i.as_str(), r.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("d2", "judge scores below 3 (socratic 2, coherence 4)"),
            ("d3", "dropped on review: 口調が現代的"),
            ("d5", "not judged")
        ]
    );
    assert_eq!(s.duplicates.len(), 1);
    assert_eq!(
        (
            s.duplicates[0].first.as_str(),
            s.duplicates[0].second.as_str()
        ),
        ("d1", "d4")
    );
    assert_eq!(s.missing_personas, ["p002"]);
    assert_eq!(s.missing_questions, ["q02", "q03", "q04", "q05", "q06"]);
    assert!(s.report.contains("| d1 | d4 |"), "{}", s.report);
    assert!(
        s.report.contains("- user temperatures: 0.3: 1, 0.7: 1"),
        "{}",
        s.report
    );
    assert!(std::fs::read_to_string(&s.report_file)
        .unwrap()
        .contains("# Filter report"));

    let s = filter(&FilterOptions {
        drop_duplicates: true,
        include_unjudged: true,
        ..opts.clone()
    })
    .unwrap();
    assert_eq!(s.kept, 2);
    let kept: Vec<String> = read(&opts.out).into_iter().map(|d| d.id).collect();
    assert_eq!(kept, ["d1", "d5"]);
    assert!(s
        .dropped
        .iter()
        .any(|(i, r)| i == "d4" && r.starts_with("near-duplicate of d1 (Jaccard")));
}

// ---- the binary, end to end, with a marked key ----

const MARKER: &str = "sk-MARKER-5d1c0ffee42";

fn bin(args: &[&str], paths: &[(&str, &Path)]) -> Output {
    let mut c = common::bin();
    c.args(args);
    for (flag, p) in paths {
        c.arg(flag).arg(p);
    }
    c.env("SOCRATUNE_MARKER_KEY", MARKER).output().unwrap()
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_key_never_appears_in_files_or_output() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cfg = project(d, &srv.base_url, "SOCRATUNE_MARKER_KEY", "");
    // Error bodies that echo the key, as some servers do.
    let echo = format!(r#"{{"error":{{"message":"rate limited for key {MARKER}"}}}}"#);
    srv.script([
        Fault::status(429, &echo).with_header("retry-after", "0"),
        Fault::status(500, &echo),
    ]);
    let mut outputs = Vec::new();
    let prompts = d.join("prompts");
    let (dialogues, judged, reviewed, kept) = (
        d.join("dialogues.jsonl"),
        d.join("judged.jsonl"),
        d.join("reviewed.jsonl"),
        d.join("kept.jsonl"),
    );
    let personas = d.join("personas.jsonl");
    let questions = d.join("questions.jsonl");
    let o = bin(
        &[
            "synth", "generate", "--rounds", "2", "--count", "4", "--seed", "3",
        ],
        &[
            ("--config", &cfg),
            ("--prompts", &prompts),
            ("--personas", &personas),
            ("--questions", &questions),
            ("--out", &dialogues),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("generate: 4 of 4 dialogues done"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("[redacted]"),
        "the retry was logged, redacted"
    );
    outputs.push(o);
    let o = bin(
        &["synth", "judge"],
        &[
            ("--config", &cfg),
            ("--prompts", &prompts),
            ("--input", &dialogues),
            ("--out", &judged),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    outputs.push(o);
    let o = bin(
        &["synth", "review", "--apply"],
        &[
            ("--config", &cfg),
            ("--input", &judged),
            ("--out", &reviewed),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("# Judge calibration"));
    outputs.push(o);
    let o = bin(
        &["synth", "filter"],
        &[
            ("--input", &reviewed),
            ("--out", &kept),
            ("--personas", &personas),
            ("--questions", &questions),
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("filter: kept 4 of 4"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
    outputs.push(o);
    // Review without a terminal says what to do instead.
    let o = bin(
        &["synth", "review"],
        &[
            ("--config", &cfg),
            ("--input", &judged),
            ("--out", &reviewed),
        ],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--apply"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    outputs.push(o);
    // A fatal 401 echoing the key stops the run with a clear, redacted error.
    srv.script([Fault::status(
        401,
        &format!(r#"{{"error":{{"message":"Incorrect API key provided: {MARKER}"}}}}"#),
    )]);
    let o = bin(
        &["synth", "judge", "--rejudge"],
        &[
            ("--config", &cfg),
            ("--prompts", &prompts),
            ("--input", &dialogues),
            ("--out", &d.join("judged2.jsonl")),
        ],
    );
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("HTTP 401: Incorrect API key provided: [redacted]"),
        "{err}"
    );
    outputs.push(o);

    // The key was used…
    let reqs = srv.requests();
    assert!(!reqs.is_empty());
    assert!(reqs
        .iter()
        .all(|r| r.auth.as_deref() == Some(&format!("Bearer {MARKER}")[..])));
    // …and is nowhere else.
    for o in &outputs {
        assert!(!String::from_utf8_lossy(&o.stdout).contains(MARKER));
        assert!(!String::from_utf8_lossy(&o.stderr).contains(MARKER));
    }
    let mut files = Vec::new();
    all_files(d, &mut files);
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(MARKER),
            "key found in {}",
            f.display()
        );
    }
}
