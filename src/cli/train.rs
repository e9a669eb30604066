//! `socratune train`: options from `configs/train.toml`, overridden by flags.

use super::{exit_if_interrupted, interrupt_flag};
use anyhow::Result;
use clap::Args;
use socratune::rundir::{DataDir, RunDir};
use socratune::train::batching::Batching;
use socratune::train::{RunSpec, Schedule, TrainConfig};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// The variant to train: data from `<runs>/<variant>/data`, outputs in `<runs>/<variant>`.
    #[arg(long, required_unless_present = "data")]
    pub variant: Option<String>,
    /// A data folder (train.jsonl, val.jsonl) instead of a variant's.
    #[arg(long, conflicts_with = "variant")]
    pub data: Option<PathBuf>,
    /// Where the run's outputs go (default: `<runs>/<variant>`, or the data folder's parent).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The folder of runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Training options (TOML); flags override them.
    #[arg(long, default_value = "configs/train.toml")]
    pub config: PathBuf,
    /// Continue from the newest valid checkpoint.
    #[arg(long, conflicts_with = "fresh")]
    pub resume: bool,
    /// Discard an earlier run's outputs (checkpoints, adapters, metrics) first.
    #[arg(long)]
    pub fresh: bool,
    #[command(flatten)]
    pub overrides: TrainOverrides,
}

/// Flags that override `configs/train.toml`.
#[derive(Debug, Clone, Default, Args)]
pub struct TrainOverrides {
    /// Base model: Hub repo id or local folder.
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long)]
    pub device: Option<String>,
    /// f32, bf16, f16 or auto.
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long)]
    pub lora_r: Option<usize>,
    #[arg(long)]
    pub lora_alpha: Option<f64>,
    #[arg(long)]
    pub lora_dropout: Option<f32>,
    /// Comma-separated: q,k,v,o,gate,up,down (or all).
    #[arg(long)]
    pub lora_targets: Option<String>,
    #[arg(long)]
    pub use_rslora: Option<bool>,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub max_steps: Option<usize>,
    #[arg(long)]
    pub micro_batch: Option<usize>,
    #[arg(long)]
    pub grad_accum: Option<usize>,
    /// random, or grouped (similar lengths share a micro-batch).
    #[arg(long, value_enum)]
    pub batching: Option<BatchingArg>,
    /// Fill micro-batches up to this many tokens (rows × longest row) instead of
    /// --micro-batch examples.
    #[arg(long)]
    pub micro_batch_tokens: Option<usize>,
    /// true: several examples a row of --max-seq-len, kept apart (--micro-batch counts rows).
    #[arg(long)]
    pub pack: Option<bool>,
    #[arg(long)]
    pub max_seq_len: Option<usize>,
    #[arg(long)]
    pub eval_batch: Option<usize>,
    #[arg(long = "lr")]
    pub learning_rate: Option<f64>,
    /// constant, linear or cosine.
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleArg>,
    #[arg(long)]
    pub warmup_steps: Option<usize>,
    #[arg(long)]
    pub warmup_ratio: Option<f64>,
    #[arg(long)]
    pub weight_decay: Option<f64>,
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub eval_every: Option<usize>,
    #[arg(long)]
    pub save_every: Option<usize>,
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,
    /// Early-stopping patience in evaluations (0: off).
    #[arg(long)]
    pub patience: Option<usize>,
    /// Full-parameter training: every weight, f32; writes a whole model instead of an adapter.
    #[arg(long)]
    pub full: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum BatchingArg {
    Random,
    Grouped,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ScheduleArg {
    Constant,
    Linear,
    Cosine,
}

impl TrainOverrides {
    /// Applies the flags that were given.
    pub fn apply(&self, c: &mut TrainConfig) {
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = &self.$f { c.$f = v.clone(); } )* };
        }
        set!(
            model,
            device,
            dtype,
            lora_r,
            lora_alpha,
            lora_dropout,
            use_rslora,
            epochs,
            micro_batch,
            grad_accum,
            pack
        );
        set!(
            max_seq_len,
            eval_batch,
            learning_rate,
            warmup_ratio,
            weight_decay,
            max_grad_norm,
            seed
        );
        set!(eval_every, save_every, keep_checkpoints);
        if self.full {
            c.full = true;
        }
        if let Some(v) = &self.revision {
            c.revision = Some(v.clone());
        }
        if let Some(v) = self.max_steps {
            c.max_steps = Some(v);
        }
        if let Some(v) = self.warmup_steps {
            c.warmup_steps = Some(v);
        }
        if let Some(v) = &self.lora_targets {
            c.lora_targets = v.split(',').map(|s| s.trim().to_string()).collect();
        }
        if let Some(s) = self.schedule {
            c.schedule = match s {
                ScheduleArg::Constant => Schedule::Constant,
                ScheduleArg::Linear => Schedule::Linear,
                ScheduleArg::Cosine => Schedule::Cosine,
            };
        }
        if let Some(b) = self.batching {
            c.batching = match b {
                BatchingArg::Random => Batching::Random,
                BatchingArg::Grouped => Batching::Grouped,
            };
        }
        if let Some(v) = self.micro_batch_tokens {
            c.micro_batch_tokens = Some(v);
        }
        if let Some(p) = self.patience {
            c.early_stopping_patience = p;
        }
    }
}

impl TrainArgs {
    pub fn run(self) -> Result<()> {
        let a = self;
        let config = train_config(&a.config, &a.overrides)?;
        let (name, data_dir, out_dir) = match (&a.variant, &a.data) {
            (Some(v), _) => {
                let variant_run = RunDir::of(&a.runs, v);
                let run = a.out.clone().map(RunDir::new);
                (v.clone(), variant_run.data(), run.unwrap_or(variant_run))
            }
            (None, Some(d)) => {
                let parent = d
                    .parent()
                    .filter(|p| !p.as_os_str().is_empty())
                    .unwrap_or(Path::new("."));
                let run = RunDir::new(a.out.clone().unwrap_or_else(|| parent.to_path_buf()));
                let name = run.name().unwrap_or_else(|| "run".into());
                (name, DataDir::new(d), run)
            }
            (None, None) => anyhow::bail!("give --variant NAME or --data DIR"),
        };
        // `--fresh` deletes parts of the run folder, and a run writes adapters into it.
        if Path::new(&config.model).exists() {
            socratune::fsutil::check_apart(
                out_dir.root(),
                &[("base model", Path::new(&config.model))],
            )?;
        }
        let spec = RunSpec {
            name,
            config,
            data_dir,
            out_dir: out_dir.clone(),
            resume: a.resume,
            fresh: a.fresh,
            progress: true,
            interrupt: Some(interrupt_flag()),
        };
        let s = exit_if_interrupted(socratune::train::train(spec))?;
        println!(
            "{}: {} after {} steps; best val loss {:.4} at step {}, final {:.4}; adapters in {} and {}",
            s.variant, s.status, s.steps, s.best_val_loss, s.best_step, s.final_val_loss,
            out_dir.best().display(), out_dir.adapter().display()
        );
        Ok(())
    }
}

/// Reads the training config (defaults when the default file is absent) and applies the flags.
pub fn train_config(path: &Path, overrides: &TrainOverrides) -> Result<TrainConfig> {
    let mut c = if path.exists() || path != Path::new("configs/train.toml") {
        TrainConfig::from_toml_file(path)?
    } else {
        TrainConfig::default()
    };
    overrides.apply(&mut c);
    Ok(c)
}
