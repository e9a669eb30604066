//! Turns `socratune synth …` arguments into stage options, runs the stage and prints its
//! summary (stdout: results; stderr: progress and warnings).

use super::calibrate;
use super::config::SynthConfig;
use super::filter::{filter, FilterOptions};
use super::generate::{generate, GenerateOptions};
use super::judge::{judge, same_file, JudgeOptions};
use super::minhash::MinHashParams;
use super::review::{apply, Session};
use super::tui;
use super::{parse_temperatures, sidecar, SynthError};
use crate::cli::synth::{
    CallArgs, FilterArgs, GenerateArgs, JudgeArgs, ReviewArgs, SynthArgs, SynthCommand,
};
use crate::corpus::{load_dialogues, load_personas, write_jsonl, Dialogue, LoadOptions};
use crate::fsutil::{sha256_file, write_atomic};
use std::collections::{BTreeMap, HashMap};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub fn run(args: &SynthArgs) -> Result<(), SynthError> {
    match &args.command {
        SynthCommand::Generate(a) => generate_cmd(a),
        SynthCommand::Judge(a) => judge_cmd(a),
        SynthCommand::Review(a) => review_cmd(a),
        SynthCommand::Filter(a) => filter_cmd(a),
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
        template: super::judge::JUDGE_PROMPT.into(),
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
            return Err(SynthError::Terminal(
                "review needs an interactive terminal; --apply writes the decisions saved so far"
                    .into(),
            ));
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
    if let Some(note) = super::review::scored_undecided_note(&queue.decisions) {
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
