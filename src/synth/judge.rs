//! `synth judge`: an LLM scores each dialogue 0–4 for being Socratic and for coherence, with a
//! comment first (so the scores follow from the reasoning, and a person can check it).
//!
//! One fresh request per dialogue shows the whole dialogue, at temperature 0, asking for a
//! JSON-schema answer. An answer that does not validate is re-asked (with the error) a bounded
//! number of times, then recorded as a judge failure; scores are never guessed.

use super::client::Completion;
use super::client::{ChatRequest, Client, JsonSchema, Message, Sampling};
use super::config::SynthConfig;
use super::journal::Journal;
use super::limiter::Limiter;
use super::manifest;
use super::pool::{self, Halt};
use super::progress::{Log, Progress, Stats};
use super::prompts::Template;
use super::{sidecar, SynthError};
use crate::corpus::{load_dialogues, write_jsonl, Dialogue, Judge, LoadOptions, Role};
use serde::Serialize;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

pub const JUDGE_PROMPT: &str = "judge.txt";

#[derive(Debug, Clone)]
pub struct JudgeOptions {
    pub config: SynthConfig,
    pub prompts: PathBuf,
    /// The template's file name in `prompts` ([`JUDGE_PROMPT`] for dialogues).
    pub template: String,
    pub input: PathBuf,
    pub out: PathBuf,
    /// Re-asks after an invalid answer (0: one attempt only).
    pub max_reasks: u32,
    /// Judge again dialogues whose input already has scores.
    pub rejudge: bool,
    /// How the two sides are named when the dialogue is shown to the judge.
    pub user_label: String,
    pub model_label: String,
    pub retry_failed: bool,
    pub stop: Arc<AtomicBool>,
}

/// A valid judge answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub comment: String,
    pub socratic: u8,
    pub coherence: u8,
}

/// A dialogue the judge could not score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgeFailure {
    pub id: String,
    pub attempts: u32,
    pub error: String,
    /// The last answer, shortened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
}

#[derive(Debug, Default)]
pub struct JudgeSummary {
    pub total: usize,
    pub judged: usize,
    pub already_judged: usize,
    /// Judged dialogues with a score ≤ 2 on either scale (the human review queue).
    pub flagged: usize,
    pub failures: Vec<JudgeFailure>,
    pub interrupted: bool,
    pub out: PathBuf,
    pub failures_file: PathBuf,
    pub stats: String,
    /// Calls, replays and tokens of this run (as in the manifest).
    pub counts: Value,
}

/// The schema the answer must follow; `comment` comes first on purpose.
pub fn schema() -> Value {
    let score = json!({"type": "integer", "minimum": 0, "maximum": 4});
    json!({
        "type": "object",
        "properties": {"comment": {"type": "string"}, "socratic": score, "coherence": score},
        "required": ["comment", "socratic", "coherence"],
        "additionalProperties": false
    })
}

/// Reads and validates an answer. Markdown code fences and text around the object are
/// tolerated (local servers without schema support add them); anything else is an error.
pub fn parse_verdict(content: &str) -> Result<Verdict, String> {
    let text = content.trim();
    let v: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        Err(first) => {
            let inner = match (text.find('{'), text.rfind('}')) {
                (Some(a), Some(b)) if a < b => &text[a..=b],
                _ if text.contains('{') => return Err(format!("truncated JSON: {first}")),
                _ => return Err("no JSON object in the answer".into()),
            };
            serde_json::from_str(inner).map_err(|e| {
                if e.is_eof() {
                    format!("truncated JSON: {e}")
                } else {
                    format!("malformed JSON: {e}")
                }
            })?
        }
    };
    let obj = v
        .as_object()
        .ok_or("the answer is JSON but not an object")?;
    let comment = match obj.get("comment") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
        Some(Value::String(_)) => return Err("`comment` is empty".into()),
        Some(other) => return Err(format!("`comment` must be a string, got {other}")),
        None => return Err("missing `comment`".into()),
    };
    let score = |name: &str| -> Result<u8, String> {
        match obj.get(name) {
            None => Err(format!("missing `{name}`")),
            Some(x) => match x.as_u64() {
                Some(n) if n <= 4 => Ok(n as u8),
                _ => Err(format!("`{name}` must be an integer 0–4, got {x}")),
            },
        }
    };
    Ok(Verdict {
        comment,
        socratic: score("socratic")?,
        coherence: score("coherence")?,
    })
}

/// The dialogue as the judge sees it: one labelled line per turn (`label: text`).
pub fn render_dialogue(d: &Dialogue, user_label: &str, model_label: &str) -> String {
    let mut out = String::new();
    for t in &d.turns {
        let label = if t.role == Role::User {
            user_label
        } else {
            model_label
        };
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&format!("{label}: {}", t.text.trim()));
    }
    out
}

fn reask(error: &str) -> String {
    format!(
        "Your answer could not be used ({error}). Answer again with only a JSON object of the \
         form {{\"comment\": \"...\", \"socratic\": 0-4, \"coherence\": 0-4}}: a non-empty \
         comment first, then two integer scores from 0 to 4."
    )
}

fn shorten(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// The judge endpoint of one run: its client, counters, progress display and journal.
pub struct Session {
    pub stats: Arc<Stats>,
    pub progress: Arc<Progress>,
    pub log: Log,
    pub client: Client,
    pub journal: Journal,
    /// Temperature 0 unless the configuration says otherwise: the same item should get the
    /// same verdict.
    pub sampling: Sampling,
}

impl Session {
    /// Opens the `[judge]` client of `config` and the journal at `journal`, with a progress
    /// display `label` over `total` items.
    pub fn open(
        config: &SynthConfig,
        label: &str,
        total: u64,
        journal: &std::path::Path,
    ) -> Result<Self, SynthError> {
        let cfg = config.role("judge")?;
        let limits = &config.limits;
        let stats = Arc::new(Stats::default());
        let progress = Progress::new(label, total, Arc::clone(&stats));
        let log = progress.log();
        let limiter = Arc::new(Limiter::new(limits.concurrency, limits.rpm));
        let client = Client::new(
            "judge",
            cfg,
            limiter,
            limits,
            Arc::clone(&stats),
            log.clone(),
        )?;
        let journal = Journal::open(journal, &log)?;
        let mut sampling = Sampling::from_config(cfg);
        sampling.common.temperature = Some(cfg.temperature.unwrap_or(0.0));
        Ok(Self {
            stats,
            progress,
            log,
            client,
            journal,
            sampling,
        })
    }

    pub fn asker<'a>(
        &'a self,
        halt: &'a Halt<'a>,
        max_reasks: u32,
        retry_failed: bool,
    ) -> Asker<'a> {
        Asker {
            client: &self.client,
            journal: &self.journal,
            stats: &self.stats,
            sampling: &self.sampling,
            halt,
            max_reasks,
            retry_failed,
        }
    }
}

/// What every judge call of a run shares: the endpoint, the journal that makes a rerun free,
/// the counters, and how often an invalid answer is asked again.
pub struct Asker<'a> {
    pub client: &'a Client,
    pub journal: &'a Journal,
    pub stats: &'a Stats,
    pub sampling: &'a Sampling,
    pub halt: &'a Halt<'a>,
    /// Re-asks after an invalid answer (0: one attempt only).
    pub max_reasks: u32,
    pub retry_failed: bool,
}

impl Asker<'_> {
    /// Sends `prompt` asking for a JSON answer following `schema`, checks it with `parse`, and
    /// re-asks (with the previous answer and `reask(error)`) up to `max_reasks` times.
    /// `scope` keys the calls in the journal (with the request itself), so each item gets its
    /// own answers. When no answer is valid, the answers are marked rejected in the journal
    /// (the next run asks again instead of replaying the failure) and the error is
    /// `InvalidJudgement`.
    pub fn ask<T>(
        &self,
        scope: &str,
        prompt: &str,
        schema: JsonSchema,
        reask: impl Fn(&str) -> String,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Result<(T, Completion), SynthError> {
        let mut messages = vec![Message::new("user", prompt)];
        let mut last = (String::new(), None);
        // Journal keys and labels of the attempts, to un-journal them if all fail.
        let mut asked: Vec<(String, String)> = Vec::new();
        let attempts = self.max_reasks + 1;
        for attempt in 0..attempts {
            if self.halt.now() {
                return Err(SynthError::Interrupted);
            }
            let req = ChatRequest {
                messages: messages.clone(),
                sampling: self.sampling.clone(),
                schema: Some(schema.clone()),
            };
            // The re-ask carries the previous answer, so every attempt is a distinct request.
            let label = format!("judge attempt {}", attempt + 1);
            let (key, c) = self.journal.call(
                self.client,
                self.stats,
                self.retry_failed,
                scope,
                &label,
                &req,
            )?;
            asked.push((key, label));
            match c
                .check()
                .map_err(|e| e.to_string())
                .and_then(|()| parse(&c.content))
            {
                Ok(v) => return Ok((v, c)),
                Err(e) => {
                    messages.push(Message::new("assistant", &c.content));
                    messages.push(Message::new("user", &reask(&e)));
                    last = (e, Some(shorten(&c.content, 2000)));
                }
            }
        }
        for (key, label) in &asked {
            self.journal.reject(key, scope, label, &last.0)?;
        }
        Err(SynthError::InvalidJudgement {
            attempts,
            error: last.0,
            output: last.1,
        })
    }
}

/// Scores one dialogue; `InvalidJudgement` when the judge never gave a valid answer.
fn judge_one(
    asker: &Asker,
    opts: &JudgeOptions,
    template: &Template,
    d: &Dialogue,
) -> Result<Judge, SynthError> {
    let prompt = template.render(&[(
        "dialogue",
        &render_dialogue(d, &opts.user_label, &opts.model_label),
    )]);
    let schema = JsonSchema {
        name: "judgement".into(),
        schema: schema(),
    };
    let (v, c) = asker.ask(&d.id, &prompt, schema, reask, parse_verdict)?;
    let model = asker.client.model();
    let mut extra = Map::new();
    if let Some(fp) = &c.system_fingerprint {
        extra.insert("fingerprint".into(), json!(fp));
    }
    if let Some(m) = c.model.as_ref().filter(|m| *m != model) {
        extra.insert("served_model".into(), json!(m));
    }
    Ok(Judge {
        socratic: v.socratic,
        coherence: v.coherence,
        comment: v.comment,
        model: Some(model.to_string()),
        extra,
    })
}

pub fn judge(opts: &JudgeOptions) -> Result<JudgeSummary, SynthError> {
    if same_file(&opts.input, &opts.out) {
        return Err(SynthError::Config(format!(
            "--out {} is the input; the judge writes a new file and never modifies its input",
            opts.out.display()
        )));
    }
    let cfg = opts.config.role("judge")?;
    let template = Template::load(&opts.prompts, &opts.template, &["dialogue"])?;
    let loaded = load_dialogues(&opts.input, LoadOptions::default())?;
    let mut dialogues: Vec<Dialogue> = loaded.records.into_iter().map(|(_, d)| d).collect();
    let todo: Vec<usize> = (0..dialogues.len())
        .filter(|&i| opts.rejudge || dialogues[i].judge.is_none())
        .collect();

    let failures_path = sidecar(&opts.out, "failures.jsonl");
    let manifest_path = sidecar(&opts.out, "manifest.json");
    let journal_path = sidecar(&opts.out, "journal.jsonl");
    let session = Session::open(&opts.config, "judge", todo.len() as u64, &journal_path)?;
    let (stats, progress, log) = (&session.stats, &session.progress, &session.log);
    let limits = &opts.config.limits;
    let sampling = &session.sampling;

    let results: Mutex<Vec<Option<Judge>>> = Mutex::new(vec![None; dialogues.len()]);
    let failures: Mutex<Vec<JudgeFailure>> = Mutex::new(Vec::new());
    let halt = Halt::new(&opts.stop);
    let asker = session.asker(&halt, opts.max_reasks, opts.retry_failed);
    progress.start();
    let run = pool::for_each(
        &todo,
        limits.concurrency,
        limits.max_failures_in_a_row,
        &halt,
        |&i| {
            let j = judge_one(&asker, opts, &template, &dialogues[i])?;
            results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(j);
            progress.done();
            Ok(())
        },
        |&i, e| {
            let id = dialogues[i].id.clone();
            log(&format!("{id}: judge failed: {e}"));
            let f = match e {
                SynthError::InvalidJudgement {
                    attempts,
                    error,
                    output,
                } => JudgeFailure {
                    id,
                    attempts,
                    error,
                    output,
                },
                other => JudgeFailure {
                    id,
                    attempts: 0,
                    error: other.to_string(),
                    output: None,
                },
            };
            failures.lock().unwrap_or_else(|e| e.into_inner()).push(f);
            progress.failed();
        },
    );
    progress.finish();
    let interrupted = opts.stop.load(Ordering::SeqCst);
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let index: std::collections::HashMap<&str, usize> = dialogues
        .iter()
        .enumerate()
        .map(|(i, d)| (d.id.as_str(), i))
        .collect();
    failures.sort_by_key(|f| index.get(f.id.as_str()).copied());
    let total = dialogues.len();
    let settings = json!({
        "judge": manifest::endpoint(cfg),
        "effective_temperature": sampling.common.temperature,
        "prompts": {opts.template.as_str(): template.sha256},
        "labels": {"user": opts.user_label, "model": opts.model_label},
        "max_reasks": opts.max_reasks,
    });
    let write_manifest = |status: &str, judged: usize, flagged: usize| -> Result<(), SynthError> {
        manifest::write(
            &manifest_path,
            &json!({
                "stage": "judge",
                "status": status,
                "socratune_version": env!("CARGO_PKG_VERSION"),
                "updated_at": manifest::now_unix(),
                "settings_sha256": manifest::settings_sha(&settings),
                "settings": settings,
                "prompts_dir": opts.prompts,
                "api_key_env": cfg.api_key_env,
                "inputs": {"dialogues": manifest::input(&opts.input, total)?},
                "counts": {
                    "dialogues": total,
                    "to_judge": todo.len(),
                    "judged": judged,
                    "flagged": flagged,
                    "failed": failures.len(),
                    "calls": manifest::counts(stats),
                },
                "files": {"out": opts.out, "journal": journal_path, "failures": failures_path},
            }),
        )
    };
    if let Err(e) = run {
        write_manifest(&format!("failed: {e}"), 0, 0)?;
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let judged = results.iter().filter(|r| r.is_some()).count();
    for (d, r) in dialogues.iter_mut().zip(results) {
        if let Some(j) = r {
            d.judge = Some(j);
        }
    }
    let flagged = dialogues
        .iter()
        .filter_map(|d| d.judge.as_ref())
        .filter(|j| j.socratic <= 2 || j.coherence <= 2)
        .count();
    if interrupted {
        // Nothing half-done is written; the journal makes the rerun free up to here.
        write_manifest("interrupted", judged, flagged)?;
    } else {
        write_jsonl(&opts.out, &dialogues)?;
        write_jsonl(&failures_path, &failures)?;
        write_manifest(
            if failures.is_empty() {
                "complete"
            } else {
                "incomplete"
            },
            judged,
            flagged,
        )?;
    }
    Ok(JudgeSummary {
        total: dialogues.len(),
        judged,
        already_judged: dialogues.len() - todo.len(),
        flagged,
        failures,
        interrupted,
        out: opts.out.clone(),
        failures_file: failures_path,
        stats: stats.summary(),
        counts: manifest::counts(stats),
    })
}

/// Whether two paths name the same file (the second may not exist yet).
pub fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_answers_parse() {
        let v =
            parse_verdict(r#"{"comment":"問い返しが見事","socratic":4,"coherence":3}"#).unwrap();
        assert_eq!(
            v,
            Verdict {
                comment: "問い返しが見事".into(),
                socratic: 4,
                coherence: 3
            }
        );
        let fenced = "```json\n{\"comment\": \"ok\", \"socratic\": 0, \"coherence\": 2}\n```";
        assert_eq!(parse_verdict(fenced).unwrap().coherence, 2);
        let prose =
            "Here you go: {\"comment\":\"c\",\"socratic\":1,\"coherence\":1,\"extra\":true} thanks";
        assert_eq!(parse_verdict(prose).unwrap().socratic, 1);
    }

    #[test]
    fn invalid_answers_say_why() {
        let cases = [
            (
                r#"{"comment":"c","socratic":5,"coherence":3}"#,
                "`socratic` must be an integer 0–4, got 5",
            ),
            (r#"{"comment":"c","socratic":3.5,"coherence":3}"#, "got 3.5"),
            (
                r#"{"comment":"c","socratic":"3","coherence":3}"#,
                "got \"3\"",
            ),
            (r#"{"comment":"c","socratic":-1,"coherence":3}"#, "got -1"),
            (
                r#"{"comment":"  ","socratic":3,"coherence":3}"#,
                "`comment` is empty",
            ),
            (r#"{"socratic":3,"coherence":3}"#, "missing `comment`"),
            (r#"{"comment":"c","socratic":3}"#, "missing `coherence`"),
            (
                r#"{"comment":"c","socratic":3,"coherence":null}"#,
                "got null",
            ),
            (r#"[1,2]"#, "not an object"),
            ("I think 3 and 4.", "no JSON object"),
        ];
        for (text, want) in cases {
            let e = parse_verdict(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e} (wanted {want})");
        }
    }

    #[test]
    fn truncated_answers_are_reported_as_truncated() {
        for text in [
            r#"{"comment":"良い対話","socratic":3,"#,
            r#"{"comment":"良い"#,
            "```json\n{\"comment\": \"x\", \"socr",
        ] {
            let e = parse_verdict(text).unwrap_err();
            assert!(e.contains("truncated"), "{text}: {e}");
        }
    }

    #[test]
    fn dialogue_is_rendered_with_labels() {
        let d: Dialogue = serde_json::from_str(
            r#"{"id":"d","persona":"p","question":"q","user_temperature":0.3,
                "turns":[{"role":"user","text":"正義とは？"},{"role":"model","text":" 君はどう思う？ "}]}"#,
        )
        .unwrap();
        assert_eq!(
            render_dialogue(&d, "ユーザー", "ソクラテス"),
            "ユーザー: 正義とは？\nソクラテス: 君はどう思う？"
        );
    }
}
