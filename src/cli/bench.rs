//! `socratune bench …`

use anyhow::Result;
use clap::{Args, Subcommand};
use socratune::chat::bench::GenerateBench;
use socratune::train::bench::BenchOptions;
use socratune::train::bench_data::{DataBenchOptions, LengthProfile};
use std::path::PathBuf;

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
        /// With --data: the longest row of the packed layout (as max_seq_len in training; rows
        /// are also bounded by the token budget).
        #[arg(long, default_value_t = 1024, requires = "data")]
        max_seq_len: usize,
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
                data: Some(data),
                micro_batch,
                micro_batch_tokens,
                max_seq_len,
                grad_accum,
                length_profile,
                seed,
                json,
                ..
            } => {
                let o = DataBenchOptions {
                    data,
                    preset,
                    device,
                    micro_batch,
                    micro_batch_tokens,
                    max_seq_len,
                    grad_accum,
                    steps,
                    warmup,
                    length_profile,
                    seed,
                };
                let r = socratune::train::bench_data::bench_data(&o)?;
                if !json {
                    print_layouts(&r);
                }
                println!("{r}");
            }
            BenchCommand::Train {
                preset,
                steps,
                warmup,
                device,
                batch,
                seq,
                json,
                ..
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

/// `bench train --data`: one line a batching layout on stderr.
fn print_layouts(r: &serde_json::Value) {
    eprintln!(
        "{} on {}: {} examples, mean {} tokens, longest {}",
        r["preset"].as_str().unwrap_or_default(),
        r["device"].as_str().unwrap_or_default(),
        r["examples"],
        r["mean_tokens"],
        r["max_tokens"]
    );
    eprintln!("layout           padding  steps/epoch  real tokens/s  epoch s  vs padded");
    for (name, ..) in socratune::train::bench_data::LAYOUTS {
        let l = &r["layouts"][name];
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        eprintln!(
            "{name:<15}  {:>6.1}%  {:>11}  {:>13.0}  {:>7.1}  {:>8.2}x",
            f("padding_share") * 100.0,
            f("steps_per_epoch"),
            f("real_tokens_per_s"),
            f("epoch_s"),
            f("speedup_vs_padded")
        );
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
