//! `socratune synth …`: AI×AI dialogue generation, LLM judging, human review, filtering.
//!
//! Endpoints, models and sampling live in the config file (`--config`, one section per role);
//! files, counts and switches are flags. Each stage's arguments become its options; the
//! stage's summary goes to stdout, progress and warnings to stderr.

use clap::{Args, Subcommand};
use socratune::corpus::{load_dialogues, load_personas, write_jsonl, Dialogue, LoadOptions};
use socratune::fsutil::{sha256_file, write_atomic};
use socratune::synth::calibrate;
use socratune::synth::config::SynthConfig;
use socratune::synth::filter::{filter, FilterOptions};
use socratune::synth::generate::{generate, GenerateOptions};
use socratune::synth::judge::{judge, same_file, JudgeOptions};
use socratune::synth::minhash::MinHashParams;
use socratune::synth::review::{apply, Session};
use socratune::synth::tui;
use socratune::synth::{parse_temperatures, sidecar, SynthError};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

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

impl SynthArgs {
    pub fn run(self) -> anyhow::Result<()> {
        match &self.command {
            SynthCommand::Generate(a) => generate_cmd(a),
            SynthCommand::Judge(a) => judge_cmd(a),
            SynthCommand::Review(a) => review_cmd(a),
            SynthCommand::Filter(a) => filter_cmd(a),
        }?;
        Ok(())
    }
}

/// Ctrl-C (or SIGTERM) asks the run to stop after the calls in flight; a second one exits
/// at once. Either way the journal keeps every answer already received.
fn stop_flag() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let s = Arc::clone(&stop);
    let installed = ctrlc::set_handler(move || {
        if s.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("stopping after the calls in flight (Ctrl-C again to quit now; rerun to resume)");
    });
    if let Err(e) = installed {
        eprintln!("warning: cannot catch Ctrl-C ({e}); stopping will still lose nothing");
    }
    stop
}

fn load_config(a: &CallArgs) -> Result<SynthConfig, SynthError> {
    let mut cfg = SynthConfig::load(&a.config)?;
    if let Some(c) = a.concurrency {
        if c == 0 {
            return Err(SynthError::Config(
                "--concurrency must be at least 1".into(),
            ));
        }
        cfg.limits.concurrency = c;
    }
    if let Some(r) = a.rpm {
        if !(r > 0.0 && r.is_finite()) {
            return Err(SynthError::Config("--rpm must be positive".into()));
        }
        cfg.limits.rpm = Some(r);
    }
    Ok(cfg)
}

fn generate_cmd(a: &GenerateArgs) -> Result<(), SynthError> {
    let opts = GenerateOptions {
        config: load_config(&a.call)?,
        prompts: a.call.prompts.clone(),
        personas: a.personas.clone(),
        questions: a.questions.clone(),
        out: a.out.clone(),
        rounds: a.rounds,
        temperatures: parse_temperatures(&a.temperatures)?,
        count: a.count,
        seed: a.seed,
        retry_failed: a.call.retry_failed,
        allow_changed: a.allow_changed,
        stop: stop_flag(),
    };
    let s = generate(&opts)?;
    println!(
        "generate: {} of {} dialogues done ({} now, {} before, {} failed) → {}",
        s.already_done + s.generated,
        s.planned,
        s.generated,
        s.already_done,
        s.failures.len(),
        s.out.display()
    );
    println!("generate: {}", s.stats);
    if s.interrupted {
        return Err(SynthError::Interrupted);
    }
    if !s.failures.is_empty() {
        return Err(SynthError::Incomplete {
            failed: s.failures.len(),
            total: s.planned,
            file: s.failures_file,
        });
    }
    Ok(())
}

fn judge_cmd(a: &JudgeArgs) -> Result<(), SynthError> {
    let config = load_config(&a.call)?;
    let t = config.transcript.clone();
    let opts = JudgeOptions {
        config,
        prompts: a.call.prompts.clone(),
        template: socratune::synth::judge::JUDGE_PROMPT.into(),
        input: a.input.clone(),
        out: a.out.clone(),
        max_reasks: a.max_reasks,
        rejudge: a.rejudge,
        user_label: a.user_label.clone().unwrap_or(t.user_label),
        model_label: a.model_label.clone().unwrap_or(t.model_label),
        retry_failed: a.call.retry_failed,
        stop: stop_flag(),
    };
    let s = judge(&opts)?;
    println!(
        "judge: {} judged now, {} already judged, {} failed, of {} dialogues; {} scored ≤ 2 on a scale",
        s.judged,
        s.already_judged,
        s.failures.len(),
        s.total,
        s.flagged
    );
    println!("judge: {}", s.stats);
    if s.interrupted {
        return Err(SynthError::Interrupted);
    }
    println!("judge: wrote {}", s.out.display());
    if !s.failures.is_empty() {
        return Err(SynthError::Incomplete {
            failed: s.failures.len(),
            total: s.total - s.already_judged,
            file: s.failures_file,
        });
    }
    Ok(())
}

fn review_cmd(a: &ReviewArgs) -> Result<(), SynthError> {
    if !(0.0..=1.0).contains(&a.audit) {
        return Err(SynthError::Config("--audit must be between 0 and 1".into()));
    }
    if same_file(&a.input, &a.out) {
        return Err(SynthError::Config(format!(
            "--out {} is the input; write a new file",
            a.out.display()
        )));
    }
    let transcript = if a.config.exists() {
        SynthConfig::load(&a.config)?.transcript
    } else {
        Default::default()
    };
    let user_label = a.user_label.clone().unwrap_or(transcript.user_label);
    let model_label = a.model_label.clone().unwrap_or(transcript.model_label);
    let mut dialogues: Vec<Dialogue> = load_dialogues(&a.input, LoadOptions::default())?
        .records
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let input_sha256 = sha256_file(&a.input)?;
    let review_path = a
        .review_file
        .clone()
        .unwrap_or_else(|| sidecar(&a.input, "review.json"));
    let (mut session, warnings) =
        Session::open(&dialogues, &input_sha256, &review_path, a.audit, a.seed)?;
    for w in warnings {
        eprintln!("warning: {}: {w}", review_path.display());
    }
    if !a.apply {
        if !(std::io::stdin().is_terminal() && std::io::stdout().is_terminal()) {
            return Err(SynthError::NotInteractive);
        }
        let names: HashMap<String, String> = match load_personas(&a.personas) {
            Ok(ps) => ps.into_iter().map(|p| (p.id, p.name)).collect(),
            Err(_) => HashMap::new(),
        };
        session.save()?;
        let view = tui::View {
            dialogues: &dialogues,
            persona_names: &names,
            user_label: &user_label,
            model_label: &model_label,
        };
        tui::run(&mut session, &view)?;
    }
    session.save()?;
    let queue = &session.queue;
    if let Some(note) = socratune::synth::review::scored_undecided_note(&queue.decisions) {
        eprintln!("warning: {note}");
    }
    let reviewed = apply(&mut dialogues, &queue.decisions);
    write_jsonl(&a.out, &dialogues)?;
    let report = calibrate::report(&dialogues, &queue.items, &queue.decisions);
    let report_path = sidecar(&a.out, "calibration.md");
    write_atomic(&report_path, report.as_bytes())?;
    let undecided = queue.items.len() - queue.decided();
    println!(
        "review: {} in the queue, {} decided, {undecided} undecided (they keep the judge's verdict); \
         {reviewed} dialogues with a review → {}",
        queue.items.len(),
        queue.decided(),
        a.out.display()
    );
    println!(
        "review: decisions in {}, calibration in {}\n",
        review_path.display(),
        report_path.display()
    );
    print!("{report}");
    Ok(())
}

fn filter_cmd(a: &FilterArgs) -> Result<(), SynthError> {
    if !(0.0..=1.0).contains(&a.dup_threshold) {
        return Err(SynthError::Config(
            "--dup-threshold must be between 0 and 1".into(),
        ));
    }
    if a.ngram == 0 || a.hashes == 0 || a.bands == 0 || a.bands > a.hashes {
        return Err(SynthError::Config(
            "--ngram, --hashes and --bands must be positive, bands ≤ hashes".into(),
        ));
    }
    let s = filter(&FilterOptions {
        input: a.input.clone(),
        out: a.out.clone(),
        personas: a.personas.clone(),
        questions: a.questions.clone(),
        include_unjudged: a.include_unjudged,
        dup_threshold: a.dup_threshold,
        drop_duplicates: a.drop_duplicates,
        minhash: MinHashParams {
            ngram: a.ngram,
            hashes: a.hashes,
            bands: a.bands,
        },
    })?;
    println!(
        "filter: kept {} of {} → {}",
        s.kept,
        s.total,
        a.out.display()
    );
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, r) in &s.dropped {
        *kinds
            .entry(
                r.split(" (")
                    .next()
                    .unwrap_or(r)
                    .split(':')
                    .next()
                    .unwrap_or(r),
            )
            .or_default() += 1;
    }
    for (k, n) in kinds {
        println!("filter: dropped {n}: {k}");
    }
    println!(
        "filter: {} near-duplicate pairs at Jaccard ≥ {}; {} personas and {} questions without a kept dialogue",
        s.duplicates.len(),
        a.dup_threshold,
        s.missing_personas.len(),
        s.missing_questions.len()
    );
    println!("filter: report in {}", s.report_file.display());
    Ok(())
}
