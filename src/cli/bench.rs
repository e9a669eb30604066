//! `socratune bench …`

use crate::train::bench_data::LengthProfile;
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: BenchCommand,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// LoRA training throughput on a random Gemma-2 of a preset shape, doing exactly the work of
    /// benches/hf_peft_reference.py; prints one JSON line with the same keys.
    Train {
        /// tiny, small or gemma-2-2b.
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
        /// Measure on the lengths of a tokenized examples file (runs/<variant>/data/train.jsonl)
        /// instead: padding share, real tokens/s and steps per epoch of each batching layout.
        #[arg(long, conflicts_with_all = ["batch", "seq"])]
        data: Option<PathBuf>,
        /// With --data: examples a micro-batch of the padded and grouped layouts.
        #[arg(long, default_value_t = 4, requires = "data")]
        micro_batch: usize,
        /// With --data: the token budget of the budget layouts (default: --micro-batch × the
        /// longest example).
        #[arg(long, requires = "data")]
        micro_batch_tokens: Option<usize>,
        /// With --data: micro-batches an optimizer step (for steps per epoch).
        #[arg(long, default_value_t = 4, requires = "data")]
        grad_accum: usize,
        /// With --data: first rebuild the examples with a triangular length profile MIN,MODE,MAX
        /// by concatenating them (60,203,535: the seed's model1, mean 266, longest 535).
        #[arg(long, requires = "data")]
        length_profile: Option<LengthProfile>,
        /// With --data: the seed of the layouts and of the profile corpus.
        #[arg(long, default_value_t = 42, requires = "data")]
        seed: u64,
        /// Print only the JSON line (the default prints it too, after a one-line summary on stderr).
        #[arg(long)]
        json: bool,
    },
    /// Greedy decoding speed with the KV cache on a random Gemma-2 of a preset shape: the
    /// prompt's forward pass and the decoding timed apart; prints one JSON line.
    Generate {
        /// tiny, small or gemma-2-2b.
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
