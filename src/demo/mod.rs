//! `socratune demo`: the whole pipeline offline on CPU in a few minutes, from the shipped sample
//! dialogues — a small tokenizer trained on them, a tiny random Gemma-2 written to disk and
//! pre-trained (every weight) on text that is not Socrates, the nine variants built and each
//! LoRA-trained a few steps on Socrates' replies, the runs compared with the base model, every
//! run and the base answering the same held-out prompts (`eval` without a judge), and at the
//! end the best run and the base answering the same two lines (`talk`).

mod talk;

pub use talk::{follow_up, Exchanges, Speaker, FOLLOW_UP};

use crate::chat::load::ModelSpec;
use crate::dataset::{self, tokenizer::train_small, BuildOptions, Inputs, Overflow, Selection};
use crate::eval::config::BaseFormat;
use crate::eval::{EvalConfig, EvalOptions};
use crate::fsutil::{write_atomic, write_json};
use crate::model::export::export;
use crate::model::{CausalLm, ModelConfig};
use crate::train::sweep::{sweep, SweepSpec};
use crate::train::{TrainConfig, TrainError};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

const SAMPLE: &str = include_str!("../../data/dialogues/sample.jsonl");
const PERSONAS: &str = include_str!("../../data/personas.jsonl");
const QUESTIONS: &str = include_str!("../../data/questions.jsonl");
const VARIANTS: [(&str, &str); 9] = [
    ("model1", include_str!("../../configs/variants/model1.toml")),
    ("model2", include_str!("../../configs/variants/model2.toml")),
    ("model3", include_str!("../../configs/variants/model3.toml")),
    ("model4", include_str!("../../configs/variants/model4.toml")),
    ("model5", include_str!("../../configs/variants/model5.toml")),
    ("model6", include_str!("../../configs/variants/model6.toml")),
    ("model7", include_str!("../../configs/variants/model7.toml")),
    ("model8", include_str!("../../configs/variants/model8.toml")),
    ("model9", include_str!("../../configs/variants/model9.toml")),
];
const EVAL_CONFIG: &str = include_str!("../../configs/eval.toml");
/// Reply length of the demo's eval and exchanges: enough to read, few enough for two CPU cores.
const DEMO_NEW_TOKENS: usize = 48;
/// Marks a folder the demo made, so that a rerun may replace it.
const MARKER: &str = ".socratune-demo";
const VOCAB: usize = 1024;
/// The demo's figures, for the README and for checks: `demo.json`.
pub const FIGURES_FILE: &str = "demo.json";
/// The exchanges of the best run and the base model, as Markdown.
pub const EXCHANGES_FILE: &str = "exchanges.md";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error(transparent)]
    Eval(#[from] crate::eval::EvalError),
    #[error(transparent)]
    Chat(#[from] crate::chat::ChatError),
    #[error(transparent)]
    Io(#[from] crate::fsutil::FileError),
}

/// `demo.json`: what the demo showed, in numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// ln(vocabulary size): the loss of a uniform guess.
    pub uniform_loss: f64,
    /// The pre-trained base's loss on its held-out (non-Socrates) text.
    pub base_heldout_loss: f64,
    /// The run with the lowest common val loss.
    pub best: String,
    pub best_common_val_loss: f64,
    /// The base model's common val loss on the best run's held-out text.
    pub base_common_val_loss: f64,
    /// Runs whose common val loss is below the base's on the same text (of 9).
    pub runs_beating_base: usize,
    pub exchanges: Exchanges,
    /// Seconds per phase, in order.
    pub seconds: Vec<(String, f64)>,
}

pub struct DemoOptions {
    pub out: PathBuf,
    /// Optimizer steps per variant (at most one pass over its training examples).
    pub steps: usize,
    /// Full-parameter pre-training steps of the tiny base (on text that is not Socrates).
    pub pretrain_steps: usize,
    /// Held-out prompts every run and the base model answer in the eval.
    pub prompts: usize,
    pub progress: bool,
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// Wall time of the demo's phases.
struct Clock {
    last: Instant,
    seconds: Vec<(String, f64)>,
}

impl Clock {
    fn new() -> Self {
        Self {
            last: Instant::now(),
            seconds: Vec::new(),
        }
    }

    /// Ends the phase `name`; returns its seconds.
    fn lap(&mut self, name: &str) -> f64 {
        let s = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        self.seconds.push((name.into(), s));
        s
    }
}

/// Runs the demo; returns the comparison, the eval and the exchanges (Markdown).
pub fn run(o: &DemoOptions) -> Result<String, DemoError> {
    let out = &o.out;
    prepare_folder(out)?;
    let say = |m: String| eprintln!("demo: {m}");
    let mut clock = Clock::new();

    // The shipped corpus and variants, so the demo needs nothing but the binary.
    let dialogues = out.join("dialogues.jsonl");
    write_atomic(&dialogues, SAMPLE.as_bytes())?;
    let variants_dir = out.join("variants");
    for (name, text) in VARIANTS {
        write_atomic(&variants_dir.join(format!("{name}.toml")), text.as_bytes())?;
    }

    let texts: Vec<String> = SAMPLE
        .lines()
        .filter_map(|l| serde_json::from_str::<crate::corpus::Dialogue>(l).ok())
        .flat_map(|d| d.turns.into_iter().map(|t| t.text))
        .collect();
    let tokenizer = train_small(&texts, VOCAB)?;
    let base = out.join("base-model");
    let tok_path = base.join("tokenizer.json");
    std::fs::create_dir_all(&base).map_err(|e| crate::fsutil::FileError::new(&base, e))?;
    tokenizer
        .save(&tok_path, false)
        .map_err(|e| dataset::DatasetError::tokenizer(&tok_path, e))?;
    say(format!(
        "trained a {}-token byte-level BPE tokenizer on the sample dialogues",
        tokenizer.get_vocab_size(true)
    ));

    let prepared = dataset::prepare(Inputs {
        dialogues: dialogues.clone(),
        tokenizer: tok_path.display().to_string(),
        variants_dir: variants_dir.clone(),
        selection: Selection::All,
        seed: dataset::DEFAULT_SEED,
        skip_bad: false,
        include_unjudged: false,
    })?;
    println!("{}", dataset::markdown_table(&prepared.stats()));
    let reports = dataset::build(
        &prepared,
        &BuildOptions {
            out: out.clone(),
            max_len: None,
            overflow: Overflow::Drop,
        },
    )?;
    say(format!(
        "built the nine variants' train/val data ({} variants)",
        reports.len()
    ));

    // A tiny Gemma-2 whose context holds the longest held-out dialogue.
    let longest = longest_example(out, &reports)?;
    let mut cfg = ModelConfig::preset("tiny").expect("tiny preset");
    cfg.vocab_size = tokenizer.get_vocab_size(true).max(VOCAB);
    cfg.max_position_embeddings = longest.next_power_of_two().max(512);
    cfg.sliding_window = Some(128);
    let model = CausalLm::random_with_embedding_std(&cfg, 7, 0.3, DType::F32, &Device::Cpu)?;
    export(&model, None, &base, DType::F32, usize::MAX)?;
    say(format!(
        "wrote a random tiny Gemma-2 ({}) to {}",
        cfg.summary(),
        base.display()
    ));
    clock.lap("data");

    // A random model scores worse than a uniform guess, so LoRA on it cannot show learning:
    // first teach the base the language (full-parameter training) on text that is not
    // Socrates, so that what the adapters add afterwards is Socrates' replies.
    let pretrained = pretrain(o, &base, &tokenizer, cfg.max_position_embeddings)?;
    let uniform = (cfg.vocab_size as f64).ln();
    let secs = clock.lap("pre-training");
    say(format!(
        "pre-trained the base on the personas, questions and user turns in {secs:.0} s: held-out \
         loss {:.3} (uniform guess: ln {} = {uniform:.3}) → {}",
        pretrained.best_val_loss,
        cfg.vocab_size,
        base.join(PRETRAIN).join("best").display()
    ));
    let base = base.join(PRETRAIN).join("best");

    lora_runs(o, &base, &reports, cfg.max_position_embeddings)?;
    let secs = clock.lap("nine LoRA runs");
    say(format!("trained the nine variants in {secs:.0} s"));
    let scores = score_base(out, &base)?;
    clock.lap("scoring the base");

    let (best, best_loss, beating) = best_run(out, &scores)?;
    let base_loss = scores.common_val_loss[&best];

    let report = evaluate(o, &best)?;
    let md = crate::report::compare(out)?;
    let secs = clock.lap("eval");
    say(format!(
        "evaluated the runs and the base model in {secs:.0} s"
    ));

    // The demo ends by talking: the best run and the base model answer the same two lines.
    let exchanges = talk::talk(out, &best, &report, DEMO_NEW_TOKENS)?;
    let talk_md = talk::markdown(&exchanges);
    write_atomic(&out.join(EXCHANGES_FILE), talk_md.as_bytes())?;
    clock.lap("exchanges");
    let total: f64 = clock.seconds.iter().map(|p| p.1).sum();
    say(format!(
        "took {total:.0} s: {}",
        clock
            .seconds
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    write_json(
        &out.join(FIGURES_FILE),
        &Figures {
            uniform_loss: uniform,
            base_heldout_loss: pretrained.best_val_loss,
            best,
            best_common_val_loss: best_loss,
            base_common_val_loss: base_loss,
            runs_beating_base: beating,
            exchanges,
            seconds: clock.seconds,
        },
    )?;
    Ok(format!(
        "{md}\n{}\n{talk_md}",
        crate::eval::report::markdown(&report)
    ))
}

/// The run with the lowest common val loss (what `compare` names best), that loss, and how
/// many runs beat the base model on their own held-out text.
fn best_run(
    out: &Path,
    scores: &crate::report::compare::BaseScores,
) -> Result<(String, f64, usize), DemoError> {
    let runs = crate::report::compare::collect(out)?;
    let (best, _) = crate::report::compare::best(&runs)
        .ok_or_else(|| DemoError::Refused("no run finished".into()))?;
    let Some(loss) = best.summary.as_ref().and_then(|s| s.common_val_loss) else {
        return Err(DemoError::Refused(format!(
            "{}: no common val loss",
            best.name
        )));
    };
    let beating = runs
        .iter()
        .filter(|r| {
            let run = r.summary.as_ref().and_then(|s| s.common_val_loss);
            matches!((run, scores.common_val_loss.get(&r.name)), (Some(x), Some(b)) if x < *b)
        })
        .count();
    Ok((best.name.clone(), loss, beating))
}

/// What the runs say, without a judge (the demo needs no API key): the same held-out prompts
/// for every run and the base model. The base model is prompted like the best run, so that its
/// row, its common val loss and the exchanges all speak of the same prompts.
fn evaluate(o: &DemoOptions, best: &str) -> Result<crate::eval::EvalReport, DemoError> {
    let out = &o.out;
    let best_format = crate::chat::RunInfo::find(&crate::rundir::RunDir::of(out, best).best())?
        .map(|i| i.variant)
        .map(|v| crate::chat::PromptFormat::from_variant(&v))
        .unwrap_or_default();
    let mut eval_cfg = EvalConfig::parse(EVAL_CONFIG, Path::new("configs/eval.toml"))?;
    eval_cfg.prompts = o.prompts;
    eval_cfg.sampling.max_new_tokens = Some(DEMO_NEW_TOKENS);
    eval_cfg.base = BaseFormat {
        window: best_format.pairs,
        prefix: best_format.prefix,
    };
    Ok(crate::eval::run(&EvalOptions {
        runs: out.clone(),
        variants: Vec::new(),
        base: true,
        config: eval_cfg,
        judge: None,
        prompts_dir: PathBuf::new(),
        pairwise: false,
        dialogues: None,
        model: ModelSpec {
            device: "cpu".into(),
            dtype: "f32".into(),
            ..Default::default()
        },
        stop: o.interrupt.clone().unwrap_or_default(),
    })?)
}

/// The nine LoRA runs on the pre-trained base, each `o.steps` steps but at most one pass over
/// its examples.
fn lora_runs(
    o: &DemoOptions,
    base: &Path,
    reports: &[dataset::BuildReport],
    max_len: usize,
) -> Result<(), DemoError> {
    // One pass at most over a variant's examples: the variants that keep one or two pairs of
    // each dialogue have 17, and more passes over those overfit the first turns until the
    // whole-dialogue (common) loss rises above the base's (40 steps, about nine passes:
    // model4 8.23 against the base's 6.10).
    let micro_batch = 4;
    for r in reports {
        let steps = o.steps.min(r.train.div_ceil(micro_batch)).max(1);
        let config = TrainConfig {
            model: base.display().to_string(),
            device: "cpu".into(),
            dtype: "f32".into(),
            lora_r: 8,
            lora_alpha: 16.0,
            lora_dropout: 0.0,
            max_steps: Some(steps),
            micro_batch,
            grad_accum: 1,
            max_seq_len: max_len,
            learning_rate: 1e-2,
            warmup_ratio: 0.0,
            // Four evaluations a run, at least two steps apart: each scores the whole val set.
            eval_every: (steps / 4).max(2),
            save_every: (steps / 2).max(1),
            keep_checkpoints: 1,
            ..TrainConfig::default()
        };
        sweep(&SweepSpec {
            variants: vec![r.variant.clone()],
            runs: o.out.clone(),
            config,
            data: None,
            gpus: Vec::new(),
            progress: o.progress,
            interrupt: o.interrupt.clone(),
        })?;
    }
    Ok(())
}

/// Writes `runs/base.json`: the base model's common val loss on each variant's held-out text
/// (the `model score` code path), for the comparison's base row.
fn score_base(out: &Path, base: &Path) -> Result<crate::report::compare::BaseScores, DemoError> {
    use crate::report::compare::{BaseScores, BASE_FILE};
    let model = crate::model::load(
        &crate::model::Source::Local(base.to_path_buf()),
        DType::F32,
        &Device::Cpu,
    )?;
    let mut scores = BaseScores {
        model: base.display().to_string(),
        common_val_loss: Default::default(),
    };
    // Variants sharing a prompt format share their held-out text: score each text once.
    let mut seen: std::collections::HashMap<Vec<u8>, f64> = Default::default();
    for (name, _) in VARIANTS {
        let common = crate::rundir::RunDir::of(out, name).data().common();
        let bytes =
            std::fs::read(&common).map_err(|e| crate::fsutil::FileError::new(&common, e))?;
        let loss = match seen.get(&bytes) {
            Some(l) => *l,
            None => {
                let l = crate::train::score::score_file(&model, &common, 1, &Device::Cpu)?.loss;
                seen.insert(bytes, l);
                l
            }
        };
        scores.common_val_loss.insert(name.to_string(), loss);
    }
    write_json(&out.join(BASE_FILE), &scores)?;
    Ok(scores)
}

/// Where, under the base model's folder, the pre-training run goes (out of `compare`'s sight).
const PRETRAIN: &str = "pretrain";

/// Text that is not Socrates: the personas' names and descriptions, the opening questions and
/// the user side of the sample dialogues. Every tenth text is held out.
fn pretraining_texts() -> Vec<String> {
    let values = |text: &str| -> Vec<serde_json::Value> {
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    let mut texts = Vec::new();
    for p in values(PERSONAS) {
        for key in ["name", "description"] {
            if let Some(s) = p[key].as_str() {
                texts.push(s.to_string());
            }
        }
    }
    for q in values(QUESTIONS) {
        if let Some(s) = q["text"].as_str() {
            texts.push(s.to_string());
        }
    }
    for l in SAMPLE.lines() {
        if let Ok(d) = serde_json::from_str::<crate::corpus::Dialogue>(l) {
            texts.extend(
                d.turns
                    .into_iter()
                    .filter(|t| t.role == crate::corpus::Role::User)
                    .map(|t| t.text),
            );
        }
    }
    texts
}

/// Pre-trains the random base in `base` with `train --full` on [`pretraining_texts`]; the
/// result is `base/pretrain/best` (a whole model, tokenizer included).
fn pretrain(
    o: &DemoOptions,
    base: &Path,
    tokenizer: &tokenizers::Tokenizer,
    max_len: usize,
) -> Result<crate::train::trainer::Summary, DemoError> {
    use crate::train::data::Example;
    let data = crate::rundir::DataDir::new(base.join("pretrain-data"));
    let (mut train, mut val) = (String::new(), String::new());
    for (i, text) in pretraining_texts().iter().enumerate() {
        let enc = tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| DemoError::Refused(format!("tokenizing the pre-training text: {e}")))?;
        let ids: Vec<u32> = enc.get_ids().iter().copied().take(max_len).collect();
        // Every token but the first (BOS) is predicted.
        let labels = ids
            .iter()
            .enumerate()
            .map(|(k, &t)| if k == 0 { -100 } else { t as i64 })
            .collect();
        let ex = Example {
            id: format!("text-{i}"),
            dialogue: format!("text-{i}"),
            input_ids: ids,
            labels,
        };
        let line = serde_json::to_string(&ex).expect("example serializes") + "\n";
        if i % 10 == 9 {
            val.push_str(&line);
        } else {
            train.push_str(&line);
        }
    }
    write_atomic(&data.train(), train.as_bytes())?;
    write_atomic(&data.val(), val.as_bytes())?;
    let config = TrainConfig {
        model: base.display().to_string(),
        device: "cpu".into(),
        dtype: "f32".into(),
        full: true,
        max_steps: Some(o.pretrain_steps),
        micro_batch: 8,
        grad_accum: 1,
        max_seq_len: max_len,
        learning_rate: 3e-3,
        warmup_ratio: 0.05,
        weight_decay: 0.01,
        eval_every: (o.pretrain_steps / 4).max(1),
        save_every: o.pretrain_steps.max(1),
        keep_checkpoints: 1,
        ..TrainConfig::default()
    };
    Ok(crate::train::trainer::train(
        crate::train::trainer::RunSpec {
            name: "pretrain".into(),
            config,
            data_dir: data,
            out_dir: crate::rundir::RunDir::new(base.join(PRETRAIN)),
            resume: false,
            fresh: false,
            progress: o.progress,
            interrupt: o.interrupt.clone(),
        },
    )?)
}

/// Creates `out`, or empties it if an earlier demo made it; refuses any other existing folder.
fn prepare_folder(out: &Path) -> Result<(), DemoError> {
    if out.exists() {
        let empty = std::fs::read_dir(out)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty && !out.join(MARKER).exists() {
            return Err(DemoError::Refused(format!(
                "{} exists and was not made by the demo; choose another --out",
                out.display()
            )));
        }
        std::fs::remove_dir_all(out).map_err(|e| crate::fsutil::FileError::new(out, e))?;
    }
    std::fs::create_dir_all(out).map_err(|e| crate::fsutil::FileError::new(out, e))?;
    write_atomic(
        &out.join(MARKER),
        b"made by `socratune demo`; a rerun replaces this folder\n",
    )?;
    Ok(())
}

/// The longest tokenized example any variant wrote (the whole held-out dialogues included).
fn longest_example(out: &Path, reports: &[dataset::BuildReport]) -> Result<usize, DemoError> {
    let mut longest = 0;
    for r in reports {
        let data = crate::rundir::RunDir::of(out, &r.variant).data();
        for p in [data.train(), data.val(), data.common()] {
            let text =
                std::fs::read_to_string(&p).map_err(|e| crate::fsutil::FileError::new(&p, e))?;
            for l in text.lines() {
                let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
                longest = longest.max(v["input_ids"].as_array().map_or(0, Vec::len));
            }
        }
    }
    Ok(longest)
}
