//! Runs the `socratune data …` commands on files in a temporary folder: a corpus and a small
//! tokenizer the test makes (or the shipped sample corpus when data/ has one), the shipped
//! variant configs, no network.

mod common;

use serde_json::Value;
use socratune::dataset::tokenizer::train_small;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Output;

fn socratune(dir: &Path, args: &[&str]) -> Output {
    common::bin().args(args).current_dir(dir).output().unwrap()
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = socratune(dir, args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(dir: &Path, args: &[&str]) -> String {
    let out = socratune(dir, args);
    assert!(!out.status.success(), "{args:?} should fail");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const OPENINGS: [&str; 3] = [
    "正義とは何だと思いますか？",
    "勇気とは何でしょうか？",
    "幸福とは何ですか？",
];
const USER: [&str; 5] = [
    "私は、法に従うことが正義だと思います。",
    "難しい質問ですね。少し考えさせてください。",
    "困っている人を助けることではないでしょうか。",
    "恐れを知らないことが勇気だと、昔から教わってきました。",
    "それは人によって違うと思います。",
];
const SOCRATES: [&str; 5] = [
    "ほう、では法が間違っていたら、それでも従うのが正義かね？",
    "よろしい。ゆっくり考えたまえ。君は何を大切にしているのかね？",
    "助けるとは、どういうことだろうか。相手の望みを叶えることかね？",
    "恐れを知らぬ者と、恐れを知りつつ進む者と、どちらが勇敢かね？",
    "人によって違うなら、君にとっての答えは何かね？",
];

/// Twelve 12-round dialogues: d0003 dropped by the judge, d0005 dropped on review, d0007
/// unjudged, the rest kept (9 kept).
fn corpus_lines() -> Vec<String> {
    (1..=12)
        .map(|i| {
            let q = (i - 1) % 3;
            let mut turns = Vec::new();
            for k in 0..12 {
                let user = if k == 0 { OPENINGS[q].to_string() } else { format!("{}（{k}）", USER[(i + k) % 5]) };
                turns.push(serde_json::json!({"role": "user", "text": user}));
                turns.push(serde_json::json!({"role": "model", "text": SOCRATES[(i * 3 + k) % 5]}));
            }
            let mut d = serde_json::json!({
                "id": format!("d{i:04}"), "persona": format!("p{:03}", 1 + i % 3), "question": format!("q{:02}", q + 1),
                "user_temperature": if i % 2 == 0 { 0.3 } else { 0.7 }, "turns": turns,
                "judge": {"socratic": if i == 3 { 2 } else { 4 }, "coherence": 3, "comment": "", "model": "judge"},
            });
            if i == 5 {
                d["review"] = serde_json::json!({"decision": "drop", "note": "口調が違う"});
            }
            if i == 7 {
                d.as_object_mut().unwrap().remove("judge");
            }
            d.to_string()
        })
        .collect()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    corpus: PathBuf,
    personas: Option<PathBuf>,
    questions: Option<PathBuf>,
    tokenizer: PathBuf,
    /// Dialogue ids by whether they are kept (with --include-unjudged off).
    kept: BTreeSet<String>,
    all: BTreeSet<String>,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let shipped = repo().join("data/dialogues/sample.jsonl");
    let (corpus, personas, questions) = if shipped.is_file() {
        let data = repo().join("data");
        (
            shipped,
            Some(data.join("personas.jsonl")),
            Some(data.join("questions.jsonl")),
        )
    } else {
        let corpus = dir.join("dialogues.jsonl");
        std::fs::write(&corpus, corpus_lines().join("\n") + "\n").unwrap();
        let p = dir.join("personas.jsonl");
        let personas = [
            r#"{"id":"p001","kind":"ordinary","name":"会社員","description":"x"}"#,
            r#"{"id":"p002","kind":"historical","name":"孔子","description":"x"}"#,
            r#"{"id":"p003","kind":"inheritor","name":"学生","description":"x","inherits":"p002"}"#,
        ];
        std::fs::write(&p, personas.join("\n")).unwrap();
        let q = dir.join("questions.jsonl");
        let questions: Vec<String> = OPENINGS
            .iter()
            .enumerate()
            .map(|(i, t)| format!(r#"{{"id":"q{:02}","text":"{t}"}}"#, i + 1))
            .collect();
        std::fs::write(&q, questions.join("\n")).unwrap();
        (corpus, Some(p), Some(q))
    };
    let dialogues: Vec<socratune::corpus::Dialogue> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = dialogues
        .iter()
        .flat_map(|d| d.turns.iter().map(|t| t.text.as_str()))
        .collect();
    let tokenizer = dir.join("tokenizer.json");
    std::fs::write(
        &tokenizer,
        train_small(&texts, 512).unwrap().to_string(false).unwrap(),
    )
    .unwrap();
    let kept = dialogues
        .iter()
        .filter(|d| d.is_kept(false))
        .map(|d| d.id.clone())
        .collect();
    let all = dialogues.iter().map(|d| d.id.clone()).collect();
    Fixture {
        _tmp: tmp,
        dir,
        corpus,
        personas,
        questions,
        tokenizer,
        kept,
        all,
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn check_counts_and_reports_bad_lines() {
    let f = fixture();
    let mut args = vec!["data", "check", s(&f.corpus)];
    let (p, q) = (f.personas.clone().unwrap(), f.questions.clone().unwrap());
    args.extend(["--personas", s(&p), "--questions", s(&q)]);
    let out = ok(&f.dir, &args);
    let first = out.lines().next().unwrap();
    assert!(
        first.ends_with(&format!(": {} dialogue(s), 0 bad line(s)", f.all.len())),
        "{out}"
    );
    assert!(
        out.contains(&format!("kept      {:>5}", f.kept.len())),
        "{out}"
    );
    assert!(
        out.contains("persona kinds:") && out.contains("user temperature:"),
        "{out}"
    );
    let mut json_args = args.clone();
    json_args.push("--json");
    let report: Value = serde_json::from_str(&ok(&f.dir, &json_args)).unwrap();
    assert_eq!(report["kept"], f.kept.len());
    assert_eq!(report["dialogues"], f.all.len());
    if !repo().join("data/dialogues/sample.jsonl").is_file() {
        assert_eq!(
            (report["dropped"].as_u64(), report["unjudged"].as_u64()),
            (Some(2), Some(1))
        );
        assert_eq!(
            report["drop_reasons"],
            serde_json::json!({"dropped on review": 1, "judge scores below 3": 1})
        );
        assert_eq!(report["rounds"], serde_json::json!({"12": 12}));
        assert_eq!(
            report["persona_kinds"],
            serde_json::json!({"historical": 4, "inheritor": 4, "ordinary": 4})
        );
    }

    // A bad line fails the check with one clear line, unless --skip-bad.
    let bad = f.dir.join("bad.jsonl");
    let mut text = std::fs::read_to_string(&f.corpus).unwrap();
    let n = text.lines().count();
    text.push_str("{\"id\": \"broken\"\n");
    std::fs::write(&bad, text).unwrap();
    let e = fails(&f.dir, &["data", "check", s(&bad)]);
    assert!(
        e.contains(&format!(
            "bad.jsonl: 1 bad line(s); first: {}:{}: malformed JSON",
            s(&bad),
            n + 1
        )),
        "{e}"
    );
    let out = ok(&f.dir, &["data", "check", s(&bad), "--skip-bad"]);
    assert!(
        out.contains("1 bad line(s)") && out.contains(&format!("bad line {}:{}", s(&bad), n + 1)),
        "{out}"
    );
    // Only one of personas/questions: a clear error.
    let e = fails(
        &f.dir,
        &["data", "check", s(&f.corpus), "--personas", s(&p)],
    );
    assert!(e.contains("--personas needs --questions too"), "{e}");
}

#[test]
fn stats_as_json_lines_table_and_charts() {
    let f = fixture();
    let variants = repo().join("configs/variants");
    let charts = f.dir.join("charts");
    let base = [
        "data",
        "stats",
        "--dialogues",
        s(&f.corpus),
        "--tokenizer",
        s(&f.tokenizer),
        "--variants",
        s(&variants),
    ];
    let mut args = base.to_vec();
    args.extend(["--json", "--charts", s(&charts)]);
    let out = ok(&f.dir, &args);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 9);
    let keys = [
        "variant",
        "dialogues",
        "examples",
        "total_tokens",
        "mean_tokens",
        "max_tokens",
        "min_tokens",
        "user_mean_tokens",
        "model_mean_tokens",
        "template_tokens",
        "train_examples",
        "val_examples",
    ];
    let kept = f.kept.len() as u64;
    let by_name: BTreeMap<String, &Value> = rows
        .iter()
        .map(|r| (r["variant"].as_str().unwrap().to_string(), r))
        .collect();
    for r in &rows {
        let obj = r.as_object().unwrap();
        assert_eq!(
            obj.keys().collect::<BTreeSet<_>>(),
            keys.iter()
                .map(|k| k.to_string())
                .collect::<BTreeSet<_>>()
                .iter()
                .collect()
        );
        let name = r["variant"].as_str().unwrap();
        let per_dialogue = if ["model1", "model2", "model3"].contains(&name) {
            11
        } else {
            1
        };
        assert_eq!(r["dialogues"].as_u64(), Some(kept), "{name}");
        assert_eq!(r["examples"].as_u64(), Some(kept * per_dialogue), "{name}");
        let examples = r["examples"].as_u64().unwrap();
        assert_eq!(
            r["train_examples"].as_u64().unwrap() + r["val_examples"].as_u64().unwrap(),
            examples
        );
        let (total, mean) = (
            r["total_tokens"].as_u64().unwrap() as f64,
            r["mean_tokens"].as_f64().unwrap(),
        );
        assert!((total / examples as f64 - mean).abs() < 1e-9);
        assert!(r["min_tokens"].as_u64() <= r["max_tokens"].as_u64());
    }
    // Prefixes lengthen only user utterances; model utterances are the same across 1–3.
    let user = |n: &str| by_name[n]["user_mean_tokens"].as_f64().unwrap();
    let model = |n: &str| by_name[n]["model_mean_tokens"].as_f64().unwrap();
    assert!(user("model3") < user("model1") && user("model1") < user("model2"));
    assert_eq!(model("model1"), model("model3"));
    assert_eq!(model("model4"), model("model6"));
    // Template tokens: BOS + per turn <start_of_turn>, role header, <end_of_turn>, newline.
    assert!(
        by_name["model5"]["template_tokens"].as_f64()
            > by_name["model4"]["template_tokens"].as_f64()
    );
    for c in ["total_tokens.svg", "mean_tokens.svg"] {
        let svg = std::fs::read_to_string(charts.join(c)).unwrap();
        assert!(svg.contains("<svg") && svg.contains("model9"), "{c}");
    }
    // The table prints by default.
    let table = ok(&f.dir, &base);
    assert!(
        table.starts_with("| variant | dialogues |") && table.lines().count() == 11,
        "{table}"
    );
}

#[test]
fn build_all_writes_masked_examples_split_and_stats() {
    let f = fixture();
    let variants = repo().join("configs/variants");
    let runs = f.dir.join("runs");
    let before = std::fs::read(&f.corpus).unwrap();
    let args = [
        "data",
        "build",
        "--all",
        "--dialogues",
        s(&f.corpus),
        "--tokenizer",
        s(&f.tokenizer),
        "--variants",
        s(&variants),
        "--out",
        s(&runs),
        "--seed",
        "7",
    ];
    let out = ok(&f.dir, &args);
    assert!(out.contains("| model9 |"), "{out}");
    assert_eq!(
        std::fs::read(&f.corpus).unwrap(),
        before,
        "the input is never modified"
    );

    let manifest = std::fs::read_to_string(runs.join("model1/data/split.json")).unwrap();
    let m: Value = serde_json::from_str(&manifest).unwrap();
    assert_eq!(m["seed"], 7);
    assert_eq!(
        m["corpus_sha256"].as_str().unwrap(),
        socratune::fsutil::sha256_file(&f.corpus).unwrap()
    );
    let val: BTreeSet<String> = m["val"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    let train: BTreeSet<String> = m["train"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().into())
        .collect();
    assert!(val.is_disjoint(&train));
    assert_eq!(
        &val | &train,
        f.all,
        "the split covers every dialogue, kept or not"
    );
    assert_eq!(val.len(), (f.all.len() as f64 * 0.2).round() as usize);

    for i in 1..=9 {
        let name = format!("model{i}");
        let data = runs.join(&name).join("data");
        assert_eq!(
            std::fs::read_to_string(data.join("split.json")).unwrap(),
            manifest,
            "{name}: same split"
        );
        let stats: Value =
            serde_json::from_str(&std::fs::read_to_string(data.join("stats.json")).unwrap())
                .unwrap();
        assert_eq!(stats["variant"], name.as_str());
        assert_eq!(stats["config"]["name"], name.as_str());
        for (file, held_out, key) in [
            ("train.jsonl", false, "train_examples"),
            ("val.jsonl", true, "val_examples"),
        ] {
            let text = std::fs::read_to_string(data.join(file)).unwrap();
            assert_eq!(
                text.lines().count() as u64,
                stats[key].as_u64().unwrap(),
                "{name} {file}"
            );
            for line in text.lines() {
                let r: Value = serde_json::from_str(line).unwrap();
                let dialogue = r["dialogue"].as_str().unwrap();
                assert!(r["id"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{dialogue}#p")));
                assert_eq!(
                    val.contains(dialogue),
                    held_out,
                    "{name}: {dialogue} in {file}"
                );
                assert!(f.kept.contains(dialogue), "{name}: only kept dialogues");
                let ids: Vec<i64> = r["input_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                let labels: Vec<i64> = r["labels"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_i64().unwrap())
                    .collect();
                assert_eq!(ids.len(), labels.len());
                assert_eq!(ids[0], 2, "BOS first");
                assert_eq!(ids.iter().filter(|&&t| t == 2).count(), 1, "BOS once");
                assert!(labels.iter().zip(&ids).all(|(l, t)| *l == -100 || l == t));
                // Every <end_of_turn> after a model turn is trained, every one after a user turn is not.
                let ends: Vec<bool> = ids
                    .iter()
                    .zip(&labels)
                    .filter(|(t, _)| **t == 107)
                    .map(|(_, l)| *l == 107)
                    .collect();
                let turns = stats["config"]["utterances"].as_u64().unwrap() as usize;
                assert_eq!(
                    ends,
                    (0..turns).map(|k| k % 2 == 1).collect::<Vec<_>>(),
                    "{name}"
                );
            }
        }
    }

    // Truncation keeps BOS and the end, and is reported.
    let args = [
        "data",
        "build",
        "--variant",
        "model5",
        "--dialogues",
        s(&f.corpus),
        "--tokenizer",
        s(&f.tokenizer),
        "--variants",
        s(&variants),
        "--out",
        s(&runs),
        "--max-len",
        "40",
        "--overflow",
        "truncate",
    ];
    let out = ok(&f.dir, &args);
    let train = std::fs::read_to_string(runs.join("model5/data/train.jsonl")).unwrap();
    for line in train.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let ids = r["input_ids"].as_array().unwrap();
        assert_eq!(ids.len(), 40);
        assert_eq!(
            (ids[0].as_u64(), ids[ids.len() - 2].as_u64()),
            (Some(2), Some(107))
        );
    }
    let stats: Value = serde_json::from_str(
        &std::fs::read_to_string(runs.join("model5/data/stats.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        stats["written"]["truncated"].as_u64(),
        Some(f.kept.len() as u64)
    );
    assert!(
        out.contains(&format!(
            "{} truncated, 0 dropped (max length 40, truncate)",
            f.kept.len()
        )),
        "{out}"
    );
}

#[test]
fn bad_inputs_fail_with_one_clear_line() {
    let f = fixture();
    let variants = repo().join("configs/variants");
    let runs = f.dir.join("runs");
    let build = |extra: &[&str]| {
        let mut a = vec![
            "data",
            "build",
            "--dialogues",
            s(&f.corpus),
            "--tokenizer",
            s(&f.tokenizer),
            "--out",
            s(&runs),
        ];
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| fails(&f.dir, &a.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let e = run(build(&["--variant", "model42", "--variants", s(&variants)]));
    assert!(
        e.contains("no such variant `model42` (known: model1, model2"),
        "{e}"
    );

    let bad_variants = f.dir.join("variants");
    std::fs::create_dir_all(&bad_variants).unwrap();
    std::fs::write(
        bad_variants.join("odd.toml"),
        "name = \"odd\"\npairs = \"0\"\nutterances = 3\n",
    )
    .unwrap();
    let e = run(build(&["--all", "--variants", s(&bad_variants)]));
    assert!(
        e.contains("odd.toml:3: utterances: 3 is not an even number"),
        "{e}"
    );

    let e = run(build(&[
        "--all",
        "--variants",
        s(&variants),
        "--max-len",
        "1",
    ]));
    assert!(e.contains("--max-len must be at least 2"), "{e}");

    let missing = f.dir.join("nothing/tokenizer.json");
    let e = fails(
        &f.dir,
        &[
            "data",
            "stats",
            "--dialogues",
            s(&f.corpus),
            "--tokenizer",
            s(&missing),
            "--variants",
            s(&variants),
        ],
    );
    assert!(
        e.contains("is neither an existing path nor a Hub repo id"),
        "{e}"
    );

    // A kept dialogue too short for pairs 1..=11: an error naming it, or skipped with --skip-bad.
    let short = f.dir.join("short.jsonl");
    let mut lines = corpus_lines();
    let mut d: Value = serde_json::from_str(&lines[0]).unwrap();
    d["turns"].as_array_mut().unwrap().truncate(20);
    lines[0] = d.to_string();
    std::fs::write(&short, lines.join("\n")).unwrap();
    let args = [
        "data",
        "stats",
        "--dialogues",
        s(&short),
        "--tokenizer",
        s(&f.tokenizer),
        "--variants",
        s(&variants),
    ];
    let e = fails(&f.dir, &args);
    assert!(
        e.contains("variant model1: dialogue d0001 has 10 pair(s)"),
        "{e}"
    );
    let mut skip = args.to_vec();
    skip.push("--skip-bad");
    let out = socratune(&f.dir, &skip);
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("warning: variant model1: skipped dialogue d0001 has 10 pair(s)"),
        "{err}"
    );
}

#[test]
fn build_warns_about_an_empty_split() {
    let f = fixture();
    let one = f.dir.join("one.jsonl");
    std::fs::write(&one, corpus_lines()[0].clone() + "\n").unwrap();
    let runs = f.dir.join("runs-one");
    let variants = repo().join("configs/variants");
    let out = socratune(
        &f.dir,
        &[
            "data",
            "build",
            "--variant",
            "model1",
            "--dialogues",
            s(&one),
            "--tokenizer",
            s(&f.tokenizer),
            "--variants",
            s(&variants),
            "--out",
            s(&runs),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning: model1: the") && err.contains("set is empty"),
        "{err}"
    );
}
