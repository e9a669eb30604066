//! `--pairwise`: the judge reads two entries' replies to the same prompt and says which is
//! more Socratic, once in each order (A/B swapped) so that a preference for a position
//! cancels out. The calls go through synth's client, re-asks and journal
//! (`runs/eval/pairwise.journal.jsonl`), like every other judge call.

use super::judging::JudgeRun;
use super::prompts::EvalPrompt;
use super::replies::Generated;
use super::{Entry, EvalError, Result};
use crate::corpus::Dialogue;
use crate::synth::client::JsonSchema;
use crate::synth::judge::{render_dialogue, Session};
use crate::synth::pool::{self, Halt};
use crate::synth::prompts::Template;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

/// One verdict: which of two entries' replies to a prompt the judge preferred.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub prompt: String,
    /// Entry names as shown: `a` first (as reply A), `b` second.
    pub a: String,
    pub b: String,
    pub winner: String,
    pub comment: String,
}

pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {"comment": {"type": "string"}, "better": {"type": "string", "enum": ["A", "B"]}},
        "required": ["comment", "better"],
        "additionalProperties": false
    })
}

/// Reads an answer `{"comment": "…", "better": "A" | "B"}` (fences and text around tolerated,
/// as for the score judge); returns (comment, A preferred).
pub fn parse(content: &str) -> Result<(String, bool), String> {
    let text = content.trim();
    let inner = match (text.find('{'), text.rfind('}')) {
        (Some(a), Some(b)) if a < b => &text[a..=b],
        _ => return Err("no JSON object in the answer".into()),
    };
    let v: Value = serde_json::from_str(inner).map_err(|e| format!("malformed JSON: {e}"))?;
    let comment = match v.get("comment") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        _ => return Err("`comment` must be a non-empty string".into()),
    };
    match v.get("better").and_then(Value::as_str).map(str::trim) {
        Some("A") => Ok((comment, true)),
        Some("B") => Ok((comment, false)),
        other => Err(format!("`better` must be \"A\" or \"B\", got {other:?}")),
    }
}

fn reask(error: &str) -> String {
    format!(
        "Your answer could not be used ({error}). Answer again with only a JSON object of the \
         form {{\"comment\": \"...\", \"better\": \"A\" or \"B\"}}."
    )
}

/// One comparison to ask for.
struct Task {
    prompt: usize,
    a: usize,
    b: usize,
}

/// Asks for every pair of entries on every prompt where both replied, in both orders.
/// Returns the verdicts (failed comparisons left out, counted) and the call counts.
pub fn compare_pairs(
    dir: &Path,
    entries: &[Entry],
    prompts: &[EvalPrompt],
    replies: &[Vec<Generated>],
    run: &JudgeRun,
) -> Result<(Vec<Verdict>, usize, Value)> {
    let template = Template::load(
        &run.prompts_dir,
        &run.template,
        &["dialogue", "reply_a", "reply_b"],
    )?;
    let mut tasks = Vec::new();
    for (p, _) in prompts.iter().enumerate() {
        let ok: Vec<usize> = (0..entries.len())
            .filter(|&e| !replies[e][p].reply.trim().is_empty())
            .collect();
        for (i, &x) in ok.iter().enumerate() {
            for &y in &ok[i + 1..] {
                tasks.push(Task {
                    prompt: p,
                    a: x,
                    b: y,
                });
                tasks.push(Task {
                    prompt: p,
                    a: y,
                    b: x,
                });
            }
        }
    }
    let session = Session::open(
        &run.config,
        "pairwise",
        tasks.len() as u64,
        &dir.join("pairwise.journal.jsonl"),
    )?;
    let (progress, log) = (&session.progress, &session.log);
    let limits = &run.config.limits;
    let halt = Halt::new(&run.stop);
    let asker = session.asker(&halt, 2, false);
    let t = &run.config.transcript;
    let verdicts: Mutex<Vec<Option<Verdict>>> = Mutex::new(vec![None; tasks.len()]);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let index: Vec<usize> = (0..tasks.len()).collect();
    progress.start();
    let res = pool::for_each(
        &index,
        limits.concurrency,
        limits.max_failures_in_a_row,
        &halt,
        |&k| {
            let task = &tasks[k];
            let p = &prompts[task.prompt];
            let context = Dialogue {
                turns: p.dialogue.turns[..=2 * p.pair].to_vec(),
                ..p.dialogue.clone()
            };
            let (ea, eb) = (&entries[task.a], &entries[task.b]);
            let text = template.render(&[
                (
                    "dialogue",
                    &render_dialogue(&context, &t.user_label, &t.model_label),
                ),
                ("reply_a", &replies[task.a][task.prompt].reply),
                ("reply_b", &replies[task.b][task.prompt].reply),
            ]);
            let scope = format!("{}:{}|{}", p.id, ea.name, eb.name);
            let schema = JsonSchema {
                name: "preference".into(),
                schema: schema(),
            };
            let ((comment, a_won), _) = asker.ask(&scope, &text, schema, reask, parse)?;
            let v = Verdict {
                prompt: p.id.clone(),
                a: ea.name.clone(),
                b: eb.name.clone(),
                winner: if a_won { &ea.name } else { &eb.name }.clone(),
                comment,
            };
            verdicts.lock().unwrap_or_else(|e| e.into_inner())[k] = Some(v);
            progress.done();
            Ok(())
        },
        |&k, e| {
            let task = &tasks[k];
            log(&format!(
                "{}: {} vs {}: comparison failed: {e}",
                prompts[task.prompt].id, entries[task.a].name, entries[task.b].name
            ));
            failed.fetch_add(1, Ordering::SeqCst);
            progress.failed();
        },
    );
    progress.finish();
    eprintln!("eval pairwise: {}", session.stats.summary());
    res?;
    if run.stop.load(Ordering::SeqCst) {
        return Err(EvalError::Interrupted);
    }
    let verdicts: Vec<Verdict> = verdicts
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .flatten()
        .collect();
    crate::corpus::write_jsonl(&dir.join("pairwise.jsonl"), &verdicts)?;
    let mut counts = crate::synth::manifest::counts(&session.stats);
    counts["spent"] = super::judging::spent(&dir.join("pairwise.journal.jsonl"))?;
    Ok((verdicts, failed.into_inner(), counts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_or_say_why() {
        assert_eq!(
            parse(r#"{"comment":"Aが問い返している","better":"A"}"#).unwrap(),
            ("Aが問い返している".to_string(), true)
        );
        assert!(
            !parse("```json\n{\"comment\":\"c\",\"better\":\"B\"}\n```")
                .unwrap()
                .1
        );
        for (text, want) in [
            (r#"{"comment":"c","better":"C"}"#, "`better` must be"),
            (r#"{"comment":"","better":"A"}"#, "`comment`"),
            ("A is better", "no JSON object"),
        ] {
            let e = parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
