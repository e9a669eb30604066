//! `socratune model …`

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// Where the base model comes from (shared by every command that loads one).
#[derive(Debug, Clone, Args)]
pub struct ModelSourceArgs {
    /// Hub repo id or local folder (config.json + safetensors).
    #[arg(long, default_value = "google/gemma-2-2b-it")]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the resolved config of a base model (downloads only config.json).
    Info {
        #[command(flatten)]
        source: ModelSourceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}
