//! `socratune sweep`

use super::train::TrainOverrides;
use clap::{Args, ValueEnum};
use socratune::dataset::{Overflow, DEFAULT_SEED};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Variants to train (default: every file in --variants-dir).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    #[arg(long, default_value = "configs/variants")]
    pub variants_dir: PathBuf,
    /// The folder of runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Training options (TOML); flags override them.
    #[arg(long, default_value = "configs/train.toml")]
    pub config: PathBuf,
    /// Train one variant per GPU at the same time (e.g. 0,1,2,3).
    #[arg(long, value_delimiter = ',')]
    pub gpus: Vec<usize>,
    /// Write a job script instead of training.
    #[arg(long, value_enum)]
    pub emit: Option<Emit>,
    /// Build missing variant data from this dialogue file.
    #[arg(long)]
    pub dialogues: Option<PathBuf>,
    /// Tokenizer for building data: tokenizer.json, a folder, or a Hub repo id.
    #[arg(long, default_value = "google/gemma-2-2b-it")]
    pub tokenizer: String,
    /// Seed of the 80/20 split when building data.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub split_seed: u64,
    #[arg(long)]
    pub skip_bad: bool,
    #[arg(long)]
    pub include_unjudged: bool,
    #[arg(long)]
    pub max_len: Option<usize>,
    #[arg(long, default_value_t = Overflow::Drop)]
    pub overflow: Overflow,
    #[command(flatten)]
    pub overrides: TrainOverrides,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Emit {
    /// A Slurm job-array script (runs/sweep.slurm), one task per variant.
    Slurm,
}
