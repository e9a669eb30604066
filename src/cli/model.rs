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

/// Where to run and in which precision.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N, metal or auto (the best available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16, f16 or auto (bf16 on GPUs, f32 on CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// A base model, where it runs, and an optional adapter on top.
#[derive(Debug, Clone, Args)]
pub struct ModelLoadArgs {
    #[command(flatten)]
    pub source: ModelSourceArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A PEFT adapter folder to load on top.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
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
    /// Load the weights (and optionally an adapter) to check that they fit together.
    Check {
        #[command(flatten)]
        load: ModelLoadArgs,
    },
    /// Token-weighted cross-entropy and perplexity on a tokenized file (`train.jsonl` format:
    /// input_ids, labels with -100); no tokenizer needed.
    Score {
        #[command(flatten)]
        load: ModelLoadArgs,
        /// The tokenized examples (e.g. runs/model3/data/val.jsonl).
        #[arg(long)]
        data: std::path::PathBuf,
        /// Examples per forward pass (the result does not depend on it).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Print one JSON object: loss, tokens, examples, perplexity.
        #[arg(long)]
        json: bool,
    },
}
