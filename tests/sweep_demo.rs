//! `socratune sweep`, `compare` and `demo` end to end on the shipped sample corpus, the tiny
//! fixture model and a small tokenizer made here.

mod common;
use common::fixture;
use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn socratune(args: &[&str], cwd: &Path) -> (bool, String, String) {
    common::socratune_in(cwd, args)
}

#[test]
fn sweep_trains_skips_finished_runs_compares_and_emits_slurm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let sample = repo().join("data/dialogues/sample.jsonl");
    let tok = d.join("tokenizer.json");
    let vocab = serde_json::from_str::<serde_json::Value>(
        &std::fs::read_to_string(fixture().join("config.json")).unwrap(),
    )
    .unwrap()["vocab_size"]
        .to_string();
    let (ok, _, err) = socratune(
        &[
            "data",
            "tokenizer",
            "--dialogues",
            sample.to_str().unwrap(),
            "--vocab-size",
            &vocab,
            "--out",
            tok.to_str().unwrap(),
        ],
        d,
    );
    assert!(ok, "{err}");
    std::fs::write(
        d.join("train.toml"),
        "lora_dropout = 0.0\neval_every = 2\nsave_every = 2\n",
    )
    .unwrap();
    let (variants_dir, model) = (repo().join("configs/variants"), fixture());
    let args = [
        "sweep",
        "--variants",
        "model4,model6",
        "--variants-dir",
        variants_dir.to_str().unwrap(),
        "--runs",
        "runs",
        "--config",
        "train.toml",
        "--dialogues",
        sample.to_str().unwrap(),
        "--tokenizer",
        tok.to_str().unwrap(),
        "--max-len",
        "256",
        "--model",
        model.to_str().unwrap(),
        "--device",
        "cpu",
        "--max-steps",
        "3",
        "--micro-batch",
        "2",
    ];
    let (ok, out, err) = socratune(&args, d);
    assert!(ok, "{err}");
    for v in ["model4", "model6"] {
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(d.join("runs").join(v).join("summary.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(s["steps"], 3);
        assert!(d
            .join("runs")
            .join(v)
            .join("best/adapter_model.safetensors")
            .exists());
    }
    // Same held-out dialogues for both variants.
    let split =
        |v: &str| std::fs::read_to_string(d.join("runs").join(v).join("data/split.json")).unwrap();
    assert_eq!(split("model4"), split("model6"));
    assert!(
        out.contains("| model4 |") && out.contains("| model6 |"),
        "{out}"
    );
    assert!(d.join("runs/compare.md").exists() && d.join("runs/loss.svg").exists());
    let svg = std::fs::read_to_string(d.join("runs/loss.svg")).unwrap();
    assert!(svg.contains("<svg") && svg.contains("model6"));

    // Finished runs are skipped, not retrained.
    let before = std::fs::read_to_string(d.join("runs/model4/metrics.jsonl")).unwrap();
    let (ok, _, err) = socratune(&args, d);
    assert!(ok, "{err}");
    assert!(
        err.contains("model4: finished earlier") && err.contains("model6: finished earlier"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("runs/model4/metrics.jsonl")).unwrap(),
        before
    );

    // A Slurm array of the two.
    let mut slurm = args.to_vec();
    slurm.extend(["--emit", "slurm"]);
    let (ok, out, err) = socratune(&slurm, d);
    assert!(ok, "{err}");
    assert!(out.contains("sweep.slurm"), "{out}");
    let script = std::fs::read_to_string(d.join("runs/sweep.slurm")).unwrap();
    assert!(
        script.contains("#SBATCH --array=0-1")
            && script.contains("\"model4\" \"model6\"")
            && script.contains("--resume"),
        "{script}"
    );
    let cfg = std::fs::read_to_string(d.join("runs/sweep-config.toml")).unwrap();
    assert!(cfg.contains("max_steps = 3"), "{cfg}");
}

#[test]
fn demo_runs_the_whole_pipeline_offline() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let (ok, stdout, err) = socratune(
        &[
            "demo",
            "--out",
            out.to_str().unwrap(),
            "--steps",
            "6",
            "--pretrain-steps",
            "60",
            "--prompts",
            "8",
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    let json = |p: PathBuf| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
    };
    // The pre-trained base predicts its held-out (non-Socrates) text clearly better than a
    // uniform guess over the 1024-token vocabulary.
    let pre = json(out.join("base-model/pretrain/summary.json"));
    let uniform = 1024f64.ln();
    let pre_val = pre["best_val_loss"].as_f64().unwrap();
    assert!(
        pre_val < uniform - 1.0,
        "pre-trained base: {pre_val} vs ln V {uniform}"
    );
    // Every run beats the base on its own held-out Socrates turns, the best by a clear margin.
    let base = json(out.join("base.json"));
    let mut best_gain = f64::NEG_INFINITY;
    for v in 1..=9 {
        let name = format!("model{v}");
        let s = json(out.join(&name).join("summary.json"));
        let run = s["common_val_loss"].as_f64().unwrap();
        let b = base["common_val_loss"][&name].as_f64().unwrap();
        assert!(run < b, "{name}: {run} vs base {b}");
        best_gain = best_gain.max(b - run);
    }
    assert!(best_gain > 0.05, "best gain over the base: {best_gain}");
    // demo.json says the same.
    let fig = json(out.join("demo.json"));
    let best = fig["best"].as_str().unwrap().to_string();
    let base_on_best = base["common_val_loss"][&best].as_f64().unwrap();
    assert_eq!(fig["runs_beating_base"], 9, "{fig}");
    assert_eq!(fig["base_common_val_loss"].as_f64(), Some(base_on_best));
    assert_eq!(fig["base_heldout_loss"].as_f64(), Some(pre_val));
    assert!(fig["best_common_val_loss"].as_f64().unwrap() < base_on_best - 0.05);

    // The comparison: the header, then the base row (on the best run's text), then the runs.
    let table: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("| variant | common val loss"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    assert!(table[1].starts_with("|---|"), "{stdout}");
    let base_row = format!("| base (on {best}'s text) | {base_on_best:.4} |");
    assert!(table[2].starts_with(&base_row), "{stdout}");
    assert_eq!(table.len(), 12, "{stdout}");
    assert!(stdout.contains(&format!("**Best: {best}**")), "{stdout}");
    // The eval: judge-free columns for the runs and the base model, whose common val loss is
    // there (it was prompted like the best run, on that run's text).
    assert!(
        stdout.contains("ends in ? %") && stdout.contains(&format!("| base | {base_on_best:.4} |")),
        "{stdout}"
    );
    assert!(out.join("eval.json").exists() && out.join("eval/replies/model9.jsonl").exists());

    // It ends by talking: the opening and a held-out user line, each answered by the base and
    // the best run, with the question shares; the same text is saved beside the runs.
    let talk = &stdout[stdout.find("# Talking: the base model and").expect(&stdout)..];
    assert!(talk.contains("正義とは何だろうか？"), "{talk}");
    assert!(
        talk.contains("考えることは、学者や哲学者の特権ではありません。"),
        "{talk}"
    );
    assert_eq!(talk.matches("- **base**: ").count(), 2, "{talk}");
    assert_eq!(
        talk.matches(&format!("- **{best} (best)**: ")).count(),
        2,
        "{talk}"
    );
    assert!(
        talk.contains("Replies that end in a question") && talk.contains("of its 8 eval replies"),
        "{talk}"
    );
    let saved = std::fs::read_to_string(out.join("exchanges.md")).unwrap();
    assert_eq!(saved.trim_end(), talk.trim_end());
    let x = &fig["exchanges"];
    assert_eq!(x["speakers"][0]["name"], "base");
    assert_eq!(x["speakers"][1]["name"], best.as_str());
    for s in 0..2 {
        let replies = x["speakers"][s]["replies"].as_array().unwrap();
        assert!(
            replies.iter().all(|r| !r.as_str().unwrap().is_empty()),
            "{x}"
        );
        assert!(
            x["speakers"][s]["eval_question_share"]["value"].is_f64(),
            "{x}"
        );
    }
    // The follow-up's dialogue is held out: no run was trained on the reply to it.
    let split = json(out.join("model1/data/split.json"));
    assert!(split["val"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(socratune::demo::FOLLOW_UP.0)));

    // A rerun replaces its own folder; any other folder is refused.
    let (ok, _, err) = socratune(
        &[
            "demo",
            "--out",
            dir.path().to_str().unwrap(),
            "--steps",
            "1",
        ],
        dir.path(),
    );
    assert!(!ok && err.contains("not made by the demo"), "{err}");
}
