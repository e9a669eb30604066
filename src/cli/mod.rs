//! The command line (clap): each command's arguments, in its own module, with a `run` that
//! turns them into the library's options, calls it and prints the outcome. `main.rs` only
//! parses and dispatches.

pub mod bench;
pub mod chat;
pub mod compare;
pub mod data;
pub mod demo;
pub mod eval;
pub mod export;
pub mod model;
pub mod sweep;
pub mod synth;
pub mod train;

use clap::{Parser, Subcommand};
use socratune::train::TrainError;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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
    Demo(demo::DemoArgs),
    /// Inspect a base model: where it comes from, its shape and parameter counts.
    Model(model::ModelArgs),
    /// Check a dialogue corpus, and build the variants' datasets and token statistics.
    Data(data::DataArgs),
    /// Benchmarks (training throughput against the transformers + PEFT reference).
    Bench(bench::BenchArgs),
    /// Merge an adapter into its base model and write full weights (Hub layout).
    Export(export::ExportArgs),
    /// Compare finished runs: Markdown table, best variant, loss curves (runs/compare.md, runs/loss.svg).
    Compare(compare::CompareArgs),
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

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Demo(a) => a.run(),
            Command::Model(a) => a.run(),
            Command::Data(a) => a.run(),
            Command::Bench(a) => a.run(),
            Command::Export(a) => a.run(),
            Command::Compare(a) => a.run(),
            Command::Eval(a) => a.run(),
            Command::Sweep(a) => a.run(),
            Command::Train(a) => a.run(),
            Command::Synth(a) => a.run(),
            Command::Chat(a) => a.run(),
            Command::Serve(a) => a.run(),
        }
    }
}

/// Ctrl-C asks the loop to checkpoint and stop; a second one exits at once.
pub fn interrupt_flag() -> Arc<AtomicBool> {
    stop_flag("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)")
}

/// A flag set by the first Ctrl-C (announced with `message`); the second one exits at once.
pub fn stop_flag(message: &'static str) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("{message}");
    });
    flag
}

/// A run stopped by Ctrl-C has saved its checkpoint: say so and exit with 130, as shells expect.
pub fn exit_if_interrupted<T>(r: Result<T, TrainError>) -> anyhow::Result<T> {
    match r {
        Err(e @ TrainError::Interrupted { .. }) => {
            eprintln!("{e}");
            std::process::exit(130);
        }
        other => Ok(other?),
    }
}
