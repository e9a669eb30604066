//! `socratune train`: options from `configs/train.toml`, overridden by flags.

use crate::train::batching::Batching;
use crate::train::{Schedule, TrainConfig};
use clap::Args;
use std::path::PathBuf;

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
            grad_accum
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
