//! `socratune eval`: every finished run (and the base model) answers the same held-out prompts
//! with the same sampling; the synth judge scores the replies; `runs/eval.md` and
//! `runs/eval.json` put the judged scores, with bootstrap intervals, beside validation loss.
//!
//! The pieces: `prompts` (which user turns), `generate` (the only code that touches the
//! model), `replies` (generate once, store, resume), `judging` and `pairwise` (the synth
//! judge), `stats` (bootstrap, Bradley–Terry, Spearman) and `report`.

pub mod config;
pub mod generate;
pub mod judging;
pub mod pairwise;
pub mod prompts;
pub mod replies;
pub mod report;
pub mod stats;

pub use config::EvalConfig;
pub use report::{EntryReport, EvalReport};

use crate::chat::load::ModelSpec;
use crate::chat::{PromptFormat, RunInfo};
use crate::dataset::variant::natural_key;
use crate::model::adapter;
use crate::rundir::RunDir;
use crate::train::trainer::read_summary;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Synth(#[from] crate::synth::SynthError),
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    /// A bad `configs/eval.toml`.
    #[error("{0}")]
    Config(String),
    /// Runs, flags or files that do not fit together.
    #[error("{0}")]
    Invalid(String),
    #[error(
        "interrupted; rerun the same command to resume (stored replies and judge answers are kept)"
    )]
    Interrupted,
}

pub type Result<T, E = EvalError> = std::result::Result<T, E>;

/// The name the base model goes by in the report.
pub const BASE: &str = "base";

/// What to evaluate and how (the library's view of `socratune eval`'s flags).
pub struct EvalOptions {
    pub runs: PathBuf,
    /// Only these runs (empty: every finished run).
    pub variants: Vec<String>,
    /// Also the base model without an adapter.
    pub base: bool,
    pub config: EvalConfig,
    /// The synth config whose `[judge]` endpoint scores the replies; None: no judging.
    pub judge: Option<PathBuf>,
    /// The synth prompt templates folder.
    pub prompts_dir: PathBuf,
    pub pairwise: bool,
    /// The corpus the split was made from, when it moved since `data build`.
    pub dialogues: Option<PathBuf>,
    pub model: ModelSpec,
    pub stop: Arc<AtomicBool>,
}

/// One thing that answers: a run's best adapter on its base model, or the base model alone.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    /// None: the base model.
    pub adapter: Option<PathBuf>,
    /// The base model (what the adapter names, or `--model`).
    pub base: String,
    pub format: PromptFormat,
    pub variant: Option<String>,
    pub common_val_loss: Option<f64>,
    /// The run's `data/split.json` (None for the base model).
    pub split: Option<PathBuf>,
}

/// The finished runs under `runs` (a `summary.json` and a `best/` adapter), in natural order.
pub fn find_runs(o: &EvalOptions) -> Result<Vec<Entry>> {
    let dir = &o.runs;
    let listing = std::fs::read_dir(dir).map_err(|e| crate::fsutil::FileError::new(dir, e))?;
    let mut out = Vec::new();
    for item in listing.flatten() {
        let run = RunDir::new(item.path());
        let name = item.file_name().to_string_lossy().to_string();
        let best = run.best();
        if !best.join(adapter::CONFIG_FILE).is_file() {
            continue;
        }
        if !o.variants.is_empty() && !o.variants.contains(&name) {
            continue;
        }
        let Some(summary) = read_summary(&run) else {
            continue;
        };
        if name == BASE {
            return Err(EvalError::Invalid(format!(
                "{}: a run named `{BASE}` clashes with the base model's name in the report; rename it",
                run.root().display()
            )));
        }
        let info = RunInfo::find(&best)?;
        let variant = info.as_ref().map(|i| &i.variant);
        let base = match &o.model.model {
            Some(m) => m.clone(),
            None => adapter::read_config(&best)?.base_model.ok_or_else(|| {
                EvalError::Invalid(format!(
                    "{}: the adapter does not name its base model; pass --model",
                    best.display()
                ))
            })?,
        };
        out.push(Entry {
            name,
            format: variant.map_or_else(PromptFormat::whole, PromptFormat::from_variant),
            variant: variant.map(|v| v.name.clone()),
            common_val_loss: summary.common_val_loss,
            split: Some(run.data().split()),
            adapter: Some(best),
            base,
        });
    }
    for v in &o.variants {
        if !out.iter().any(|e| &e.name == v) {
            return Err(EvalError::Invalid(format!(
                "{}: no finished run `{v}` (a folder with summary.json and best/)",
                dir.display()
            )));
        }
    }
    out.sort_by_key(|e| natural_key(&e.name));
    Ok(out)
}

/// The base model as an entry: the runs' base (they must agree) or `--model`.
fn base_entry(o: &EvalOptions, runs: &[Entry]) -> Result<Entry> {
    let base = match (&o.model.model, runs.first()) {
        (Some(m), _) => m.clone(),
        (None, Some(first)) => {
            if let Some(other) = runs.iter().find(|e| e.base != first.base) {
                return Err(EvalError::Invalid(format!(
                    "{} and {} are on different base models ({} and {}); pass --model to say which one --base means",
                    first.name, other.name, first.base, other.base
                )));
            }
            first.base.clone()
        }
        (None, None) => crate::chat::load::DEFAULT_MODEL.into(),
    };
    let b = &o.config.base;
    let common_val_loss = base_common_loss(&o.runs, &base, &b.prefix, runs);
    Ok(Entry {
        name: BASE.into(),
        adapter: None,
        base,
        format: PromptFormat {
            pairs: b.window,
            prefix: b.prefix.clone(),
            layout: Default::default(),
        },
        variant: None,
        common_val_loss,
        split: None,
    })
}

/// The base model's common val loss, from `runs/base.json` (which `socratune demo` writes):
/// a run's common text is the whole held-out dialogues with its prefix, so the base's score on
/// the text of any run formatted with the base's own prefix is the base's common val loss.
/// None when no such score is there (no base.json, another base model, no run with the prefix).
fn base_common_loss(runs_dir: &Path, base: &str, prefix: &str, runs: &[Entry]) -> Option<f64> {
    let scores = crate::report::compare::read_base(runs_dir).filter(|s| s.model == base)?;
    runs.iter()
        .filter(|e| e.format.prefix == prefix)
        .find_map(|e| scores.common_val_loss.get(&e.name).copied())
}

/// Runs the whole evaluation; writes `runs/eval.json` and `runs/eval.md` and returns the
/// report.
pub fn run(o: &EvalOptions) -> Result<EvalReport> {
    let say = |m: String| eprintln!("eval: {m}");
    let mut entries = find_runs(o)?;
    if entries.is_empty() {
        return Err(EvalError::Invalid(format!(
            "{}: no finished runs to evaluate (folders with summary.json and best/)",
            o.runs.display()
        )));
    }
    let splits: Vec<PathBuf> = entries.iter().filter_map(|e| e.split.clone()).collect();
    if o.base {
        let b = base_entry(o, &entries)?;
        entries.insert(0, b);
    }
    let cfg = &o.config;
    let (_, held_out) = prompts::held_out(&splits, o.dialogues.as_deref())?;
    let prompts = prompts::select(&held_out, cfg.prompts, cfg.seed);
    if prompts.is_empty() {
        return Err(EvalError::Invalid(
            "the split holds out no dialogue with a user turn: nothing to ask".into(),
        ));
    }
    say(format!(
        "{} entries × {} held-out prompts (from {} dialogues)",
        entries.len(),
        prompts.len(),
        held_out.len()
    ));
    let params = crate::chat::session::sampling(&crate::model::generate::SamplingRequest {
        seed: Some(cfg.seed),
        ..cfg.sampling.clone()
    })?;
    if o.pairwise && o.judge.is_none() {
        return Err(EvalError::Invalid(
            "--pairwise needs a judge (not --judge none)".into(),
        ));
    }
    let judge_run = match &o.judge {
        Some(synth) => {
            let run = judging::JudgeRun {
                config: crate::synth::SynthConfig::load(synth)?,
                prompts_dir: o.prompts_dir.clone(),
                template: cfg.judge.reply.clone(),
                stop: Arc::clone(&o.stop),
            };
            judging::preflight(&run, o.pairwise.then_some(cfg.judge.pair.as_str()))?;
            Some(run)
        }
        None => None,
    };
    let dir = o.runs.join("eval");
    let all = replies::generate_all(
        &dir,
        &entries,
        &prompts,
        &params,
        cfg.batch_size,
        &o.model,
        &o.stop,
        &say,
    )?;

    let dialogues = judging::write_dialogues(&dir, &entries, &prompts, &all.replies)?;
    let mut judged = None;
    let mut pairwise = None;
    if let Some(run) = judge_run {
        judged = Some(judging::judge_replies(&dir, &dialogues, &run)?);
        if o.pairwise {
            let run = judging::JudgeRun {
                template: cfg.judge.pair.clone(),
                ..run
            };
            pairwise = Some(pairwise::compare_pairs(
                &dir,
                &entries,
                &prompts,
                &all.replies,
                &run,
            )?);
        }
    }
    let report = report::build(report::Inputs {
        entries: &entries,
        prompts: &prompts,
        replies: &all,
        judged: judged.as_ref(),
        pairwise: pairwise.as_ref(),
        config: cfg,
        params: &params,
    });
    report::write(&o.runs, &report)?;
    Ok(report)
}

/// Where the report lives under a folder of runs.
pub fn report_json(runs: &Path) -> PathBuf {
    runs.join("eval.json")
}
