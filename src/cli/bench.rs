//! `socratune bench …`

use anyhow::Result;
use clap::{Args, Subcommand};
use socratune::chat::bench::GenerateBench;
use socratune::train::bench::BenchOptions;

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

impl BenchArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            BenchCommand::Train {
                preset,
                steps,
                warmup,
                device,
                batch,
                seq,
                json,
            } => {
                let o = BenchOptions {
                    preset,
                    steps,
                    warmup,
                    device,
                    batch,
                    seq,
                };
                let r = socratune::train::bench::bench_train(&o)?;
                let line = format!(
                    "{} tokens/s, {} s/step, peak {:.1} MiB",
                    r["tokens_per_s"],
                    r["s_per_step"],
                    r["peak_mem_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
                );
                print_bench(&r, &line, json);
            }
            BenchCommand::Generate {
                preset,
                tokens,
                prompt_len,
                device,
                dtype,
                json,
            } => {
                let o = GenerateBench {
                    preset,
                    tokens,
                    prompt_len,
                    device,
                    dtype,
                };
                let r = socratune::chat::bench::bench_generate(&o)?;
                let line = format!(
                    "prefill {} tokens/s, decode {} tokens/s ({} ms/token)",
                    r["prefill_tokens_per_s"], r["decode_tokens_per_s"], r["ms_per_token"]
                );
                print_bench(&r, &line, json);
            }
        }
        Ok(())
    }
}

/// A benchmark's JSON line on stdout, after a readable summary on stderr unless `--json`.
fn print_bench(r: &serde_json::Value, summary: &str, json: bool) {
    if !json {
        let name = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        eprintln!("{} on {}: {summary}", name("preset"), name("device"));
    }
    println!("{r}");
}
