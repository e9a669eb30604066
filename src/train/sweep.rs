//! `socratune sweep`: every variant trained with the same settings, seed and split — one after
//! another, one per GPU at a time, or as a Slurm job array.

use super::config::TrainConfig;
use super::trainer::{read_summary, train, RunSpec, Summary};
use super::TrainError;
use crate::dataset::{self, Inputs, Manifest, Overflow, Selection};
use crate::fsutil::write_atomic;
use crate::rundir::RunDir;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// How to build a variant's data when `runs/<variant>/data` does not exist yet.
#[derive(Debug, Clone)]
pub struct DataSource {
    pub dialogues: PathBuf,
    pub tokenizer: String,
    pub variants_dir: PathBuf,
    pub seed: u64,
    pub skip_bad: bool,
    pub include_unjudged: bool,
    pub max_len: Option<usize>,
    pub overflow: Overflow,
}

pub struct SweepSpec {
    pub variants: Vec<String>,
    pub runs: PathBuf,
    pub config: TrainConfig,
    pub data: Option<DataSource>,
    /// GPU ordinals: one variant per GPU at a time, each in its own process. Empty: in-process,
    /// one after another, on the config's device.
    pub gpus: Vec<usize>,
    pub progress: bool,
    pub interrupt: Option<Arc<AtomicBool>>,
}

#[derive(Debug, Clone)]
pub enum Outcome {
    /// Finished before this sweep started.
    Skipped(Summary),
    Trained(Summary),
    Failed(String),
}

/// The variant names in a folder of `*.toml` files.
pub fn variant_names(dir: &Path) -> Result<Vec<String>, TrainError> {
    let vs = dataset::Variant::load_dir(dir)?;
    Ok(vs.into_iter().map(|v| v.name).collect())
}

/// Builds the data of variants that have none, then checks that every variant's data shares
/// one split (same corpus, same seed).
pub fn ensure_data(spec: &SweepSpec) -> Result<(), TrainError> {
    let missing: Vec<String> = spec
        .variants
        .iter()
        .filter(|v| !RunDir::of(&spec.runs, v).data().train().is_file())
        .cloned()
        .collect();
    if !missing.is_empty() {
        let Some(src) = &spec.data else {
            return Err(TrainError::Data(format!(
                "no data for {} in {}; build it with `socratune data build --all`, or pass --dialogues (and --tokenizer)",
                missing.join(", "),
                spec.runs.display()
            )));
        };
        let prepared = dataset::prepare(Inputs {
            dialogues: src.dialogues.clone(),
            tokenizer: src.tokenizer.clone(),
            variants_dir: src.variants_dir.clone(),
            selection: Selection::Named(missing.clone()),
            seed: src.seed,
            skip_bad: src.skip_bad,
            include_unjudged: src.include_unjudged,
        })?;
        let opts = dataset::BuildOptions {
            out: spec.runs.clone(),
            max_len: src.max_len,
            overflow: src.overflow,
        };
        for r in dataset::build(&prepared, &opts)? {
            eprintln!(
                "{}: built {} train / {} val examples",
                r.variant, r.train, r.val
            );
            for w in r.warnings() {
                eprintln!("warning: {w}");
            }
        }
    }
    let mut first: Option<(String, Manifest)> = None;
    for v in &spec.variants {
        let p = RunDir::of(&spec.runs, v).data().split();
        let Ok(text) = std::fs::read_to_string(&p) else {
            continue;
        };
        let m: Manifest = serde_json::from_str(&text).map_err(|e| TrainError::parse(&p, e))?;
        match &first {
            None => first = Some((v.clone(), m)),
            Some((w, f))
                if f.corpus_sha256 != m.corpus_sha256 || f.seed != m.seed || f.val != m.val =>
            {
                return Err(TrainError::Data(format!(
                    "{v} and {w} were built from different corpora or seeds, so their validation sets differ; rebuild them together with `socratune data build --all`"
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Runs the sweep; finished runs are skipped, interrupted ones resumed.
pub fn sweep(spec: &SweepSpec) -> Result<Vec<(String, Outcome)>, TrainError> {
    spec.config.validate()?;
    ensure_data(spec)?;
    if spec.gpus.is_empty() {
        let mut out = Vec::new();
        for v in &spec.variants {
            let run = RunDir::of(&spec.runs, v);
            if let Some(s) = read_summary(&run) {
                eprintln!(
                    "{v}: finished earlier (best val loss {:.4}); skipping",
                    s.best_val_loss
                );
                out.push((v.clone(), Outcome::Skipped(s)));
                continue;
            }
            let r = train(RunSpec {
                name: v.clone(),
                config: spec.config.clone(),
                data_dir: run.data(),
                out_dir: run,
                resume: true,
                fresh: false,
                progress: spec.progress,
                interrupt: spec.interrupt.clone(),
            });
            match r {
                Ok(s) => out.push((v.clone(), Outcome::Trained(s))),
                Err(e @ TrainError::Interrupted { .. }) => return Err(e),
                Err(e) => {
                    eprintln!("{v}: failed: {e}");
                    out.push((v.clone(), Outcome::Failed(e.to_string())));
                }
            }
        }
        return Ok(out);
    }
    sweep_on_gpus(spec)
}

/// The resolved config every child process and Slurm task reads.
pub fn write_config(spec: &SweepSpec) -> Result<PathBuf, TrainError> {
    let path = spec.runs.join("sweep-config.toml");
    let text = toml::to_string(&spec.config).map_err(|e| TrainError::Config(e.to_string()))?;
    let header =
        "# Written by `socratune sweep`: the settings every variant of this sweep trains with.\n";
    write_atomic(&path, format!("{header}{text}").as_bytes())?;
    Ok(path)
}

/// One process per GPU at a time, each `socratune train --variant V --device cuda:N --resume`.
fn sweep_on_gpus(spec: &SweepSpec) -> Result<Vec<(String, Outcome)>, TrainError> {
    let config = write_config(spec)?;
    let exe = std::env::current_exe()
        .map_err(|e| TrainError::Data(format!("cannot find the socratune binary: {e}")))?;
    let queue: Arc<Mutex<Vec<String>>> =
        Arc::new(Mutex::new(spec.variants.iter().rev().cloned().collect()));
    let results: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::new(Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        for &gpu in &spec.gpus {
            let (queue, results, exe, config) =
                (queue.clone(), results.clone(), exe.clone(), config.clone());
            scope.spawn(move || loop {
                let Some(v) = queue.lock().expect("queue").pop() else {
                    break;
                };
                let run = RunDir::of(&spec.runs, &v);
                let outcome = if let Some(s) = read_summary(&run) {
                    Outcome::Skipped(s)
                } else {
                    eprintln!("{v}: training on cuda:{gpu} (log: {})", run.log().display());
                    run_child(&exe, &config, spec, &v, gpu)
                };
                results.lock().expect("results").push((v, outcome));
            });
        }
    });
    let mut out = Arc::try_unwrap(results)
        .expect("threads joined")
        .into_inner()
        .expect("results");
    out.sort_by_key(|(v, _)| spec.variants.iter().position(|x| x == v));
    Ok(out)
}

fn run_child(exe: &Path, config: &Path, spec: &SweepSpec, v: &str, gpu: usize) -> Outcome {
    let run = RunDir::of(&spec.runs, v);
    if let Err(e) = std::fs::create_dir_all(run.root()) {
        return Outcome::Failed(format!("{}: {e}", run.root().display()));
    }
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run.log())
    {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("{}: {e}", run.log().display())),
    };
    let status = std::process::Command::new(exe)
        .args([
            "train",
            "--variant",
            v,
            "--resume",
            "--device",
            &format!("cuda:{gpu}"),
        ])
        .arg("--runs")
        .arg(&spec.runs)
        .arg("--config")
        .arg(config)
        .stdout(
            log.try_clone()
                .map(std::process::Stdio::from)
                .unwrap_or(std::process::Stdio::null()),
        )
        .stderr(std::process::Stdio::from(log))
        .status();
    match status {
        Ok(s) if s.success() => match read_summary(&run) {
            Some(sum) => Outcome::Trained(sum),
            None => Outcome::Failed("finished without a summary.json".into()),
        },
        Ok(s) => Outcome::Failed(format!("exited with {s}; see {}", run.log().display())),
        Err(e) => Outcome::Failed(format!("cannot start {}: {e}", exe.display())),
    }
}

/// A Slurm job-array script: one task per variant, each resuming its run.
pub fn slurm_script(spec: &SweepSpec, exe: &Path, config: &Path) -> String {
    let abs = |p: &Path| {
        std::fs::canonicalize(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    let names: Vec<String> = spec.variants.iter().map(|v| format!("\"{v}\"")).collect();
    format!(
        r#"#!/bin/bash
# Written by `socratune sweep --emit slurm`: one array task per variant. Submit with
#   sbatch {script}
# Each task resumes its run if it was interrupted and returns at once if it has finished, so
# resubmitting is safe. Edit the #SBATCH lines for your cluster.
#SBATCH --job-name=socratune-sweep
#SBATCH --array=0-{last}
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output={runs}/slurm-%A_%a.out
set -euo pipefail
VARIANTS=({names})
VARIANT=${{VARIANTS[$SLURM_ARRAY_TASK_ID]}}
exec {exe} train --variant "$VARIANT" --runs {runs} --config {config} --device cuda --resume
"#,
        script = abs(&spec.runs.join("sweep.slurm")),
        last = spec.variants.len().saturating_sub(1),
        runs = abs(&spec.runs),
        names = names.join(" "),
        exe = abs(exe),
        config = abs(config),
    )
}
