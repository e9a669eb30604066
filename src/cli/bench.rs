//! `socratune bench …`

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// LoRA training throughput on a random model of a preset shape, doing exactly the work of
    /// benches/hf_peft_reference.py; prints one JSON line with the same keys.
    Train {
        /// tiny, small, gemma-2-2b, tiny-gemma3, gemma-3-1b, gemma-3-4b, tiny-qwen3, qwen3-1.7b,
        /// tiny-llama or llama-3.2-1b.
        #[arg(long, default_value = "small")]
        preset: String,
        /// Timed steps.
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Untimed steps first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// cpu, cuda, cuda:N, metal or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// Sequences a step (default: the preset's).
        #[arg(long)]
        batch: Option<usize>,
        /// Tokens a sequence (default: the preset's).
        #[arg(long)]
        seq: Option<usize>,
        /// Print only the JSON line (the default prints it too, after a one-line summary on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Greedy decoding speed with the KV cache on a random model of a preset shape: the
    /// prompt's forward pass and the decoding timed apart; prints one JSON line.
    Generate {
        /// tiny, small, gemma-2-2b, tiny-gemma3, gemma-3-1b, gemma-3-4b, tiny-qwen3, qwen3-1.7b,
        /// tiny-llama or llama-3.2-1b.
        #[arg(long, default_value = "small")]
        preset: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 128)]
        tokens: usize,
        /// Tokens in the (random) prompt.
        #[arg(long, default_value_t = 128)]
        prompt_len: usize,
        /// cpu, cuda, cuda:N, metal or auto.
        #[arg(long, default_value = "auto")]
        device: String,
        /// f32, bf16, f16 or auto (bf16 on GPUs, f32 on CPU).
        #[arg(long, default_value = "auto")]
        dtype: String,
        /// Print only the JSON line (the default prints it too, after a one-line summary on stderr).
        #[arg(long)]
        json: bool,
    },
}
