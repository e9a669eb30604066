//! `socratune sweep`

use super::train::TrainOverrides;
use super::{exit_if_interrupted, interrupt_flag, train::train_config};
use anyhow::Result;
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

impl SweepArgs {
    pub fn run(self) -> Result<()> {
        let a = self;
        use socratune::train::sweep::{self, DataSource, Outcome, SweepSpec};
        let config = train_config(&a.config, &a.overrides)?;
        let variants = if a.variants.is_empty() {
            sweep::variant_names(&a.variants_dir)?
        } else {
            a.variants.clone()
        };
        let spec = SweepSpec {
            variants,
            runs: a.runs.clone(),
            config,
            data: a.dialogues.clone().map(|dialogues| DataSource {
                dialogues,
                tokenizer: a.tokenizer.clone(),
                variants_dir: a.variants_dir.clone(),
                seed: a.split_seed,
                skip_bad: a.skip_bad,
                include_unjudged: a.include_unjudged,
                max_len: a.max_len,
                overflow: a.overflow,
            }),
            gpus: a.gpus.clone(),
            progress: true,
            interrupt: Some(interrupt_flag()),
        };
        if let Some(Emit::Slurm) = a.emit {
            sweep::ensure_data(&spec)?;
            let config = sweep::write_config(&spec)?;
            let exe = std::env::current_exe()?;
            let path = a.runs.join("sweep.slurm");
            socratune::fsutil::write_atomic(
                &path,
                sweep::slurm_script(&spec, &exe, &config).as_bytes(),
            )?;
            println!(
                "wrote {} ({} tasks); submit with: sbatch {}",
                path.display(),
                spec.variants.len(),
                path.display()
            );
            return Ok(());
        }
        let outcomes = exit_if_interrupted(sweep::sweep(&spec))?;
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|(v, o)| match o {
                Outcome::Failed(m) => Some(format!("{v}: {m}")),
                _ => None,
            })
            .collect();
        println!("{}", socratune::report::compare(&a.runs)?);
        if !failed.is_empty() {
            anyhow::bail!("{} run(s) failed: {}", failed.len(), failed.join("; "));
        }
        Ok(())
    }
}
