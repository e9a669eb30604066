//! `socratune synth …`: AI×AI dialogue generation, LLM judging, human review, filtering.
//!
//! Endpoints, models and sampling live in the config file (`--config`, one section per role);
//! files, counts and switches are flags.

use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct SynthArgs {
    #[command(subcommand)]
    pub command: SynthCommand,
}

#[derive(Debug, Subcommand)]
pub enum SynthCommand {
    /// Generate AI×AI dialogues over personas × questions × user temperatures (resumable).
    Generate(GenerateArgs),
    /// Score each dialogue with an LLM judge: comment, socratic 0–4, coherence 0–4 (resumable).
    Judge(JudgeArgs),
    /// Review dialogues scored ≤ 2 (and an audit sample) in the terminal; write the reviewed file.
    Review(ReviewArgs),
    /// Keep the dialogues that pass; report drops, near-duplicates and coverage.
    Filter(FilterArgs),
}

/// Options shared by the stages that call a model.
#[derive(Debug, Clone, Args)]
pub struct CallArgs {
    /// Synth config (TOML): [socrates], [user], [judge] endpoints, [defaults], [limits], [transcript].
    #[arg(long, default_value = "configs/synth.toml")]
    pub config: PathBuf,
    /// Folder of the prompt templates (socrates.txt, user.txt, judge.txt).
    #[arg(long, default_value = "data/prompts")]
    pub prompts: PathBuf,
    /// Worker threads and requests in flight (overrides [limits] concurrency).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Requests started per minute over all roles (overrides [limits] rpm).
    #[arg(long)]
    pub rpm: Option<f64>,
    /// Ask again where the journal holds a reply that was cut off or empty, instead of
    /// replaying it. Answers that made an item fail are asked again anyway; this also covers
    /// journals written by versions that did not mark them.
    #[arg(long)]
    pub retry_failed: bool,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub call: CallArgs,
    #[arg(long, default_value = "data/personas.jsonl")]
    pub personas: PathBuf,
    #[arg(long, default_value = "data/questions.jsonl")]
    pub questions: PathBuf,
    /// Output dialogues (JSONL); the journal, manifest and failures files go beside it.
    #[arg(long, default_value = "data/dialogues.jsonl")]
    pub out: PathBuf,
    /// Socrates replies per dialogue (12 rounds = 24 turns).
    #[arg(long, default_value_t = 12)]
    pub rounds: usize,
    /// User-LLM temperatures; each persona × question is generated once per temperature.
    #[arg(long, default_value = "0.3,0.7")]
    pub temperatures: String,
    /// Generate only a seeded random subset of N dialogues of the grid.
    #[arg(long)]
    pub count: Option<usize>,
    /// Seed of the --count subset.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Resume into an output made with other prompts, models or sampling.
    #[arg(long)]
    pub allow_changed: bool,
}

#[derive(Debug, Args)]
pub struct JudgeArgs {
    #[command(flatten)]
    pub call: CallArgs,
    #[arg(long, default_value = "data/dialogues.jsonl")]
    pub input: PathBuf,
    /// Judged dialogues (a new file; the input is never modified).
    #[arg(long, default_value = "data/judged.jsonl")]
    pub out: PathBuf,
    /// Re-asks after an invalid answer before the dialogue is recorded as a judge failure.
    #[arg(long, default_value_t = 2)]
    pub max_reasks: u32,
    /// Judge again dialogues that already have scores.
    #[arg(long)]
    pub rejudge: bool,
    /// Name of the user side in the transcript (overrides [transcript] user_label).
    #[arg(long)]
    pub user_label: Option<String>,
    /// Name of the model side in the transcript (overrides [transcript] model_label).
    #[arg(long)]
    pub model_label: Option<String>,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    #[arg(long, default_value = "data/judged.jsonl")]
    pub input: PathBuf,
    /// Reviewed dialogues (every input dialogue, with `review` set where you decided).
    #[arg(long, default_value = "data/reviewed.jsonl")]
    pub out: PathBuf,
    /// Where decisions are saved after every key [default: <input>.review.json].
    #[arg(long)]
    pub review_file: Option<PathBuf>,
    /// Fraction of the dialogues scored ≥ 3 on both scales to add as an audit sample.
    #[arg(long, default_value_t = 0.1)]
    pub audit: f64,
    /// Seed of the audit sample.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write the reviewed file and the calibration report from the saved decisions, without
    /// opening the terminal.
    #[arg(long)]
    pub apply: bool,
    /// Personas, to show names on screen (optional).
    #[arg(long, default_value = "data/personas.jsonl")]
    pub personas: PathBuf,
    /// Synth config, read for [transcript] labels only (optional).
    #[arg(long, default_value = "configs/synth.toml")]
    pub config: PathBuf,
    #[arg(long)]
    pub user_label: Option<String>,
    #[arg(long)]
    pub model_label: Option<String>,
}

#[derive(Debug, Args)]
pub struct FilterArgs {
    #[arg(long, default_value = "data/reviewed.jsonl")]
    pub input: PathBuf,
    /// Kept dialogues; the report goes beside it (<out>.report.md).
    #[arg(long, default_value = "data/kept.jsonl")]
    pub out: PathBuf,
    #[arg(long, default_value = "data/personas.jsonl")]
    pub personas: PathBuf,
    #[arg(long, default_value = "data/questions.jsonl")]
    pub questions: PathBuf,
    /// Count dialogues with neither scores nor review as kept.
    #[arg(long)]
    pub include_unjudged: bool,
    /// Report pairs of kept dialogues at or above this Jaccard similarity.
    #[arg(long, default_value_t = 0.8)]
    pub dup_threshold: f64,
    /// Drop the later dialogue of each near-duplicate pair.
    #[arg(long)]
    pub drop_duplicates: bool,
    /// Characters per shingle.
    #[arg(long, default_value_t = 3)]
    pub ngram: usize,
    /// MinHash functions.
    #[arg(long, default_value_t = 128)]
    pub hashes: usize,
    /// LSH bands (hashes / bands rows each).
    #[arg(long, default_value_t = 32)]
    pub bands: usize,
}
