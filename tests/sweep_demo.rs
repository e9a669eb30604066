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
        ],
        dir.path(),
    );
    assert!(ok, "{err}");
    // The pre-trained base predicts its held-out (non-Socrates) text clearly better than a
    // uniform guess over the 1024-token vocabulary.
    let pre: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("base-model/pretrain/summary.json")).unwrap(),
    )
    .unwrap();
    let uniform = 1024f64.ln();
    let pre_val = pre["best_val_loss"].as_f64().unwrap();
    assert!(
        pre_val < uniform - 1.0,
        "pre-trained base: {pre_val} vs ln V {uniform}"
    );
    // Every run beats the base on its own held-out Socrates turns, the best by a clear margin.
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("base.json")).unwrap()).unwrap();
    let mut best_gain = f64::NEG_INFINITY;
    for v in 1..=9 {
        let name = format!("model{v}");
        let s: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(out.join(&name).join("summary.json")).unwrap(),
        )
        .unwrap();
        let run = s["common_val_loss"].as_f64().unwrap();
        let b = base["common_val_loss"][&name].as_f64().unwrap();
        assert!(run < b, "{name}: {run} vs base {b}");
        best_gain = best_gain.max(b - run);
    }
    assert!(best_gain > 0.05, "best gain over the base: {best_gain}");
    assert!(stdout.contains("| base (on model"), "{stdout}");
    for v in 1..=9 {
        let run = out.join(format!("model{v}"));
        assert!(
            run.join("summary.json").exists(),
            "model{v} did not finish: {err}"
        );
    }
    assert!(stdout.contains("**Best: model"), "{stdout}");
    // It ends with eval's judge-free columns, for the runs and the base model.
    assert!(
        stdout.contains("ends in ? %") && stdout.contains("| base |"),
        "{stdout}"
    );
    assert!(out.join("eval.json").exists() && out.join("eval/replies/model9.jsonl").exists());
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
