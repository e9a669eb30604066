//! `socratune export`

use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The Hub's layout: config, sharded safetensors, tokenizer files (a folder).
    Safetensors,
    /// One GGUF file for llama.cpp, Ollama and LM Studio, tokenizer and chat template inside.
    Gguf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The PEFT adapter folder to merge (e.g. runs/model3/best).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output: a folder for safetensors, a file (e.g. exports/model3.gguf) for GGUF.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
    /// Base model (default: the adapter's base_model_name_or_path).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype of a safetensors export: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Largest safetensors shard, in bytes (suffixes KB, MB, GB allowed).
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// GGUF type: f16, bf16, q8_0, q4_0 or q4_k_m (llama.cpp's mixtures).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// With GGUF, also write an Ollama Modelfile beside the file.
    #[arg(long)]
    pub ollama: bool,
    /// Chat defaults (opening line, sampling) for the Modelfile.
    #[arg(long, default_value = "configs/chat.toml")]
    pub chat_config: PathBuf,
    /// The Modelfile's opening line (default: the chat config's `opening`).
    #[arg(long)]
    pub opening: Option<String>,
}
