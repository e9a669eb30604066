//! Command-line definitions (clap). Only argument shapes live here; `main.rs` dispatches each
//! command to the library.

pub mod bench;
pub mod chat;
pub mod data;
pub mod eval;
pub mod export;
pub mod model;
pub mod sweep;
pub mod synth;
pub mod train;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "socratune",
    version,
    about = "Fine-tune Gemma-2 to speak as a persona, end to end, on candle"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The whole pipeline offline on CPU in a few minutes, from the shipped sample dialogues.
    Demo {
        /// Where the demo writes (replaced on a rerun).
        #[arg(long, default_value = "runs/demo")]
        out: std::path::PathBuf,
        /// Optimizer steps per variant.
        #[arg(long, default_value_t = 40)]
        steps: usize,
    },
    /// Inspect a base model: where it comes from, its shape and parameter counts.
    Model(model::ModelArgs),
    /// Check a dialogue corpus, and build the variants' datasets and token statistics.
    Data(data::DataArgs),
    /// Benchmarks (training throughput against the transformers + PEFT reference).
    Bench(bench::BenchArgs),
    /// Merge an adapter into its base model and write full weights (Hub layout).
    Export(export::ExportArgs),
    /// Compare finished runs: Markdown table, best variant, loss curves (runs/compare.md, runs/loss.svg).
    Compare {
        /// The folder of runs.
        #[arg(default_value = "runs")]
        runs: std::path::PathBuf,
    },
    /// Judge what each finished run says on held-out prompts: scores with intervals beside
    /// validation loss (runs/eval.md, runs/eval.json).
    Eval(eval::EvalArgs),
    /// Train every variant with the same settings and split (skips finished runs, resumes others).
    Sweep(sweep::SweepArgs),
    /// Train one LoRA run on a dataset variant (resumable).
    Train(train::TrainArgs),
    /// Make the training dialogues: AI×AI generation, LLM judging, human review, filtering.
    Synth(synth::SynthArgs),
    /// Talk to the tuned model in the terminal (the persona opens with a fixed question).
    Chat(chat::ChatArgs),
    /// Serve the tuned model over an OpenAI-compatible HTTP API.
    Serve(chat::ServeArgs),
}
