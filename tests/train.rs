//! `socratune train` end to end on the tiny fixture model and synthetic tokenized data:
//! learning, gradient accumulation, evaluation, PEFT output, exact resume after `kill -9`,
//! refusals.

mod common;
use candle_core::{Device, Tensor};
use common::{adapter_tensors as adapter, fixture, max_diff_all as max_diff, run_ok, spawn_until};
use socratune::train::data::{load_examples, Example};
use socratune::train::trainer::evaluate;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn vocab() -> usize {
    let c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    c["vocab_size"].as_u64().unwrap() as usize
}

/// Deterministic pseudo-random examples: BOS, then tokens; the first 40% is "user" (masked).
fn write_data(dir: &Path, n_train: usize, n_val: usize, len: usize) -> PathBuf {
    write_data_with(dir, n_train, n_val, |i| len - (i % 3))
}

/// As `write_data`, example `i` of each file `length(i)` tokens long.
fn write_data_with(
    dir: &Path,
    n_train: usize,
    n_val: usize,
    length: impl Fn(usize) -> usize,
) -> PathBuf {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let v = vocab() as u64;
    let mut x: u64 = 12345;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        3 + (x % (v - 3)) as u32
    };
    for (file, n) in [("train.jsonl", n_train), ("val.jsonl", n_val)] {
        let mut text = String::new();
        for i in 0..n {
            let l = length(i);
            let mut ids = vec![2u32];
            // A learnable pattern: each example repeats a short motif.
            let motif: Vec<u32> = (0..4).map(|_| next()).collect();
            ids.extend((1..l).map(|k| motif[k % 4]));
            let labels: Vec<i64> = ids
                .iter()
                .enumerate()
                .map(|(k, &t)| if k < l * 2 / 5 { -100 } else { t as i64 })
                .collect();
            let ex = Example {
                id: format!("{file}-{i}"),
                dialogue: format!("d{i}"),
                input_ids: ids,
                labels,
            };
            text.push_str(&serde_json::to_string(&ex).unwrap());
            text.push('\n');
        }
        std::fs::write(data.join(file), text).unwrap();
    }
    data
}

fn train_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    common::train_cmd(&fixture(), data, out, extra)
}

/// The fixture model with its adapter, f32 on the CPU.
fn fixture_with_adapter() -> socratune::model::CausalLm {
    let src = socratune::model::Source::Local(fixture());
    let mut model = socratune::model::load(&src, candle_core::DType::F32, &Device::Cpu).unwrap();
    socratune::model::adapter::load(&mut model, &fixture().join("adapter")).unwrap();
    model
}

fn events(run: &Path, kind: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["event"] == kind)
        .collect()
}

/// The loss of every `train` event of a run, in step order.
fn train_losses(run: &Path) -> Vec<f64> {
    events(run, "train")
        .iter()
        .map(|e| e["loss"].as_f64().unwrap())
        .collect()
}

/// Resumes the run `run` to its end; its stdout.
fn resume(data: &Path, run: &Path, args: &[&str]) -> String {
    let mut c = train_cmd(data, run, args);
    c.arg("--resume");
    run_ok(c)
}

const QUICK: [&str; 8] = [
    "--micro-batch",
    "2",
    "--grad-accum",
    "1",
    "--lora-dropout",
    "0",
    "--eval-every",
    "0",
];

#[test]
fn overfits_a_handful_of_examples_and_writes_peft_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 4, 2, 24);
    let run = dir.path().join("run");
    let out = run_ok(train_cmd(
        &data,
        &run,
        &[
            &QUICK[..],
            &[
                "--max-steps",
                "40",
                "--lr",
                "1e-2",
                "--schedule",
                "constant",
                "--warmup-steps",
                "0",
            ],
        ]
        .concat(),
    ));
    assert!(out.contains("completed after 40 steps"), "{out}");
    let losses = train_losses(&run);
    assert_eq!(losses.len(), 40);
    assert!(
        losses[39] < 0.5 * losses[0],
        "loss {} → {}",
        losses[0],
        losses[39]
    );
    for e in events(&run, "train") {
        for k in [
            "step",
            "epoch",
            "loss",
            "lr",
            "grad_norm",
            "tokens_per_s",
            "elapsed_s",
        ] {
            assert!(e.get(k).is_some(), "train event without {k}: {e}");
        }
    }
    assert_eq!(events(&run, "eval").len(), 1);

    // PEFT layout: keys, shapes, config.
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture().join("config.json")).unwrap())
            .unwrap();
    let layers = cfg["num_hidden_layers"].as_u64().unwrap() as usize;
    let hidden = cfg["hidden_size"].as_u64().unwrap() as usize;
    for which in ["adapter", "best"] {
        let t = adapter(&run.join(which));
        assert_eq!(t.len(), layers * 7 * 2, "{which}");
        let q = &t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
        assert_eq!(q.dims(), [16, hidden]);
        let down_b = &t[&format!(
            "base_model.model.model.layers.{}.mlp.down_proj.lora_B.weight",
            layers - 1
        )];
        assert_eq!(down_b.dims(), [hidden, 16]);
        let c: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(run.join(which).join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["r"], 16);
        assert_eq!(c["target_modules"].as_array().unwrap().len(), 7);
    }
    let bytes = std::fs::read(run.join("adapter/adapter_model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");

    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("summary.json")).unwrap()).unwrap();
    for k in [
        "best_val_loss",
        "final_val_loss",
        "best_step",
        "tokens_trained",
        "wall_time_s",
        "config_sha256",
        "data_sha256",
    ] {
        assert!(
            s.get(k).is_some_and(|v| !v.is_null()),
            "summary without {k}: {s}"
        );
    }

    // A finished run is not silently overwritten.
    let o = train_cmd(&data, &run, &QUICK).output().unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--resume"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn gradient_accumulation_4x1_equals_one_batch_of_4() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 4, 2, 20);
    let common = [
        "--max-steps",
        "2",
        "--lora-dropout",
        "0",
        "--eval-every",
        "0",
        "--lr",
        "1e-2",
        "--warmup-steps",
        "0",
    ];
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    run_ok(train_cmd(
        &data,
        &a,
        &[&common[..], &["--micro-batch", "1", "--grad-accum", "4"]].concat(),
    ));
    run_ok(train_cmd(
        &data,
        &b,
        &[&common[..], &["--micro-batch", "4", "--grad-accum", "1"]].concat(),
    ));
    // Adam divides by the gradients' own scale, so float-rounding differences of the summation
    // order show up in the update at ~1e-3 of the learning rate; the gradients themselves are
    // compared exactly below.
    let d = max_diff(&adapter(&a.join("adapter")), &adapter(&b.join("adapter")));
    assert!(d < 1e-4, "adapters differ by {d}");
    let la = train_losses(&a);
    let lb = train_losses(&b);
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-5, "{la:?} vs {lb:?}");
    }
}

#[test]
fn evaluation_does_not_depend_on_the_batch_size() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 1, 9, 30);
    let val = load_examples(&data.join("val.jsonl"), 1000)
        .unwrap()
        .examples;
    let model = fixture_with_adapter();
    let one = evaluate(&model, &val, 1, 0, vocab(), &Device::Cpu).unwrap();
    let eight = evaluate(&model, &val, 8, 0, vocab(), &Device::Cpu).unwrap();
    assert!((one - eight).abs() <= 1e-6 * one.abs(), "{one} vs {eight}");
}

/// Runs `train` three times into `run`, stopping it as soon as checkpoint `targets[i]`
/// appears: SIGKILL the first and last time, Ctrl-C (which checkpoints and exits 130) the
/// second; the runs after the first resume.
fn stop_three_times(data: &Path, run: &Path, args: &[&str], targets: [usize; 3]) {
    for (kills, target) in targets.into_iter().enumerate() {
        let mut c = train_cmd(data, run, args);
        if kills > 0 {
            c.arg("--resume");
        }
        // Stop as soon as checkpoint `target` shows up: at an arbitrary point of the next step
        // or of the next checkpoint's write.
        let ckpts = run.join("checkpoints");
        let mut child = spawn_until(c, &ckpts.join(format!("step-{target}")));
        if kills == 1 {
            // Ctrl-C: the run checkpoints the step it is on and exits with 130.
            Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status()
                .unwrap();
            let status = child.wait().unwrap();
            assert_eq!(status.code(), Some(130));
            let (newest, _) = socratune::train::checkpoint::newest_valid(&ckpts);
            assert!(newest.unwrap().1.step >= target);
        } else {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
        assert!(
            !run.join("summary.json").exists(),
            "the run finished before it was stopped"
        );
    }
}

#[test]
fn resume_after_kill_9_ends_with_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 24, 4, 48);
    resume_after_kills(dir.path(), &data, &["--micro-batch", "2"]);
}

/// Grouped micro-batches filled up to a token budget, on examples of 12 to 47 tokens: the
/// epochs have different numbers of steps, and a resumed run still lands on the same adapter.
#[test]
fn resume_with_grouped_token_budget_batches_ends_with_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data_with(dir.path(), 24, 4, |i| 12 + (i * 7) % 36);
    resume_after_kills(
        dir.path(),
        &data,
        &["--batching", "grouped", "--micro-batch-tokens", "100"],
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("killed/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        (&cfg["batching"], &cfg["micro_batch_tokens"]),
        (&serde_json::json!("grouped"), &serde_json::json!(100))
    );
}

/// Packed rows (about three examples of 12 to 47 tokens in a row of 100): stopped three
/// times and resumed, the run recomputes each epoch's rows from the lengths and lands on the
/// same adapter; the rows are packed (fewer steps than one example a row would take).
#[test]
fn resume_with_packed_rows_ends_with_the_same_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data_with(dir.path(), 24, 4, |i| 12 + (i * 7) % 36);
    resume_after_kills(
        dir.path(),
        &data,
        &[
            "--pack",
            "true",
            "--max-seq-len",
            "100",
            "--micro-batch",
            "2",
        ],
    );
    let cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("killed/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["pack"], serde_json::json!(true));
    // 24 examples (708 tokens) in rows of ≤ 100 tokens: 8 or 9 rows, 2 a micro-batch, 2 a
    // step: 2 or 3 steps an epoch, where one example a row would take 6.
    let first = &events(&dir.path().join("ref"), "train")[0];
    assert!(first["epoch"].as_f64().unwrap() >= 1.0 / 3.0, "{first}");
}

/// Trains 60 steps once uninterrupted and once stopped three times (SIGKILL, Ctrl-C,
/// SIGKILL) and resumed; the adapters must be identical.
fn resume_after_kills(dir: &Path, data: &Path, batching: &[&str]) {
    let data = data.to_path_buf();
    let args = [
        batching,
        &[
            "--max-steps",
            "60",
            "--grad-accum",
            "2",
            "--save-every",
            "1",
            "--eval-every",
            "7",
            "--lora-dropout",
            "0.1",
            "--lr",
            "5e-3",
        ],
    ]
    .concat();
    let reference = dir.join("ref");
    run_ok(train_cmd(&data, &reference, &args));

    let run = dir.join("killed");
    stop_three_times(&data, &run, &args, [5, 17, 31]);
    let out = resume(&data, &run, &args);
    assert!(out.contains("completed after 60 steps"), "{out}");
    let d = max_diff(
        &adapter(&reference.join("adapter")),
        &adapter(&run.join("adapter")),
    );
    assert!(
        d <= 1e-6,
        "resumed adapter differs from the uninterrupted one by {d}"
    );
    let d = max_diff(
        &adapter(&reference.join("best")),
        &adapter(&run.join("best")),
    );
    assert!(d <= 1e-6, "best adapters differ by {d}");
    // Every step is logged exactly once.
    let steps: Vec<u64> = events(&run, "train")
        .iter()
        .map(|e| e["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=60).collect::<Vec<_>>());
}

#[test]
fn resume_refuses_a_changed_config_or_data_and_non_finite_loss_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 6, 2, 16);
    let run = dir.path().join("run");
    run_ok(train_cmd(
        &data,
        &run,
        &[&QUICK[..], &["--max-steps", "3"]].concat(),
    ));
    let o = train_cmd(
        &data,
        &run,
        &[&QUICK[..], &["--max-steps", "3", "--resume", "--lr", "0.5"]].concat(),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("config changed") && err.contains("learning_rate"),
        "{err}"
    );
    let train = std::fs::read_to_string(data.join("train.jsonl")).unwrap();
    std::fs::write(
        data.join("train.jsonl"),
        train
            .lines()
            .skip(1)
            .map(|l| format!("{l}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let o = train_cmd(
        &data,
        &run,
        &[&QUICK[..], &["--max-steps", "3", "--resume"]].concat(),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("data in") && err.contains("changed"),
        "{err}"
    );

    let run2 = dir.path().join("nan");
    let o = train_cmd(
        &data,
        &run2,
        &[
            &QUICK[..],
            &[
                "--max-steps",
                "5",
                "--lr",
                "1e30",
                "--max-grad-norm",
                "0",
                "--save-every",
                "1",
                "--schedule",
                "constant",
                "--warmup-steps",
                "0",
            ],
        ]
        .concat(),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("at step") && err.contains("last good checkpoint"),
        "{err}"
    );
}

/// The accumulated gradient of four micro-batches of one example equals the gradient of one
/// batch of four (each micro-batch's loss sum divided by the step's supervised-token count).
#[test]
fn accumulated_gradients_equal_the_batch_gradient() {
    use socratune::model::lora::Mode;
    use socratune::model::loss::{loss_sum, Batch};
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 4, 1, 20);
    let ex = load_examples(&data.join("train.jsonl"), 1000)
        .unwrap()
        .examples;
    let model = fixture_with_adapter();
    let seqs: Vec<(&[u32], &[i64])> = ex
        .iter()
        .map(|e| (e.input_ids.as_slice(), e.labels.as_slice()))
        .collect();
    let supervised: usize = ex.iter().map(|e| e.supervised()).sum();
    let whole = Batch::new(&seqs, 0, vocab(), &Device::Cpu).unwrap();
    (loss_sum(&model, &whole, &mut Mode::grad_only()).unwrap() / supervised as f64)
        .unwrap()
        .backward()
        .unwrap();
    let batch_grads = model.take_lora_grads();
    for s in &seqs {
        let b = Batch::new(std::slice::from_ref(s), 0, vocab(), &Device::Cpu).unwrap();
        (loss_sum(&model, &b, &mut Mode::grad_only()).unwrap() / supervised as f64)
            .unwrap()
            .backward()
            .unwrap();
    }
    let micro_grads = model.take_lora_grads();
    for (a, b) in batch_grads.iter().zip(&micro_grads) {
        let (a, b) = (a.as_ref().unwrap(), b.as_ref().unwrap());
        let num = (a - b)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        let den = a
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            .sqrt();
        assert!(
            num <= 1e-5 * den.max(1e-12),
            "relative difference {}",
            num / den
        );
    }
}

#[test]
fn a_live_run_folder_is_locked_and_a_killed_holder_leaves_a_stale_lock() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 6, 2, 16);
    let run = dir.path().join("run");
    let long = [
        &QUICK[..],
        &["--max-steps", "100000", "--save-every", "1000"],
    ]
    .concat();
    let mut live = spawn_until(train_cmd(&data, &run, &long), &run.join("metrics.jsonl"));
    assert!(live.try_wait().unwrap().is_none(), "the first run ended");
    let pid = live.id().to_string();
    for extra in ["--resume", "--fresh"] {
        let out = train_cmd(&data, &run, &[&long[..], &[extra]].concat())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{extra}: {err}");
        assert!(
            err.contains("is in use by process") && err.contains(&pid),
            "{extra}: {err}"
        );
    }
    assert!(
        live.try_wait().unwrap().is_none() && run.join("metrics.jsonl").exists(),
        "the live run was left alone"
    );
    let _ = live.kill(); // SIGKILL: no chance to remove its lock file
    let _ = live.wait();
    assert!(run.join(".lock").exists());
    let out = train_cmd(
        &data,
        &run,
        &[&QUICK[..], &["--max-steps", "2", "--fresh"]].concat(),
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("taking over the lock left by process {pid}")),
        "{err}"
    );
    assert!(!run.join(".lock").exists(), "released on exit");
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 6, 2, 16);
    let run = dir.path().join("run");
    let args = [&QUICK[..], &["--max-steps", "15", "--save-every", "5"]].concat();
    run_ok(train_cmd(&data, &run, &args));
    let finished = adapter(&run.join("adapter"));
    // As if the run had died while step 15's weights were being damaged on disk.
    std::fs::remove_file(run.join("summary.json")).unwrap();
    let w = run.join("checkpoints/step-15/adapter_model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let out = train_cmd(&data, &run, &[&args[..], &["--resume"]].concat())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("step-15/adapter_model.safetensors: damaged"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("completed after 15 steps"));
    let d = max_diff(&finished, &adapter(&run.join("adapter")));
    assert!(
        d <= 1e-6,
        "resumed from step 10, the adapter differs by {d}"
    );
}

#[test]
fn bench_train_runs_every_compute_pool_with_flush_to_zero() {
    let mut c = common::bin();
    c.args(["bench", "train", "--preset", "tiny", "--steps", "1"])
        .args(["--warmup", "0", "--device", "cpu", "--json"]);
    let v: serde_json::Value = serde_json::from_str(run_ok(c).trim()).unwrap();
    assert!(v["tokens_per_s"].as_f64().is_some_and(|x| x > 0.0), "{v}");
    let ftz = v["flush_to_zero"].as_object().expect("flush_to_zero");
    assert_eq!(ftz.len(), socratune::fpenv::POOLS.len(), "{v}");
    let supported = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));
    for pool in socratune::fpenv::POOLS {
        assert_eq!(ftz[pool], supported, "pool {pool}: {v}");
    }
}

/// `bench train --data`: every layout reported; padding shares and steps per epoch as the
/// lengths dictate; the profile corpus has the profile's extremes.
#[test]
fn bench_train_on_data_reports_each_batching_layout() {
    let dir = tempfile::tempdir().unwrap();
    // Lengths 12 to 47: random micro-batches of 4 pad a lot, sorted ones almost nothing.
    let data = write_data_with(dir.path(), 40, 2, |i| 12 + (i * 7) % 36);
    let train = data.join("train.jsonl");
    let bench = |extra: &[&str]| {
        let mut c = common::bin();
        c.args([
            "bench", "train", "--preset", "tiny", "--device", "cpu", "--json",
        ])
        .args([
            "--steps",
            "2",
            "--warmup",
            "0",
            "--data",
            train.to_str().unwrap(),
        ])
        .args(extra);
        serde_json::from_str::<serde_json::Value>(run_ok(c).trim()).unwrap()
    };
    let v = bench(&[]);
    let l = &v["layouts"];
    let share = |k: &str| l[k]["padding_share"].as_f64().unwrap();
    assert!(share("padded") > 0.2 && share("grouped") < 0.1, "{v}");
    // Packed rows of up to 4 × 47 tokens (the budget, the default of --max-seq-len): nearly
    // no padding, far fewer steps.
    assert!(share("packed") < 0.05, "{v}");
    assert_eq!(l["packed"]["row_tokens"], 4 * 47, "{v}");
    assert!(
        l["packed"]["steps_per_epoch"].as_u64() < l["padded"]["steps_per_epoch"].as_u64(),
        "{v}"
    );
    assert!(share("budget_grouped") < share("budget_padded"), "{v}");
    // 40 examples, 4 a micro-batch, 4 micro-batches a step.
    assert_eq!(l["padded"]["steps_per_epoch"], 3, "{v}");
    assert_eq!(l["budget_grouped"]["micro_batch_tokens"], 4 * 47, "{v}");
    for k in [
        "padded",
        "grouped",
        "budget_padded",
        "budget_grouped",
        "packed",
    ] {
        assert!(l[k]["real_tokens_per_s"].as_f64().unwrap() > 0.0, "{v}");
    }
    // Only the layouts asked for, each against budget_padded when it is measured.
    let v = bench(&["--layouts", "packed,budget_padded"]);
    let names: Vec<&String> = v["layouts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["budget_padded", "packed"], "{v}");
    assert_eq!(
        v["layouts"]["budget_padded"]["speedup_vs_budget_padded"],
        1.0
    );
    assert!(v["layouts"]["packed"]["speedup_vs_padded"].is_null(), "{v}");
    let v = bench(&["--length-profile", "8,20,60"]);
    assert_eq!(
        (v["min_tokens"].as_u64(), v["max_tokens"].as_u64()),
        (Some(8), Some(60))
    );
    let mut c = common::bin();
    c.args(["bench", "train", "--preset", "tiny", "--device", "cpu"])
        .args([
            "--data",
            train.to_str().unwrap(),
            "--micro-batch-tokens",
            "30",
        ]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("longest example (47 tokens)"),
        "{err}"
    );
    let mut c = common::bin();
    c.args(["bench", "train", "--preset", "tiny", "--device", "cpu"])
        .args(["--data", train.to_str().unwrap(), "--layouts", "packed,pad"]);
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no layout `pad`"),
        "{err}"
    );
}

fn safetensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[test]
fn full_parameter_training_learns_writes_a_hub_model_and_resumes_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(dir.path(), 12, 4, 32);
    let args = [
        "--full",
        "--max-steps",
        "30",
        "--micro-batch",
        "2",
        "--grad-accum",
        "2",
        "--save-every",
        "1",
        "--eval-every",
        "7",
        "--lr",
        "3e-3",
        "--weight-decay",
        "0.01",
    ];
    let reference = dir.path().join("ref");
    let out = run_ok(train_cmd(&data, &reference, &args));
    assert!(out.contains("completed after 30 steps"), "{out}");
    let losses = train_losses(&reference);
    assert!(
        losses[29] < 0.7 * losses[0],
        "loss {} → {}",
        losses[0],
        losses[29]
    );
    // A whole model in the Hub layout: every base weight, changed, with its config (tokenizer
    // files are copied too where the base has them; the fixture has none).
    let model = reference.join("model");
    for f in ["config.json", "generation_config.json"] {
        assert!(model.join(f).is_file(), "model/ has no {f}");
    }
    assert!(!reference.join("adapter").exists());
    let trained = safetensors(&model.join("model.safetensors"));
    let base = safetensors(&fixture().join("model.safetensors"));
    assert_eq!(trained.len(), base.len());
    for (name, t) in &base {
        let d = common::max_abs_diff(
            &t.to_dtype(candle_core::DType::F32).unwrap(),
            &trained[name],
        );
        assert!(d > 0.0, "{name} did not change");
    }
    // The trained model loads as a base model and scores what the run measured.
    let src = socratune::model::Source::Local(reference.join("best"));
    let best = socratune::model::load(&src, candle_core::DType::F32, &Device::Cpu).unwrap();
    let val = load_examples(&data.join("val.jsonl"), 1024).unwrap();
    let v = evaluate(&best, &val.examples, 4, 0, vocab(), &Device::Cpu).unwrap();
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("summary.json")).unwrap())
            .unwrap();
    let want = summary["best_val_loss"].as_f64().unwrap();
    assert!((v - want).abs() < 1e-5, "{v} vs {want}");

    // Killed, interrupted and resumed: the same weights, bit for bit.
    let run = dir.path().join("killed");
    stop_three_times(&data, &run, &args, [4, 11, 19]);
    let out = resume(&data, &run, &args);
    assert!(out.contains("completed after 30 steps"), "{out}");
    for folder in ["model", "best"] {
        let a = safetensors(&reference.join(folder).join("model.safetensors"));
        let b = safetensors(&run.join(folder).join("model.safetensors"));
        let d = max_diff(&a, &b);
        assert_eq!(d, 0.0, "{folder}: the resumed run differs by {d}");
    }
}
