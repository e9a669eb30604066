//! `synth generate` against a local fake server: the dialogue format, each side's view of the
//! conversation, retried faults, failed dialogues, and resuming after SIGKILL without
//! repeating a paid call or duplicating a dialogue.

mod common;
mod fake_llm;

use fake_llm::{project, FakeLlm, Fault, Recorded};
use serde_json::Value;
use socratune::corpus::{
    load_dialogues, load_personas, load_questions, Catalog, LoadOptions, Role,
};
use socratune::synth::generate::{generate, GenerateOptions};
use socratune::synth::SynthConfig;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn options(
    dir: &Path,
    cfg: &Path,
    rounds: usize,
    temperatures: Vec<f64>,
    count: Option<usize>,
) -> GenerateOptions {
    GenerateOptions {
        config: SynthConfig::load(cfg).unwrap(),
        prompts: dir.join("prompts"),
        personas: dir.join("personas.jsonl"),
        questions: dir.join("questions.jsonl"),
        out: dir.join("out/dialogues.jsonl"),
        rounds,
        temperatures,
        count,
        seed: 1,
        retry_failed: false,
        allow_changed: false,
        stop: Arc::new(AtomicBool::new(false)),
    }
}

fn catalog(dir: &Path) -> Catalog {
    Catalog {
        personas: load_personas(&dir.join("personas.jsonl")).unwrap(),
        questions: load_questions(&dir.join("questions.jsonl")).unwrap(),
    }
}

fn roles(r: &Recorded) -> Vec<String> {
    r.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn generates_dialogues_in_the_design_format() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_GEN_TEST_KEY", "");
    let opts = options(dir.path(), &cfg, 3, vec![0.3, 0.7], None);
    let s = generate(&opts).unwrap();
    assert_eq!((s.planned, s.generated, s.failures.len()), (24, 24, 0));
    // 3 Socrates replies and 2 user replies per dialogue; turn 0 costs nothing.
    assert_eq!(srv.count(), 24 * 5);

    let cat = catalog(dir.path());
    let ds: Vec<_> = load_dialogues(
        &opts.out,
        LoadOptions {
            skip_bad: false,
            catalog: Some(&cat),
        },
    )
    .unwrap()
    .records
    .into_iter()
    .map(|(_, d)| d)
    .collect();
    assert_eq!(ds.len(), 24);
    assert_eq!(ds[0].id, "d-p001-q01-t03");
    assert_eq!(ds[1].id, "d-p001-q01-t07");
    for d in &ds {
        assert_eq!(d.turns.len(), 6);
        assert_eq!(d.turns[0].text, cat.question(&d.question).unwrap().text);
        assert!(d
            .turns
            .iter()
            .enumerate()
            .all(|(i, t)| t.role == if i % 2 == 0 { Role::User } else { Role::Model }));
        assert!(d.judge.is_none() && d.review.is_none());
    }

    for r in srv.requests() {
        let b = &r.body;
        let roles = roles(&r);
        assert_eq!(roles[0], "system");
        let system = b["messages"][0]["content"].as_str().unwrap();
        if b["model"] == "socrates-model" {
            // One fixed prompt and fixed sampling for Socrates; it sees the user as `user`.
            assert!(
                system.starts_with("あなたはソクラテスです。問い「問い"),
                "{system}"
            );
            assert_eq!(
                (
                    b["temperature"].as_f64(),
                    b["top_p"].as_f64(),
                    b["seed"].as_u64()
                ),
                (Some(0.8), Some(0.95), Some(7))
            );
            assert_eq!(roles[1], "user");
            assert_eq!(roles.last().unwrap(), "user");
        } else {
            assert_eq!(b["model"], "user-model");
            assert!(
                system.starts_with("あなたは佐藤です。")
                    || system.starts_with("あなたは孔子です。"),
                "{system}"
            );
            let t = b["temperature"].as_f64().unwrap();
            assert!(t == 0.3 || t == 0.7, "{t}");
            // The user LLM's own opening question is `assistant`; Socrates speaks as `user`.
            assert_eq!(roles[1], "assistant");
            assert_eq!(roles.last().unwrap(), "user");
        }
        assert_eq!(b["max_tokens"], 300);
    }
    // Each user call carries its dialogue's temperature (turn 3 is unique to this dialogue).
    let d = &ds[1];
    let last_user_call = srv
        .requests()
        .into_iter()
        .filter(|r| r.body["model"] == "user-model")
        .find(|r| {
            r.body["messages"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["content"] == d.turns[3].text.as_str())
        })
        .unwrap();
    assert_eq!(last_user_call.body["temperature"].as_f64(), Some(0.7));

    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/dialogues.manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["status"], "complete");
    assert_eq!(manifest["settings"]["socrates"]["model"], "socrates-model");
    assert_eq!(
        manifest["settings"]["prompts"]["socrates.txt"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(manifest["counts"]["calls"]["calls"], 120);

    // A rerun finds everything done: no call, identical output.
    let before = std::fs::read(&opts.out).unwrap();
    srv.clear();
    let s = generate(&opts).unwrap();
    assert_eq!((s.generated, s.already_done), (0, 24));
    assert_eq!(srv.count(), 0);
    assert_eq!(std::fs::read(&opts.out).unwrap(), before);

    // A larger grid later reuses what is there (a subset first, then the rest).
    let opts3 = GenerateOptions {
        temperatures: vec![0.3, 0.7, 1.0],
        ..opts.clone()
    };
    let s = generate(&GenerateOptions {
        count: Some(30),
        ..opts3.clone()
    })
    .unwrap();
    assert_eq!(s.planned, 30);
    assert!(
        s.already_done >= 18,
        "the sample overlaps the done dialogues"
    );
}

#[test]
fn faults_are_retried_and_a_cut_off_reply_fails_only_its_dialogue() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_GEN_TEST_KEY", "");
    srv.script([
        Fault::status(429, r#"{"error":{"message":"rate"}}"#).with_header("retry-after", "0"),
        Fault::status(500, "oops"),
        Fault::Truncated,
        Fault::status(503, r#"[{"error":{"message":"overloaded"}}]"#),
        Fault::Length,
    ]);
    let opts = options(dir.path(), &cfg, 2, vec![0.5], Some(4));
    let s = generate(&opts).unwrap();
    assert_eq!((s.generated, s.failures.len()), (3, 1), "{:?}", s.failures);
    assert!(
        s.failures[0].error.contains("finish_reason = length"),
        "{:?}",
        s.failures
    );
    let failed_id = s.failures[0].id.clone();
    let failures = std::fs::read_to_string(&s.failures_file).unwrap();
    assert_eq!(failures.lines().count(), 1);
    assert!(failures.contains(&failed_id));

    // Rerun: the cut-off reply is marked as failed in the journal, so it is asked again (not
    // replayed as the same failure) and the dialogue finishes; the turns before it replay.
    srv.clear();
    let s = generate(&opts).unwrap();
    assert_eq!((s.generated, s.failures.len()), (1, 0));
    assert!(srv.count() >= 1);
    let ids: Vec<_> = load_dialogues(&opts.out, LoadOptions::default())
        .unwrap()
        .records
        .into_iter()
        .map(|(_, d)| d.id)
        .collect();
    assert_eq!(ids.len(), 4);
    assert!(ids.contains(&failed_id));
    assert_eq!(std::fs::read_to_string(&s.failures_file).unwrap(), "");
}

#[test]
fn changed_settings_are_refused_on_resume_and_bad_templates_before_any_call() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_GEN_TEST_KEY", "");
    let opts = options(dir.path(), &cfg, 1, vec![0.5], Some(2));
    generate(&opts).unwrap();
    std::fs::write(
        dir.path().join("prompts/socrates.txt"),
        "別のプロンプト {{question}}",
    )
    .unwrap();
    let e = generate(&GenerateOptions {
        count: Some(3),
        ..opts.clone()
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("already holds 2 dialogues made with other prompts"),
        "{e}"
    );
    assert!(generate(&GenerateOptions {
        count: Some(3),
        allow_changed: true,
        ..opts.clone()
    })
    .is_ok());

    srv.clear();
    std::fs::write(
        dir.path().join("prompts/user.txt"),
        "あなたは{{persona_name}}。{{question}} {{mood}}",
    )
    .unwrap();
    let e = generate(&opts).unwrap_err().to_string();
    assert!(
        e.contains("user.txt") && e.contains("unknown placeholder {{mood}}"),
        "{e}"
    );
    std::fs::write(
        dir.path().join("prompts/user.txt"),
        "あなたは{{persona_name}}。{{question}}",
    )
    .unwrap();
    let e = generate(&opts).unwrap_err().to_string();
    assert!(
        e.contains("lacks the placeholder {{persona_description}}"),
        "{e}"
    );
    assert_eq!(srv.count(), 0);
}

#[test]
fn a_run_of_failures_stops_the_run_instead_of_failing_every_dialogue() {
    let srv = FakeLlm::start();
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(
        dir.path(),
        &srv.base_url,
        "SOCRATUNE_GEN_TEST_KEY",
        "max_failures_in_a_row = 5",
    );
    let rejected = r#"{"error":{"message":"Unsupported parameter: 'seed'"}}"#;
    srv.script((0..100).map(|_| Fault::status(400, rejected)));
    let e = generate(&options(dir.path(), &cfg, 2, vec![0.3, 0.7], None))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("5 items failed in a row") && e.contains("HTTP 400: Unsupported parameter"),
        "{e}"
    );
    assert!(srv.count() <= 6, "{} requests", srv.count());
    let manifest = std::fs::read_to_string(dir.path().join("out/dialogues.manifest.json")).unwrap();
    assert!(
        manifest.contains("\"status\": \"failed: 5 items failed in a row"),
        "{manifest}"
    );
}

// ---- the binary: SIGKILL and resume ----

use common::bin;

fn generate_cmd(dir: &Path, cfg: &Path, personas: &Path) -> Command {
    let mut c = bin();
    c.args(["synth", "generate", "--config"])
        .arg(cfg)
        .arg("--prompts")
        .arg(dir.join("prompts"))
        .arg("--personas")
        .arg(personas)
        .arg("--questions")
        .arg(dir.join("questions.jsonl"))
        .arg("--out")
        .arg(dir.join("dialogues.jsonl"))
        .args([
            "--rounds",
            "3",
            "--temperatures",
            "0.5",
            "--concurrency",
            "2",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// One persona and one temperature, so that every request body of the grid is distinct and
/// a repeated call is visible at the server.
fn one_persona(dir: &Path) -> PathBuf {
    let p = dir.join("one_persona.jsonl");
    std::fs::write(
        &p,
        r#"{"id":"p001","kind":"ordinary","name":"佐藤","description":"町工場の経営者。"}"#
            .to_string()
            + "\n",
    )
    .unwrap();
    p
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn check_output(dir: &Path) {
    let cat = Catalog {
        personas: load_personas(&one_persona(dir)).unwrap(),
        questions: load_questions(&dir.join("questions.jsonl")).unwrap(),
    };
    let loaded = load_dialogues(
        &dir.join("dialogues.jsonl"),
        LoadOptions {
            skip_bad: false,
            catalog: Some(&cat),
        },
    )
    .unwrap();
    let ids: HashSet<_> = loaded.records.iter().map(|(_, d)| d.id.clone()).collect();
    assert_eq!(
        (loaded.records.len(), ids.len()),
        (6, 6),
        "six distinct, whole dialogues"
    );
    assert!(loaded.records.iter().all(|(_, d)| d.turns.len() == 6));
}

#[test]
fn killed_mid_call_resumes_without_repeating_a_call() {
    for hold_at in [1, 9, 22] {
        let srv = FakeLlm::start();
        let dir = tempfile::tempdir().unwrap();
        let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_KILL_TEST_KEY", "");
        let personas = one_persona(dir.path());
        srv.hold_after(hold_at);
        let mut child = generate_cmd(dir.path(), &cfg, &personas).spawn().unwrap();
        // Both workers are blocked on a call: everything answered before is journaled.
        wait_for("two held calls", || srv.holding() == 2);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let first = srv.requests();
        srv.release();
        srv.clear();
        let answered: HashSet<String> = first
            .iter()
            .filter(|r| r.answered)
            .map(|r| r.body.to_string())
            .collect();
        let held: Vec<String> = first
            .iter()
            .filter(|r| !r.answered)
            .map(|r| r.body.to_string())
            .collect();
        assert_eq!(held.len(), 2);
        assert!(answered.len() >= hold_at);

        let status = generate_cmd(dir.path(), &cfg, &personas).status().unwrap();
        assert!(status.success());
        let second: Vec<String> = srv.requests().iter().map(|r| r.body.to_string()).collect();
        for b in &second {
            assert!(
                !answered.contains(b),
                "a call answered before the kill was made again (hold at {hold_at})"
            );
        }
        assert_eq!(
            second.len() + answered.len(),
            30,
            "each of the 30 calls answered exactly once overall"
        );
        for h in &held {
            assert!(
                second.contains(h),
                "the calls in flight at the kill are made again"
            );
        }
        check_output(dir.path());
        let journal = std::fs::read_to_string(dir.path().join("dialogues.journal.jsonl")).unwrap();
        assert_eq!(journal.lines().count(), 30);
    }
}

#[test]
fn killed_at_arbitrary_moments_still_ends_with_each_dialogue_once() {
    let srv = FakeLlm::start();
    srv.set_delay(Duration::from_millis(15));
    let dir = tempfile::tempdir().unwrap();
    let cfg = project(dir.path(), &srv.base_url, "SOCRATUNE_KILL_TEST_KEY", "");
    let personas = one_persona(dir.path());
    let mut kills = 0;
    for wait_ms in [40u64, 90, 130, 170, 230, 300] {
        let mut child = generate_cmd(dir.path(), &cfg, &personas).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(wait_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap();
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(kills >= 2, "the runs were killed mid-way ({kills} kills)");
    assert!(generate_cmd(dir.path(), &cfg, &personas)
        .status()
        .unwrap()
        .success());
    check_output(dir.path());
    // Only calls in flight at a kill (at most one per worker) can have been made twice.
    let bodies: Vec<String> = srv.requests().iter().map(|r| r.body.to_string()).collect();
    let distinct: HashSet<&String> = bodies.iter().collect();
    assert_eq!(distinct.len(), 30);
    assert!(
        bodies.len() <= 30 + 2 * kills,
        "{} requests after {kills} kills",
        bodies.len()
    );
}
