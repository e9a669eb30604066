//! The demo's last act: the best run and the base model answer the same two lines — the fixed
//! opening question and a user's follow-up — through `chat`'s own session (the run's window
//! and prefix, `configs/chat.toml`'s sampling, a fixed seed), so what differs is the adapter.

use super::{DemoError, SAMPLE};
use crate::chat::load::{load_base, prompt_format, ModelSpec, PromptChoice, RunInfo};
use crate::chat::session::{sampling, Branch, ChatConfig};
use crate::chat::{Opening, Session};
use crate::corpus::{Dialogue, Role};
use crate::eval::report::is_question;
use crate::eval::stats::Estimate;
use crate::model::generate::SamplingRequest;
use serde::{Deserialize, Serialize};
use std::path::Path;

const CHAT_CONFIG: &str = include_str!("../../configs/chat.toml");
/// The user's follow-up: (dialogue id, turn) in `data/dialogues/sample.jsonl`. A line of a
/// dialogue the demo's split holds out, so no run was trained on Socrates' reply to it.
pub const FOLLOW_UP: (&str, usize) = ("d0018", 10);
/// Seed of the first reply; each later one adds its turn number, as in `chat`.
const SEED: u64 = 0;

/// What the demo's best run and the base model said (`exchanges.md`, and in `demo.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Exchanges {
    /// The best run's name.
    pub best: String,
    pub opening: String,
    /// The opening's question id.
    pub question: String,
    pub follow_up: String,
    /// Where the follow-up comes from.
    pub follow_up_source: String,
    /// The window and prefix both were prompted with (the best run's).
    pub format: String,
    pub temperature: f64,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// The base model first, then the best run.
    pub speakers: Vec<Speaker>,
    /// Held-out prompts of the demo's eval (the denominator of `eval_question_share`).
    pub eval_prompts: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Speaker {
    /// `base` or the run's name.
    pub name: String,
    /// The reply to the opening, then to the follow-up (empty: no reply).
    pub replies: Vec<String>,
    /// Replies here that end in a question (eval's judge-free test).
    pub questions: usize,
    /// Share of its eval replies that end in a question.
    pub eval_question_share: Option<Estimate>,
}

/// The follow-up line: turn [`FOLLOW_UP`] of the shipped sample dialogues.
pub fn follow_up() -> Result<String, DemoError> {
    let (id, turn) = FOLLOW_UP;
    SAMPLE
        .lines()
        .filter_map(|l| serde_json::from_str::<Dialogue>(l).ok())
        .find(|d| d.id == id)
        .and_then(|d| d.turns.into_iter().nth(turn))
        .filter(|t| t.role == Role::User)
        .map(|t| t.text)
        .ok_or_else(|| {
            DemoError::Refused(format!(
                "data/dialogues/sample.jsonl: no user turn {turn} in dialogue {id}"
            ))
        })
}

/// The base model and `best` (a finished run under `runs`) answer the opening of
/// `configs/chat.toml` and the follow-up, each with the best run's prompt format.
/// `eval`: the demo's eval report, for the question shares over its held-out prompts.
pub fn talk(
    runs: &Path,
    best: &str,
    eval: &crate::eval::EvalReport,
    max_new_tokens: usize,
) -> Result<Exchanges, DemoError> {
    let cfg: ChatConfig = toml::from_str(CHAT_CONFIG).expect("the shipped chat.toml parses");
    let opening = Opening {
        text: cfg.opening.clone().expect("chat.toml has an opening"),
        question: cfg.question.clone().unwrap_or_else(|| "custom".into()),
    };
    let follow = follow_up()?;
    // As `chat --max-new-tokens N --seed 0` would: the flag over the config's sampling.
    let flags = SamplingRequest {
        max_new_tokens: Some(max_new_tokens),
        seed: Some(SEED),
        ..Default::default()
    };
    let params = sampling(&flags.or(&cfg.sampling))?;

    let adapter = crate::rundir::RunDir::of(runs, best).best();
    let info = RunInfo::find(&adapter)?;
    let loaded = load_base(
        &ModelSpec {
            device: "cpu".into(),
            dtype: "f32".into(),
            ..Default::default()
        },
        &[adapter.as_path()],
        &[info.as_ref()],
    )?;
    let (format, variant) =
        prompt_format(&PromptChoice::default(), info.as_ref().map(|i| &i.variant))?;
    // The base model gets the best run's window and prefix too: the prompts are identical.
    let branches = vec![
        Branch::new(None, variant.clone(), format.clone()),
        Branch::new(Some(adapter), variant, format.clone()),
    ];
    let mut session = Session::new(
        loaded.model,
        loaded.tokenizer,
        loaded.base,
        branches,
        opening.clone(),
        params.clone(),
    );
    session.check_adapters()?;
    let (mut shown, mut notes) = (Vec::new(), Vec::new());
    session.run(
        std::io::Cursor::new(format!("{follow}\n")),
        &mut shown,
        &mut notes,
        false,
    )?;
    let speakers = session
        .branches()
        .iter()
        .zip([crate::eval::BASE, best])
        .map(|(b, name)| {
            // Turns: opening, reply, follow-up, reply (the follow-up goes if its reply was empty).
            let replies: Vec<String> = [1, 3]
                .iter()
                .map(|&k| b.turns.get(k).map(|u| u.text.clone()).unwrap_or_default())
                .collect();
            Speaker {
                name: name.to_string(),
                questions: replies.iter().filter(|r| is_question(r)).count(),
                replies,
                eval_question_share: eval
                    .entries
                    .iter()
                    .find(|e| e.name == name)
                    .and_then(|e| e.question_share),
            }
        })
        .collect();
    Ok(Exchanges {
        best: best.to_string(),
        opening: opening.text,
        question: opening.question,
        follow_up: follow,
        follow_up_source: format!(
            "data/dialogues/sample.jsonl, dialogue {} (held out), turn {}",
            FOLLOW_UP.0, FOLLOW_UP.1
        ),
        format: format.describe(),
        temperature: params.temperature,
        seed: SEED,
        max_new_tokens,
        speakers,
        eval_prompts: eval.prompts,
    })
}

/// The exchanges as Markdown (also what the demo prints last).
pub fn markdown(x: &Exchanges) -> String {
    let mut md = format!(
        "# Talking: the base model and {} (best)\n\n\
Both answer the same two lines through `socratune chat`'s code, prompted the same way ({}), \
sampled as in `configs/chat.toml` (temperature {}) with seed {} and at most {} new tokens; \
only the adapter differs.\n\n",
        x.best, x.format, x.temperature, x.seed, x.max_new_tokens
    );
    let label = |s: &Speaker| {
        if s.name == crate::eval::BASE {
            "base".to_string()
        } else {
            format!("{} (best)", s.name)
        }
    };
    let lines = [
        (
            format!("the opening, `configs/chat.toml` ({})", x.question),
            &x.opening,
        ),
        (
            format!("the follow-up, {}", x.follow_up_source),
            &x.follow_up,
        ),
    ];
    for (k, (source, line)) in lines.iter().enumerate() {
        md.push_str(&format!("**User** ({source}): {}\n\n", one_line(line)));
        for s in &x.speakers {
            let reply = s.replies.get(k).map(String::as_str).unwrap_or_default();
            let reply = if reply.is_empty() {
                "(no reply)".to_string()
            } else {
                one_line(reply)
            };
            md.push_str(&format!("- **{}**: {reply}\n", label(s)));
        }
        md.push('\n');
    }
    let shares: Vec<String> = x
        .speakers
        .iter()
        .map(|s| {
            let eval = s.eval_question_share.map_or("–".into(), |e| {
                format!(
                    "{:.0} % [{:.0}, {:.0}]",
                    100.0 * e.value,
                    100.0 * e.low,
                    100.0 * e.high
                )
            });
            format!(
                "{} {} of {} here, {eval} of its {} eval replies",
                label(s),
                s.questions,
                s.replies.len(),
                x.eval_prompts
            )
        })
        .collect();
    md.push_str(&format!(
        "Replies that end in a question (eval's judge-free column): {}.\n",
        shares.join("; ")
    ));
    md
}

/// A reply on one line of Markdown: newlines as spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_follow_up_is_a_user_line_of_the_sample() {
        let line = follow_up().unwrap();
        assert!(line.starts_with("考えることは"), "{line}");
    }

    #[test]
    fn exchanges_read_as_markdown_with_the_question_shares() {
        let speaker = |name: &str, replies: [&str; 2]| Speaker {
            name: name.into(),
            questions: replies.iter().filter(|r| is_question(r)).count(),
            replies: replies.map(String::from).to_vec(),
            eval_question_share: Some(Estimate {
                value: 0.25,
                low: 0.0,
                high: 0.5,
            }),
        };
        let x = Exchanges {
            best: "model8".into(),
            opening: "正義とは何だろうか？".into(),
            question: "q01".into(),
            follow_up: "考えることは\n大事です。".into(),
            follow_up_source: "sample d0018, turn 10".into(),
            format: "2 pairs, prefix \"P\"".into(),
            temperature: 0.7,
            seed: 0,
            max_new_tokens: 48,
            speakers: vec![
                speaker("base", ["はい。", ""]),
                speaker("model8", ["きみはどう思う？", "なぜだろうか」"]),
            ],
            eval_prompts: 4,
        };
        let md = markdown(&x);
        assert!(md.contains("考えることは 大事です。"), "{md}");
        assert!(md.contains("- **base**: (no reply)"), "{md}");
        assert!(md.contains("- **model8 (best)**: きみはどう思う？"), "{md}");
        assert!(
            md.contains("base 0 of 2 here, 25 % [0, 50] of its 4 eval replies")
                && md.contains("model8 (best) 1 of 2 here"),
            "{md}"
        );
    }
}
