//! `synth generate`: AI×AI dialogues over the grid personas × questions × user temperatures.
//!
//! Turn 0 is the opening question verbatim (no call). Then Socrates (the `model` role, one
//! fixed prompt and fixed sampling) and the user LLM (role-playing a persona at the dialogue's
//! temperature) alternate. Each side sees the conversation from its own seat: its own lines
//! are `assistant`, the other's are `user`.
//!
//! Finished dialogues are appended to the output one whole fsynced line at a time, and only
//! if not already there; calls are journaled, so a rerun replays finished turns for free.

use super::client::{ChatRequest, Client, Message, Sampling};
use super::config::SynthConfig;
use super::journal::{append_line, open_append, Journal};
use super::limiter::Limiter;
use super::manifest;
use super::pool::{self, Halt};
use super::progress::{Progress, Stats};
use super::prompts::Template;
use super::{sidecar, SynthError};
use crate::corpus::{
    load_personas, load_questions, read_jsonl, write_jsonl, Dialogue, Persona, Question, Role, Turn,
};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::Serialize;
use serde_json::{json, Map};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

pub const SOCRATES_PROMPT: &str = "socrates.txt";
pub const USER_PROMPT: &str = "user.txt";

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub config: SynthConfig,
    pub prompts: PathBuf,
    pub personas: PathBuf,
    pub questions: PathBuf,
    pub out: PathBuf,
    pub rounds: usize,
    pub temperatures: Vec<f64>,
    /// Generate a seeded random subset of the grid instead of all of it.
    pub count: Option<usize>,
    pub seed: u64,
    /// Ask again where the journal holds a cut-off or empty reply (instead of replaying it).
    pub retry_failed: bool,
    /// Resume even though the prompts, models or sampling changed since the output began.
    pub allow_changed: bool,
    /// Set (by Ctrl-C) to stop after the calls in flight; everything done so far is kept.
    pub stop: Arc<AtomicBool>,
}

/// One dialogue of the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    pub id: String,
    pub persona: usize,
    pub question: usize,
    pub temperature: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Failure {
    pub id: String,
    pub error: String,
}

#[derive(Debug, Default)]
pub struct GenerateSummary {
    pub planned: usize,
    pub already_done: usize,
    pub generated: usize,
    pub failures: Vec<Failure>,
    pub interrupted: bool,
    pub out: PathBuf,
    pub failures_file: PathBuf,
    pub stats: String,
}

/// `0.7` → `07`, `1.0` → `10`, `0.25` → `025`: one digit per decimal kept, so distinct
/// temperatures (at most two decimals, 0–2) always give distinct tags.
pub fn temperature_tag(t: f64) -> String {
    let h = (t * 100.0).round() as u32;
    if h.is_multiple_of(10) {
        format!("{}{}", h / 100, (h / 10) % 10)
    } else {
        format!("{}{:02}", h / 100, h % 100)
    }
}

/// `d-p017-q05-t07`: the same persona, question and temperature always give the same id.
pub fn dialogue_id(persona: &str, question: &str, t: f64) -> String {
    format!("d-{persona}-{question}-t{}", temperature_tag(t))
}

/// The run grid in a fixed order (persona, question, temperature), or a seeded sample of it
/// (kept in grid order).
pub fn grid(
    personas: &[Persona],
    questions: &[Question],
    temperatures: &[f64],
    count: Option<usize>,
    seed: u64,
) -> Result<Vec<Job>, SynthError> {
    let mut seen = HashSet::new();
    for &t in temperatures {
        if ((t * 100.0).round() - t * 100.0).abs() > 1e-6 {
            return Err(SynthError::Config(format!(
                "temperature {t}: use at most two decimals"
            )));
        }
        if !seen.insert(temperature_tag(t)) {
            return Err(SynthError::Config(format!(
                "temperature {t} is listed twice"
            )));
        }
    }
    let mut jobs = Vec::with_capacity(personas.len() * questions.len() * temperatures.len());
    for (pi, p) in personas.iter().enumerate() {
        for (qi, q) in questions.iter().enumerate() {
            for &t in temperatures {
                jobs.push(Job {
                    id: dialogue_id(&p.id, &q.id, t),
                    persona: pi,
                    question: qi,
                    temperature: t,
                });
            }
        }
    }
    if let Some(n) = count {
        if n > jobs.len() {
            return Err(SynthError::Config(format!(
                "--count {n} is more than the grid holds ({} personas × {} questions × {} temperatures = {})",
                personas.len(),
                questions.len(),
                temperatures.len(),
                jobs.len()
            )));
        }
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let mut pick = order[..n].to_vec();
        pick.sort_unstable();
        jobs = pick.into_iter().map(|i| jobs[i].clone()).collect();
    }
    Ok(jobs)
}

/// The conversation as seen by `me`: a system prompt, then `me`'s lines as `assistant` and
/// the other side's as `user`.
pub fn perspective(system: &str, turns: &[Turn], me: Role) -> Vec<Message> {
    let mut msgs = vec![Message::new("system", system)];
    for t in turns {
        let role = if t.role == me { "assistant" } else { "user" };
        msgs.push(Message::new(role, &t.text));
    }
    msgs
}

/// Everything a worker needs to produce one dialogue.
struct Ctx<'a> {
    socrates: &'a Client,
    user: &'a Client,
    journal: &'a Journal,
    stats: &'a Stats,
    socrates_prompt: &'a Template,
    user_prompt: &'a Template,
    socrates_sampling: Sampling,
    user_sampling: Sampling,
    rounds: usize,
    retry_failed: bool,
    halt: &'a (dyn Fn() -> bool + Sync),
}

fn run_dialogue(ctx: &Ctx, job: &Job, p: &Persona, q: &Question) -> Result<Dialogue, SynthError> {
    let socrates_system = ctx.socrates_prompt.render(&[("question", &q.text)]);
    let user_system = ctx.user_prompt.render(&[
        ("persona_name", &p.name),
        ("persona_description", &p.description),
        ("question", &q.text),
    ]);
    let mut user_sampling = ctx.user_sampling.clone();
    user_sampling.common.temperature = Some(job.temperature);
    let mut turns = vec![Turn {
        role: Role::User,
        text: q.text.clone(),
    }];
    for round in 0..ctx.rounds {
        for (me, client, system, sampling) in [
            (
                Role::Model,
                ctx.socrates,
                &socrates_system,
                &ctx.socrates_sampling,
            ),
            (Role::User, ctx.user, &user_system, &user_sampling),
        ] {
            // The dialogue ends on Socrates' reply: `rounds` pairs.
            if me == Role::User && round + 1 == ctx.rounds {
                break;
            }
            if (ctx.halt)() {
                return Err(SynthError::Interrupted);
            }
            let req = ChatRequest {
                messages: perspective(system, &turns, me),
                sampling: sampling.clone(),
                schema: None,
            };
            let label = format!("turn {}", turns.len());
            let (key, c) =
                ctx.journal
                    .call(client, ctx.stats, ctx.retry_failed, &job.id, &label, &req)?;
            if let Err(e) = c.check() {
                Stats::add(&ctx.stats.failed_calls, 1);
                // Asked again on the next run, not replayed as the same failure.
                ctx.journal.reject(&key, &job.id, &label, &e.to_string())?;
                return Err(e);
            }
            turns.push(Turn {
                role: me,
                text: c.content.trim().to_string(),
            });
        }
    }
    Ok(Dialogue {
        id: job.id.clone(),
        persona: p.id.clone(),
        question: q.id.clone(),
        user_temperature: job.temperature,
        turns,
        judge: None,
        review: None,
        extra: Map::new(),
    })
}

pub fn generate(opts: &GenerateOptions) -> Result<GenerateSummary, SynthError> {
    if opts.rounds == 0 {
        return Err(SynthError::Config("--rounds must be at least 1".into()));
    }
    let socrates_cfg = opts.config.role("socrates")?;
    let user_cfg = opts.config.role("user")?;
    if user_cfg.temperature.is_some() {
        return Err(SynthError::Config(
            "[user] temperature: the user's temperature comes from --temperatures (one value per dialogue)".into(),
        ));
    }
    let socrates_prompt = Template::load(&opts.prompts, SOCRATES_PROMPT, &["question"])?;
    let user_prompt = Template::load(
        &opts.prompts,
        USER_PROMPT,
        &["persona_name", "persona_description", "question"],
    )?;
    let personas = load_personas(&opts.personas)?;
    let questions = load_questions(&opts.questions)?;
    let jobs = grid(
        &personas,
        &questions,
        &opts.temperatures,
        opts.count,
        opts.seed,
    )?;

    let journal_path = sidecar(&opts.out, "journal.jsonl");
    let manifest_path = sidecar(&opts.out, "manifest.json");
    let failures_path = sidecar(&opts.out, "failures.jsonl");

    let stats = Arc::new(Stats::default());
    let progress_log = super::progress::stderr_log();
    let out_file = open_append(&opts.out, &progress_log)?;
    let existing = read_jsonl::<Dialogue>(&opts.out)?;
    if let Some(b) = existing.skipped.first() {
        return Err(SynthError::Corpus(b.clone().into()));
    }
    let done: HashSet<String> = existing.records.iter().map(|(_, d)| d.id.clone()).collect();
    let todo: Vec<&Job> = jobs.iter().filter(|j| !done.contains(&j.id)).collect();

    let limits = &opts.config.limits;
    let settings = json!({
        "socrates": manifest::endpoint(socrates_cfg),
        "user": manifest::endpoint(user_cfg),
        "prompts": {
            SOCRATES_PROMPT: socrates_prompt.sha256,
            USER_PROMPT: user_prompt.sha256,
        },
        "rounds": opts.rounds,
    });
    let settings_sha = manifest::settings_sha(&settings);
    if !done.is_empty() && !opts.allow_changed {
        if let Some(prev) = manifest::previous_settings_sha(&manifest_path) {
            if prev != settings_sha {
                return Err(SynthError::Config(format!(
                    "{} already holds {} dialogues made with other prompts, models or sampling (see {}); \
                     write to a new --out, or pass --allow-changed to mix them",
                    opts.out.display(),
                    done.len(),
                    manifest_path.display()
                )));
            }
        }
    }
    let limiter = Arc::new(Limiter::new(limits.concurrency, limits.rpm));
    let progress = Progress::new("generate", todo.len() as u64, Arc::clone(&stats));
    let log = progress.log();
    let socrates = Client::new(
        "socrates",
        socrates_cfg,
        Arc::clone(&limiter),
        limits,
        Arc::clone(&stats),
        log.clone(),
    )?;
    let user = Client::new(
        "user",
        user_cfg,
        Arc::clone(&limiter),
        limits,
        Arc::clone(&stats),
        log.clone(),
    )?;

    let journal = Journal::open(&journal_path, &log)?;
    let started = manifest::now_unix();
    let make_manifest =
        |status: &str, generated: usize, failed: usize| -> Result<serde_json::Value, SynthError> {
            Ok(json!({
                "stage": "generate",
                "status": status,
                "socratune_version": env!("CARGO_PKG_VERSION"),
                "started_at": started,
                "updated_at": manifest::now_unix(),
                "settings_sha256": settings_sha,
                "settings": settings,
                "inputs": {
                    "personas": manifest::input(&opts.personas, personas.len())?,
                    "questions": manifest::input(&opts.questions, questions.len())?,
                },
                "grid": {
                    "temperatures": opts.temperatures,
                    "count": opts.count,
                    "seed": opts.seed,
                    "planned": jobs.len(),
                },
                "counts": {
                    "planned": jobs.len(),
                    "done_before": jobs.len() - todo.len(),
                    "generated": generated,
                    "failed": failed,
                    "calls": manifest::counts(&stats),
                },
                "files": {"out": opts.out, "journal": journal_path, "failures": failures_path},
            }))
        };
    manifest::write(&manifest_path, &make_manifest("running", 0, 0)?)?;

    let halt = Halt::new(&opts.stop);
    let halt_now = || halt.now();
    let ctx = Ctx {
        socrates: &socrates,
        user: &user,
        journal: &journal,
        stats: &stats,
        socrates_prompt: &socrates_prompt,
        user_prompt: &user_prompt,
        socrates_sampling: Sampling::from_config(socrates_cfg),
        user_sampling: Sampling::from_config(user_cfg),
        rounds: opts.rounds,
        retry_failed: opts.retry_failed,
        halt: &halt_now,
    };
    let generated = AtomicUsize::new(0);
    let out = Mutex::new(out_file);
    let failures: Mutex<Vec<Failure>> = Mutex::new(Vec::new());
    progress.start();
    let result = pool::for_each(
        &todo,
        limits.concurrency,
        limits.max_failures_in_a_row,
        &halt,
        |job| {
            let d = run_dialogue(&ctx, job, &personas[job.persona], &questions[job.question])?;
            let mut line =
                serde_json::to_string(&d).map_err(|e| SynthError::Config(e.to_string()))?;
            line.push('\n');
            append_line(
                &mut out.lock().unwrap_or_else(|e| e.into_inner()),
                &opts.out,
                &line,
            )?;
            generated.fetch_add(1, Ordering::SeqCst);
            progress.done();
            Ok(())
        },
        |job, e| {
            log(&format!("{}: failed: {e}", job.id));
            let f = Failure {
                id: job.id.clone(),
                error: e.to_string(),
            };
            failures.lock().unwrap_or_else(|e| e.into_inner()).push(f);
            progress.failed();
        },
    );
    progress.finish();
    drop(out);
    let generated = generated.into_inner();
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    let order: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.id.as_str(), i))
        .collect();
    failures.sort_by_key(|f| order.get(f.id.as_str()).copied());
    if let Err(e) = result {
        manifest::write(
            &manifest_path,
            &make_manifest(&format!("failed: {e}"), generated, failures.len())?,
        )?;
        return Err(e);
    }
    let interrupted = opts.stop.load(Ordering::SeqCst);
    sort_output(&opts.out, &order)?;
    write_jsonl(&failures_path, &failures)?;
    let status = if interrupted {
        "interrupted"
    } else if failures.is_empty() {
        "complete"
    } else {
        "incomplete"
    };
    manifest::write(
        &manifest_path,
        &make_manifest(status, generated, failures.len())?,
    )?;
    Ok(GenerateSummary {
        planned: jobs.len(),
        already_done: jobs.len() - todo.len(),
        generated,
        failures,
        interrupted,
        out: opts.out.clone(),
        failures_file: failures_path,
        stats: stats.summary(),
    })
}

/// Rewrites the output (atomically) in grid order, so that the file does not depend on which
/// worker finished first; dialogues from outside this grid (an earlier, larger run) follow.
fn sort_output(path: &std::path::Path, order: &HashMap<&str, usize>) -> Result<(), SynthError> {
    let loaded = read_jsonl::<Dialogue>(path)?;
    if let Some(b) = loaded.skipped.first() {
        return Err(SynthError::Corpus(b.clone().into()));
    }
    let mut ds: Vec<Dialogue> = loaded.records.into_iter().map(|(_, d)| d).collect();
    ds.sort_by(|a, b| {
        let ka = (
            order.get(a.id.as_str()).copied().unwrap_or(usize::MAX),
            &a.id,
        );
        let kb = (
            order.get(b.id.as_str()).copied().unwrap_or(usize::MAX),
            &b.id,
        );
        ka.cmp(&kb)
    });
    write_jsonl(path, &ds)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::PersonaKind;

    fn persona(id: &str) -> Persona {
        Persona {
            id: id.into(),
            kind: PersonaKind::Ordinary,
            name: id.into(),
            description: "d".into(),
            inherits: None,
        }
    }
    fn question(id: &str) -> Question {
        Question {
            id: id.into(),
            text: format!("{id}?"),
        }
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(dialogue_id("p017", "q05", 0.7), "d-p017-q05-t07");
        assert_eq!(dialogue_id("p017", "q05", 0.3), "d-p017-q05-t03");
        let tags: HashSet<String> = [0.0, 0.05, 0.1, 0.15, 0.5, 1.0, 1.05, 1.5, 2.0]
            .iter()
            .map(|t| temperature_tag(*t))
            .collect();
        assert_eq!(tags.len(), 9);
        assert_eq!(temperature_tag(1.0), "10");
        assert_eq!(temperature_tag(0.25), "025");
    }

    #[test]
    fn grid_covers_everything_or_a_seeded_subset() {
        let ps = vec![persona("p1"), persona("p2"), persona("p3")];
        let qs = vec![question("q1"), question("q2")];
        let all = grid(&ps, &qs, &[0.3, 0.7], None, 0).unwrap();
        assert_eq!(all.len(), 12);
        assert_eq!(all[0].id, "d-p1-q1-t03");
        assert_eq!(all[1].id, "d-p1-q1-t07");
        let a = grid(&ps, &qs, &[0.3, 0.7], Some(5), 42).unwrap();
        let b = grid(&ps, &qs, &[0.3, 0.7], Some(5), 42).unwrap();
        let c = grid(&ps, &qs, &[0.3, 0.7], Some(5), 43).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 5);
        let pos: Vec<usize> = a
            .iter()
            .map(|j| all.iter().position(|x| x.id == j.id).unwrap())
            .collect();
        assert!(
            pos.windows(2).all(|w| w[0] < w[1]),
            "kept in grid order: {pos:?}"
        );
        assert!(grid(&ps, &qs, &[0.3], Some(7), 0)
            .unwrap_err()
            .to_string()
            .contains("more than the grid holds"));
        assert!(grid(&ps, &qs, &[0.3, 0.30], None, 0).is_err());
        assert!(grid(&ps, &qs, &[0.333], None, 0).is_err());
    }

    #[test]
    fn each_side_sees_itself_as_assistant() {
        let turns = vec![
            Turn {
                role: Role::User,
                text: "Q".into(),
            },
            Turn {
                role: Role::Model,
                text: "S1".into(),
            },
            Turn {
                role: Role::User,
                text: "U1".into(),
            },
        ];
        let roles = |ms: Vec<Message>| ms.into_iter().map(|m| m.role).collect::<Vec<_>>();
        assert_eq!(
            roles(perspective("sys", &turns, Role::Model)),
            ["system", "user", "assistant", "user"]
        );
        assert_eq!(
            roles(perspective("sys", &turns[..2], Role::User)),
            ["system", "assistant", "user"]
        );
    }
}
