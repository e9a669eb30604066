//! Judging the replies with `synth judge` itself: each reply becomes a dialogue in the corpus
//! format (the conversation it answers, then the reply as the last model turn) in
//! `runs/eval/dialogues.jsonl`, and the synth judge scores them into `runs/eval/judged.jsonl`
//! with its client, schema, re-asks and journal — so a rerun pays for nothing twice, and
//! `synth review` opens the result like any judged file.

use super::prompts::EvalPrompt;
use super::replies::Generated;
use super::{Entry, EvalError, Result};
use crate::corpus::{load_dialogues, write_jsonl, Dialogue, Judge, LoadOptions, Role, Turn};
use crate::synth::journal::Entry as JournalEntry;
use crate::synth::judge::{judge, JudgeOptions};
use crate::synth::SynthConfig;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// The id of one reply as a dialogue: `<entry>/<prompt>`.
pub fn reply_id(entry: &str, prompt: &str) -> String {
    format!("{entry}/{prompt}")
}

/// The conversation a reply answers, with the reply as its last turn.
pub fn as_dialogue(entry: &Entry, p: &EvalPrompt, g: &Generated) -> Dialogue {
    let mut turns: Vec<Turn> = p.dialogue.turns[..=2 * p.pair].to_vec();
    turns.push(Turn {
        role: Role::Model,
        text: g.reply.clone(),
    });
    let mut extra = serde_json::Map::new();
    extra.insert("source".into(), json!("eval"));
    extra.insert("run".into(), json!(entry.name));
    extra.insert("prompt".into(), json!(p.id));
    Dialogue {
        id: reply_id(&entry.name, &p.id),
        persona: p.dialogue.persona.clone(),
        question: p.dialogue.question.clone(),
        user_temperature: p.dialogue.user_temperature,
        turns,
        judge: None,
        review: None,
        extra,
    }
}

pub struct JudgeRun {
    pub config: SynthConfig,
    pub prompts_dir: PathBuf,
    pub template: String,
    pub stop: Arc<AtomicBool>,
}

/// Checks before any reply is generated (minutes of work) what would stop the judge later:
/// the `[judge]` section, its API key in the environment, and the prompt templates.
pub fn preflight(run: &JudgeRun, pair_template: Option<&str>) -> Result<()> {
    use crate::synth::{limiter::Limiter, progress::Stats, prompts::Template, Client};
    let cfg = run.config.role("judge")?;
    Client::new(
        "judge",
        cfg,
        Arc::new(Limiter::new(1, None)),
        &run.config.limits,
        Arc::new(Stats::default()),
        crate::synth::progress::stderr_log(),
    )?;
    Template::load(&run.prompts_dir, &run.template, &["dialogue"])?;
    if let Some(pair) = pair_template {
        Template::load(&run.prompts_dir, pair, &["dialogue", "reply_a", "reply_b"])?;
    }
    Ok(())
}

/// Everything a journal's calls cost, over all runs that wrote it: (calls, prompt tokens,
/// completion tokens). Rejection marks repeat an answer already counted and are skipped.
pub fn spent(journal: &Path) -> Result<Value> {
    let text = match std::fs::read_to_string(journal) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(crate::fsutil::FileError::new(journal, e).into()),
    };
    let (mut calls, mut prompt, mut completion) = (0u64, 0u64, 0u64);
    for line in text.lines() {
        // A torn last line is not a finished call.
        let Ok(e) = serde_json::from_str::<JournalEntry>(line) else {
            continue;
        };
        if e.rejected.is_none() {
            calls += 1;
            prompt += e.completion.prompt_tokens;
            completion += e.completion.completion_tokens;
        }
    }
    Ok(json!({"calls": calls, "prompt_tokens": prompt, "completion_tokens": completion}))
}

/// What the judge said, by reply id, and what it cost.
pub struct Judged {
    pub scores: HashMap<String, Judge>,
    pub failed: usize,
    pub counts: Value,
    pub file: PathBuf,
}

/// Writes every non-empty reply as a dialogue to `runs/eval/dialogues.jsonl` (an empty one
/// has nothing to read or judge); returns the file.
pub fn write_dialogues(
    dir: &Path,
    entries: &[Entry],
    prompts: &[EvalPrompt],
    replies: &[Vec<Generated>],
) -> Result<PathBuf> {
    let dialogues: Vec<Dialogue> = entries
        .iter()
        .zip(replies)
        .flat_map(|(e, rs)| {
            prompts
                .iter()
                .zip(rs)
                .filter(|(_, g)| !g.reply.trim().is_empty())
                .map(move |(p, g)| as_dialogue(e, p, g))
        })
        .collect();
    let file = dir.join("dialogues.jsonl");
    write_jsonl(&file, &dialogues)?;
    Ok(file)
}

/// Scores the dialogues of `input` (from [`write_dialogues`]) into `runs/eval/judged.jsonl`.
pub fn judge_replies(dir: &Path, input: &Path, run: &JudgeRun) -> Result<Judged> {
    let out = dir.join("judged.jsonl");
    let t = &run.config.transcript;
    let s = judge(&JudgeOptions {
        config: run.config.clone(),
        prompts: run.prompts_dir.clone(),
        template: run.template.clone(),
        input: input.to_path_buf(),
        out: out.clone(),
        max_reasks: 2,
        rejudge: false,
        user_label: t.user_label.clone(),
        model_label: t.model_label.clone(),
        retry_failed: false,
        stop: Arc::clone(&run.stop),
    })?;
    eprintln!("eval judge: {}", s.stats);
    if s.interrupted {
        return Err(EvalError::Interrupted);
    }
    let scores = load_dialogues(&out, LoadOptions::default())?
        .records
        .into_iter()
        .filter_map(|(_, d)| Some((d.id, d.judge?)))
        .collect();
    let mut counts = s.counts;
    counts["spent"] = spent(&crate::synth::sidecar(&out, "journal.jsonl"))?;
    Ok(Judged {
        scores,
        failed: s.failures.len(),
        counts,
        file: out,
    })
}
