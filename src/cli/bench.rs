//! `socratune bench …`

use anyhow::Result;
use clap::{Args, Subcommand};
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
    Train(TrainBenchArgs),
    /// Greedy decoding speed with the KV cache on a random model of a preset shape: the
    /// prompt's forward pass and the decoding timed apart; prints one JSON line.
    Generate(GenerateBenchArgs),
}

#[derive(Debug, Args)]
pub struct TrainBenchArgs {
    /// tiny, small, gemma-2-2b, tiny-gemma3, gemma-3-1b, gemma-3-4b, tiny-qwen3, qwen3-1.7b,
    /// tiny-llama or llama-3.2-1b.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Timed steps.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// Sequences a step (default: the preset's).
    #[arg(long)]
    pub batch: Option<usize>,
    /// Tokens a sequence (default: the preset's).
    #[arg(long)]
    pub seq: Option<usize>,
    /// Measure on the lengths of a tokenized examples file (runs/<variant>/data/train.jsonl)
    /// instead: padding share, real tokens/s and steps per epoch of each batching layout.
    #[arg(long, conflicts_with_all = ["batch", "seq"])]
    pub data: Option<PathBuf>,
    /// With --data: examples a micro-batch of the padded and grouped layouts.
    #[arg(long, default_value_t = 4, requires = "data")]
    pub micro_batch: usize,
    /// With --data: the token budget of the budget layouts (default: --micro-batch × the
    /// longest example).
    #[arg(long, requires = "data")]
    pub micro_batch_tokens: Option<usize>,
    /// With --data: the longest row of the packed layout (as max_seq_len in training; rows
    /// are also bounded by the token budget). Default: the token budget, so that packed
    /// micro-batches fill the same budget as the others, one row each.
    #[arg(long, requires = "data")]
    pub max_seq_len: Option<usize>,
    /// With --data: micro-batches an optimizer step (for steps per epoch).
    #[arg(long, default_value_t = 4, requires = "data")]
    pub grad_accum: usize,
    /// With --data: only these layouts, comma-separated (padded, grouped, budget_padded,
    /// budget_grouped, packed; default: all).
    #[arg(long, value_delimiter = ',', requires = "data")]
    pub layouts: Vec<String>,
    /// With --data: first rebuild the examples with a triangular length profile MIN,MODE,MAX
    /// by concatenating them (60,203,535: the seed's model1, mean 266, longest 535).
    #[arg(long, requires = "data")]
    pub length_profile: Option<LengthProfile>,
    /// With --data: the seed of the layouts and of the profile corpus.
    #[arg(long, default_value_t = 42, requires = "data")]
    pub seed: u64,
    /// LoRA dropout of the adapters (the reference runs none; training's default is 0.05,
    /// which costs a mask a projection).
    #[arg(long, default_value_t = 0.0)]
    pub lora_dropout: f32,
    /// Print only the JSON line (the default prints it too, after a one-line summary on stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct GenerateBenchArgs {
    /// tiny, small, gemma-2-2b, tiny-gemma3, gemma-3-1b, gemma-3-4b, tiny-qwen3, qwen3-1.7b,
    /// tiny-llama or llama-3.2-1b.
    #[arg(long, default_value = "small")]
    pub preset: String,
    /// Tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub tokens: usize,
    /// Tokens in the (random) prompt.
    #[arg(long, default_value_t = 128)]
    pub prompt_len: usize,
    /// cpu, cuda, cuda:N, metal or auto.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16, f16 or auto (bf16 on GPUs, f32 on CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// Also decode this many prompts together (as `eval` does), right after the single
    /// one, and compare the tokens/s of all rows with it.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Print only the JSON line (the default prints it too, after a one-line summary on stderr).
    #[arg(long)]
    pub json: bool,
}

impl BenchArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
            BenchCommand::Train(a) => a.run(),
            BenchCommand::Generate(a) => a.run(),
        }
    }
}

impl TrainBenchArgs {
    fn run(self) -> Result<()> {
        let Some(data) = self.data else {
            let r = socratune::train::bench::bench_train(&BenchOptions {
                preset: self.preset,
                steps: self.steps,
                warmup: self.warmup,
                device: self.device,
                batch: self.batch,
                seq: self.seq,
                lora_dropout: self.lora_dropout,
            })?;
            let line = format!(
                "{} tokens/s, {} s/step, peak {:.1} MiB",
                r["tokens_per_s"],
                r["s_per_step"],
                r["peak_mem_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
            );
            print_bench(&r, &line, self.json);
            return Ok(());
        };
        let r = socratune::train::bench_data::bench_data(&DataBenchOptions {
            data,
            preset: self.preset,
            device: self.device,
            micro_batch: self.micro_batch,
            micro_batch_tokens: self.micro_batch_tokens,
            max_seq_len: self.max_seq_len,
            grad_accum: self.grad_accum,
            steps: self.steps,
            warmup: self.warmup,
            layouts: self.layouts,
            length_profile: self.length_profile,
            seed: self.seed,
            lora_dropout: self.lora_dropout,
        })?;
        if !self.json {
            print_layouts(&r);
        }
        println!("{r}");
        Ok(())
    }
}

impl GenerateBenchArgs {
    fn run(self) -> Result<()> {
        let r = socratune::chat::bench::bench_generate(&socratune::chat::bench::GenerateBench {
            preset: self.preset,
            tokens: self.tokens,
            prompt_len: self.prompt_len,
            device: self.device,
            dtype: self.dtype,
            batch: self.batch,
        })?;
        let mut line = format!(
            "prefill {} tokens/s, decode {} tokens/s ({} ms/token)",
            r["prefill_tokens_per_s"], r["decode_tokens_per_s"], r["ms_per_token"]
        );
        if self.batch > 1 {
            line += &format!(
                "; batch {}: {} tokens/s of all rows vs {} for one prompt ({}x)",
                self.batch, r["batch_tokens_per_s"], r["single_tokens_per_s"], r["batch_speedup"]
            );
        }
        print_bench(&r, &line, self.json);
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
    eprintln!(
        "layout           padding  steps/epoch  real tokens/s  epoch s  vs padded  vs budget_padded"
    );
    for (name, ..) in socratune::train::bench_data::LAYOUTS {
        let l = &r["layouts"][name];
        if l.is_null() {
            continue;
        }
        let f = |k: &str| l[k].as_f64().unwrap_or(f64::NAN);
        // A ratio to a layout that was not measured (`--layouts`) is shown as "-".
        let ratio = |k: &str| match l[k].as_f64() {
            Some(x) => format!("{x:.2}x"),
            None => "-".into(),
        };
        eprintln!(
            "{name:<15}  {:>6.1}%  {:>11}  {:>13.0}  {:>7.1}  {:>9}  {:>16}",
            f("padding_share") * 100.0,
            f("steps_per_epoch"),
            f("real_tokens_per_s"),
            f("epoch_s"),
            ratio("speedup_vs_padded"),
            ratio("speedup_vs_budget_padded")
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
