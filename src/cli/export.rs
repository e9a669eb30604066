//! `socratune export`

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The PEFT adapter folder to merge (e.g. runs/model3/best).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Base model (default: the adapter's base_model_name_or_path).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype of the export: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Largest shard, in bytes (suffixes KB, MB, GB allowed).
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
}
