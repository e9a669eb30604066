//! Command-line definitions (clap). Only argument shapes live here; `main.rs` dispatches each
//! command to the library.

pub mod model;
pub mod synth;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "socratune", version, about = "Fine-tune Gemma-2 to speak as a persona, end to end, on candle")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect a base model: where it comes from, its shape and parameter counts.
    Model(model::ModelArgs),
    /// Make the training dialogues: AI×AI generation, LLM judging, human review, filtering.
    Synth(synth::SynthArgs),
}
