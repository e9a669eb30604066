//! `runs/eval.json` and `runs/eval.md`: per entry the judged means with 95 % bootstrap
//! intervals, the judge-free columns (questions, length), the win rate against the base
//! model, the Bradley–Terry ranking in pairwise mode, the rank agreement with
//! `common_val_loss`, and what the judge cost.

use super::config::EvalConfig;
use super::judging::{reply_id, Judged};
use super::pairwise::Verdict;
use super::prompts::EvalPrompt;
use super::replies::{prompt_seed, AllReplies, Speed};
use super::stats::{bootstrap_mean, bradley_terry_bootstrap, rng, spearman, Estimate, Ranked};
use super::{Entry, Result, BASE};
use crate::fsutil::{write_atomic, write_json};
use crate::model::generate::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntryReport {
    pub name: String,
    pub adapter: Option<String>,
    pub variant: Option<String>,
    /// The window and prefix its prompts were rendered with.
    pub prompt_format: String,
    pub common_val_loss: Option<f64>,
    pub replies: usize,
    /// Replies with no text (scored 0 on both scales, never sent to the judge).
    pub empty: usize,
    /// Replies that hit max_new_tokens.
    pub cut_off: usize,
    /// Share of replies whose last character is a question mark.
    pub question_share: Option<Estimate>,
    pub mean_chars: f64,
    pub mean_tokens: f64,
    /// How fast this run's new replies were generated (None: all were stored already).
    pub speed: Option<Speed>,
    /// Replies with a judge score (empty ones included, at 0).
    pub judged: usize,
    pub socratic: Option<Estimate>,
    pub coherence: Option<Estimate>,
    /// (socratic + coherence) / 2 per reply, 0–4.
    pub score: Option<Estimate>,
    /// Per prompt against the base model's reply: 1 a higher score, ½ the same, 0 lower.
    pub win_vs_base: Option<Estimate>,
    /// Pairwise mode: Bradley–Terry strength and rank.
    pub pairwise: Option<Ranked>,
    /// Pairwise mode: share of the comparisons with the base model this entry won.
    pub pairwise_win_vs_base: Option<Estimate>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub name: String,
    /// `bradley_terry` (pairwise strength) or `score` (mean judged score).
    pub by: String,
    pub value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Spearman's ρ between the judged ranking and the common-val-loss ranking (lower loss
    /// ranked first): 1 = the same order, −1 = reversed.
    pub spearman: f64,
    pub runs: usize,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    pub prompts: usize,
    pub seed: u64,
    pub resamples: usize,
    pub sampling: Value,
    /// None with `--judge none`.
    pub judge: Option<Value>,
    pub entries: Vec<EntryReport>,
    /// The best run (never the base model) by the judged score, when there is one.
    pub best: Option<Best>,
    pub rank_agreement: Option<Agreement>,
}

pub struct Inputs<'a> {
    pub entries: &'a [Entry],
    pub prompts: &'a [EvalPrompt],
    pub replies: &'a AllReplies,
    pub judged: Option<&'a Judged>,
    pub pairwise: Option<&'a (Vec<Verdict>, usize, Value)>,
    pub config: &'a EvalConfig,
    pub params: &'a SamplingParams,
}

/// Whether a reply ends in a question: its last character, after closing quotes and
/// brackets, is `?` or `？`.
pub fn is_question(text: &str) -> bool {
    let t = text.trim_end_matches(|c: char| {
        c.is_whitespace() || matches!(c, '」' | '』' | '"' | '\'' | ')' | '）' | '”' | '’')
    });
    t.ends_with('?') || t.ends_with('？')
}

pub fn build(i: Inputs) -> EvalReport {
    let cfg = i.config;
    let n = i.prompts.len();
    let base_idx = i.entries.iter().position(|e| e.name == BASE);
    // Per entry and prompt: (socratic, coherence), when judged.
    let scores: Vec<Vec<Option<(f64, f64)>>> = i
        .entries
        .iter()
        .enumerate()
        .map(|(e, entry)| {
            (0..n)
                .map(|p| {
                    let judged = i.judged?;
                    let g = &i.replies.replies[e][p];
                    if g.reply.trim().is_empty() {
                        return Some((0.0, 0.0));
                    }
                    let j = judged.scores.get(&reply_id(&entry.name, &g.prompt))?;
                    Some((j.socratic as f64, j.coherence as f64))
                })
                .collect()
        })
        .collect();
    let ranked = i.pairwise.map(|(verdicts, _, _)| {
        let index: HashMap<&str, usize> = i
            .entries
            .iter()
            .enumerate()
            .map(|(k, e)| (e.name.as_str(), k))
            .collect();
        let mut groups: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        for v in verdicts {
            let (a, b) = (index[v.a.as_str()], index[v.b.as_str()]);
            let pair = if v.winner == v.a { (a, b) } else { (b, a) };
            groups.entry(v.prompt.as_str()).or_default().push(pair);
        }
        let groups: Vec<Vec<(usize, usize)>> = i
            .prompts
            .iter()
            .filter_map(|p| groups.remove(p.id.as_str()))
            .collect();
        bradley_terry_bootstrap(
            i.entries.len(),
            &groups,
            cfg.bt_prior,
            cfg.resamples,
            &mut rng(cfg.seed),
        )
    });
    let mut entries = Vec::new();
    for (e, entry) in i.entries.iter().enumerate() {
        let mut r = rng(prompt_seed(cfg.seed, &entry.name));
        let rs = &i.replies.replies[e];
        let count = rs.len().max(1) as f64;
        let questions: Vec<f64> = rs
            .iter()
            .map(|g| f64::from(is_question(&g.reply) as u8))
            .collect();
        let judged: Vec<(f64, f64)> = scores[e].iter().flatten().copied().collect();
        let col = |f: fn(&(f64, f64)) -> f64| judged.iter().map(f).collect::<Vec<f64>>();
        let score = |s: &(f64, f64)| (s.0 + s.1) / 2.0;
        let win_vs_base = base_idx.filter(|&b| b != e).and_then(|b| {
            let outcomes: Vec<f64> = (0..n)
                .filter_map(|p| {
                    let (x, y) = (scores[e][p]?, scores[b][p]?);
                    Some(match score(&x).total_cmp(&score(&y)) {
                        std::cmp::Ordering::Greater => 1.0,
                        std::cmp::Ordering::Equal => 0.5,
                        std::cmp::Ordering::Less => 0.0,
                    })
                })
                .collect();
            bootstrap_mean(&outcomes, cfg.resamples, &mut r)
        });
        let pairwise_win_vs_base = match (i.pairwise, base_idx) {
            (Some((verdicts, _, _)), Some(b)) if b != e => {
                let base = &i.entries[b].name;
                let outcomes: Vec<f64> = i
                    .prompts
                    .iter()
                    .filter_map(|p| {
                        let won: Vec<f64> = verdicts
                            .iter()
                            .filter(|v| v.prompt == p.id)
                            .filter(|v| {
                                (v.a == entry.name && &v.b == base)
                                    || (&v.a == base && v.b == entry.name)
                            })
                            .map(|v| f64::from((v.winner == entry.name) as u8))
                            .collect();
                        (!won.is_empty()).then(|| won.iter().sum::<f64>() / won.len() as f64)
                    })
                    .collect();
                bootstrap_mean(&outcomes, cfg.resamples, &mut r)
            }
            _ => None,
        };
        entries.push(EntryReport {
            name: entry.name.clone(),
            adapter: entry.adapter.as_ref().map(|a| a.display().to_string()),
            variant: entry.variant.clone(),
            prompt_format: entry.format.describe(),
            common_val_loss: entry.common_val_loss,
            replies: rs.len(),
            empty: rs.iter().filter(|g| g.reply.trim().is_empty()).count(),
            cut_off: rs.iter().filter(|g| g.finish == "length").count(),
            question_share: bootstrap_mean(&questions, cfg.resamples, &mut r),
            mean_chars: rs.iter().map(|g| g.reply.chars().count()).sum::<usize>() as f64 / count,
            mean_tokens: rs.iter().map(|g| g.reply_tokens).sum::<usize>() as f64 / count,
            speed: i.replies.speed[e],
            judged: judged.len(),
            socratic: bootstrap_mean(&col(|s| s.0), cfg.resamples, &mut r),
            coherence: bootstrap_mean(&col(|s| s.1), cfg.resamples, &mut r),
            score: bootstrap_mean(&col(score), cfg.resamples, &mut r),
            win_vs_base,
            pairwise: ranked.as_ref().map(|rk| rk[e].clone()),
            pairwise_win_vs_base,
        });
    }
    let by = if ranked.is_some() {
        "bradley_terry"
    } else {
        "score"
    };
    let judged_value = |r: &EntryReport| judged_value(r, by);
    let best = entries
        .iter()
        .filter(|r| r.name != BASE)
        .filter_map(|r| Some((r, judged_value(r)?)))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(r, v)| Best {
            name: r.name.clone(),
            by: by.into(),
            value: v,
        });
    let both: Vec<(f64, f64)> = entries
        .iter()
        .filter_map(|r| Some((judged_value(r)?, -r.common_val_loss?)))
        .collect();
    let rank_agreement = spearman(
        &both.iter().map(|x| x.0).collect::<Vec<_>>(),
        &both.iter().map(|x| x.1).collect::<Vec<_>>(),
    )
    .map(|rho| Agreement {
        spearman: rho,
        runs: both.len(),
        by: by.into(),
    });
    let judge = i.judged.map(|j| {
        let mut v = json!({
            "failed": j.failed,
            "calls": j.counts,
            "judged_file": j.file,
        });
        if let Some((verdicts, failed, counts)) = i.pairwise {
            v["pairwise"] = json!({"verdicts": verdicts.len(), "failed": failed, "calls": counts});
        }
        v
    });
    let p = i.params;
    EvalReport {
        prompts: n,
        seed: cfg.seed,
        resamples: cfg.resamples,
        sampling: json!({
            "temperature": p.temperature,
            "top_p": p.top_p,
            "top_k": p.top_k,
            "repetition_penalty": p.repetition_penalty,
            "max_new_tokens": p.max_new_tokens,
        }),
        judge,
        entries,
        best,
        rank_agreement,
    }
}

/// What "best" means: the pairwise strength (`by` = `bradley_terry`) or the mean score.
fn judged_value(r: &EntryReport, by: &str) -> Option<f64> {
    if by == "bradley_terry" {
        r.pairwise
            .as_ref()
            .map(|p| p.strength.value)
            .filter(|v| v.is_finite())
    } else {
        r.score.map(|s| s.value)
    }
}

fn ci(e: &Option<Estimate>, digits: usize) -> String {
    match e {
        Some(e) => format!(
            "{:.d$} [{:.d$}, {:.d$}]",
            e.value,
            e.low,
            e.high,
            d = digits
        ),
        None => "–".into(),
    }
}

fn pct(e: &Option<Estimate>) -> String {
    match e {
        Some(e) => format!(
            "{:.0} % [{:.0}, {:.0}]",
            100.0 * e.value,
            100.0 * e.low,
            100.0 * e.high
        ),
        None => "–".into(),
    }
}

fn loss(x: Option<f64>) -> String {
    x.map_or("–".into(), |v| format!("{v:.4}"))
}

fn calls_line(label: &str, c: &Value) -> String {
    let g = |v: &Value, k: &str| v[k].as_u64().unwrap_or(0);
    let s = &c["spent"];
    format!(
        "{label}: {} calls now ({} answered from the journal, {} failed), {} prompt + {} completion tokens; \
in all (the journal): {} calls, {} prompt + {} completion tokens.\n",
        g(c, "calls"),
        g(c, "replayed"),
        g(c, "failed_calls"),
        g(c, "prompt_tokens"),
        g(c, "completion_tokens"),
        g(s, "calls"),
        g(s, "prompt_tokens"),
        g(s, "completion_tokens")
    )
}

pub fn markdown(r: &EvalReport) -> String {
    let mut md = String::from("# Eval: what the runs say\n\n");
    let s = &r.sampling;
    md.push_str(&format!(
        "{} held-out prompts (user turns of the dialogues every run held out), the same for every run; \
sampling: temperature {}, top-p {}, top-k {}, max {} new tokens, seed {}. Intervals: 95 % percentile bootstrap \
over prompts ({} resamples).\n\n",
        r.prompts,
        s["temperature"],
        s["top_p"],
        s["top_k"],
        s["max_new_tokens"],
        r.seed,
        r.resamples
    ));
    let judged = r.judge.is_some();
    if judged {
        md.push_str("| run | common val loss | score (0–4) | socratic | coherence | win vs base | ends in ? | mean length (chars) | cut off | judged |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    } else {
        md.push_str("| run | common val loss | ends in ? | mean length (chars) | mean length (tokens) | cut off | empty |\n");
        md.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
    }
    for e in &r.entries {
        if judged {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.0} | {} | {} / {} |\n",
                e.name,
                loss(e.common_val_loss),
                ci(&e.score, 2),
                ci(&e.socratic, 2),
                ci(&e.coherence, 2),
                pct(&e.pairwise_win_vs_base.or(e.win_vs_base)),
                pct(&e.question_share),
                e.mean_chars,
                e.cut_off,
                e.judged,
                e.replies
            ));
        } else {
            md.push_str(&format!(
                "| {} | {} | {} | {:.0} | {:.1} | {} | {} |\n",
                e.name,
                loss(e.common_val_loss),
                pct(&e.question_share),
                e.mean_chars,
                e.mean_tokens,
                e.cut_off,
                e.empty
            ));
        }
    }
    md.push('\n');
    if r.entries
        .iter()
        .any(|e| e.name == BASE && e.common_val_loss.is_none())
    {
        md.push_str(
            "The base model's common val loss is read from `base.json` (its score on each run's \
held-out text, written by `socratune demo`) for a run formatted with the base's prefix; there is none \
here, hence –.\n\n",
        );
    }
    if r.entries.iter().any(|e| e.pairwise.is_some()) {
        md.push_str("## Pairwise ranking (Bradley–Terry)\n\n");
        md.push_str(
            "The judge chose the more Socratic of two replies to the same prompt, in both orders. \
Strength: log-odds scale, mean 0; P(a beats b) = 1 / (1 + e^(b − a)).\n\n",
        );
        md.push_str("| rank | run | strength | rank interval |\n|---:|---|---:|---:|\n");
        let mut ranked: Vec<&EntryReport> =
            r.entries.iter().filter(|e| e.pairwise.is_some()).collect();
        ranked.sort_by_key(|e| e.pairwise.as_ref().map_or(usize::MAX, |p| p.rank));
        for e in ranked {
            let p = e.pairwise.as_ref().expect("filtered");
            md.push_str(&format!(
                "| {} | {} | {} | {:.0}–{:.0} |\n",
                p.rank,
                e.name,
                ci(&Some(p.strength), 2),
                p.rank_low,
                p.rank_high
            ));
        }
        md.push('\n');
    }
    if let Some(a) = &r.rank_agreement {
        md.push_str(&format!(
            "Rank agreement between the judged ranking ({}) and common val loss over {} runs: Spearman ρ = {:.2} \
(1: the same order; near 0 or below: loss does not predict what the judge prefers).\n\n",
            if a.by == "bradley_terry" { "pairwise strength" } else { "mean score" },
            a.runs,
            a.spearman
        ));
    }
    match &r.best {
        Some(b) => {
            let base = r
                .entries
                .iter()
                .find(|e| e.name == BASE)
                .and_then(|e| judged_value(e, &b.by));
            let note = match base {
                Some(v) if v > b.value => " The base model is judged higher than every run.",
                _ => "",
            };
            md.push_str(&format!(
                "**Best by judged {}: {}** ({:.2}).{note}\n\n",
                if b.by == "bradley_terry" {
                    "pairwise strength"
                } else {
                    "score"
                },
                b.name,
                b.value
            ))
        }
        None if judged => md.push_str("No run has a judged score.\n\n"),
        None => md.push_str(
            "Not judged (`--judge none`): the columns above need no judge; read the replies in \
`eval/dialogues.jsonl` or judge them with `socratune eval` and a `[judge]` endpoint.\n\n",
        ),
    }
    if let Some(j) = &r.judge {
        md.push_str(&calls_line("Judge", &j["calls"]));
        if j["failed"].as_u64().unwrap_or(0) > 0 {
            md.push_str(&format!(
                "{} replies got no valid judgement (see `eval/judged.failures.jsonl`); rerun to ask again.\n",
                j["failed"]
            ));
        }
        if let Some(p) = j.get("pairwise") {
            md.push_str(&calls_line("Pairwise", &p["calls"]));
        }
        md.push('\n');
    }
    let fast: Vec<&EntryReport> = r.entries.iter().filter(|e| e.speed.is_some()).collect();
    if !fast.is_empty() {
        md.push_str("| generation | new replies | batch | seconds | prompts/s | tokens/s |\n|---|---:|---:|---:|---:|---:|\n");
        for e in fast {
            let s = e.speed.expect("filtered");
            md.push_str(&format!(
                "| {} | {} | {} | {:.1} | {:.2} | {:.1} |\n",
                e.name, s.generated, s.batch_size, s.seconds, s.prompts_per_s, s.tokens_per_s
            ));
        }
        md.push('\n');
    }
    md
}

/// Writes `runs/eval.json` and `runs/eval.md`, each atomically.
pub fn write(runs: &Path, r: &EvalReport) -> Result<()> {
    write_json(&super::report_json(runs), r)?;
    write_atomic(&runs.join("eval.md"), markdown(r).as_bytes())?;
    Ok(())
}

/// `runs/eval.json`, when there is one that reads.
pub fn read(runs: &Path) -> Option<EvalReport> {
    let text = std::fs::read_to_string(super::report_json(runs)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::PromptFormat;
    use crate::corpus::{Dialogue, Judge, Role, Turn};
    use crate::eval::replies::Generated;

    fn entry(name: &str, loss: Option<f64>) -> Entry {
        Entry {
            name: name.into(),
            adapter: None,
            base: "m".into(),
            format: PromptFormat::whole(),
            variant: None,
            common_val_loss: loss,
            split: None,
        }
    }

    fn prompt(i: usize) -> EvalPrompt {
        EvalPrompt {
            id: format!("d{i}#p0"),
            dialogue: Dialogue {
                id: format!("d{i}"),
                persona: "p".into(),
                question: "q".into(),
                user_temperature: 0.3,
                turns: vec![Turn {
                    role: Role::User,
                    text: "問い".into(),
                }],
                judge: None,
                review: None,
                extra: Default::default(),
            },
            pair: 0,
        }
    }

    fn reply(p: &EvalPrompt, text: &str) -> Generated {
        Generated {
            prompt: p.id.clone(),
            key: "k".into(),
            reply: text.into(),
            reply_tokens: text.chars().count(),
            prompt_tokens: 5,
            dropped: 0,
            finish: "stop".into(),
        }
    }

    /// The report of `entries` on `prompts` with these replies (one list an entry), judge
    /// scores and pairwise verdicts, under the default config and sampling.
    fn report(
        entries: &[Entry],
        prompts: &[EvalPrompt],
        replies: Vec<Vec<Generated>>,
        scores: HashMap<String, Judge>,
        pairwise: Option<&(Vec<Verdict>, usize, Value)>,
    ) -> EvalReport {
        let judged = Judged {
            scores,
            failed: 0,
            counts: json!({}),
            file: "j".into(),
        };
        let all = AllReplies {
            speed: vec![None; replies.len()],
            replies,
        };
        build(Inputs {
            entries,
            prompts,
            replies: &all,
            judged: Some(&judged),
            pairwise,
            config: &EvalConfig::default(),
            params: &SamplingParams::default(),
        })
    }

    #[test]
    fn scores_wins_against_base_best_and_rank_agreement_by_hand() {
        let entries = [
            entry(BASE, None),
            entry("a", Some(2.0)),
            entry("b", Some(1.0)),
        ];
        let prompts: Vec<EvalPrompt> = (0..3).map(prompt).collect();
        // Scores (socratic, coherence) per prompt; "" is an empty reply (0, 0, no call).
        let plan: [[(&str, u8, u8); 3]; 3] = [
            [("そうだ。", 2, 2), ("", 0, 0), ("なぜ？", 3, 3)], // base
            [("なぜかね？", 3, 3), ("それは？", 1, 1), ("ふむ。", 3, 3)], // a
            [("どうして？", 4, 4), ("君は？", 4, 2), ("本当に？", 4, 4)], // b
        ];
        let mut scores = HashMap::new();
        let replies: Vec<Vec<Generated>> = plan
            .iter()
            .zip(&entries)
            .map(|(row, e)| {
                row.iter()
                    .zip(&prompts)
                    .map(|((text, s, c), p)| {
                        if !text.is_empty() {
                            scores.insert(
                                reply_id(&e.name, &p.id),
                                Judge {
                                    socratic: *s,
                                    coherence: *c,
                                    comment: "c".into(),
                                    model: None,
                                    extra: Default::default(),
                                },
                            );
                        }
                        reply(p, text)
                    })
                    .collect()
            })
            .collect();
        let r = report(&entries, &prompts, replies, scores, None);
        let by = |n: &str| r.entries.iter().find(|e| e.name == n).unwrap();
        // base: the empty reply counts as 0 on both scales; socratic (2 + 0 + 3) / 3.
        assert_eq!(by(BASE).empty, 1);
        assert_eq!(by(BASE).judged, 3);
        assert!((by(BASE).socratic.unwrap().value - 5.0 / 3.0).abs() < 1e-12);
        // a against base, per prompt: 3 > 2 win, 1 > 0 win, 3 = 3 tie: (1 + 1 + ½) / 3.
        assert!((by("a").win_vs_base.unwrap().value - 2.5 / 3.0).abs() < 1e-12);
        assert_eq!(by("b").win_vs_base.unwrap().value, 1.0);
        assert!(by(BASE).win_vs_base.is_none());
        // b: scores 4, 3, 4 → 11 / 3; question share 3 / 3; a: 2 / 3.
        assert!((by("b").score.unwrap().value - 11.0 / 3.0).abs() < 1e-12);
        assert_eq!(by("b").question_share.unwrap().value, 1.0);
        assert!((by("a").question_share.unwrap().value - 2.0 / 3.0).abs() < 1e-12);
        // The best run is b (never the base model); b also has the lower loss: ρ = 1.
        let best = r.best.as_ref().unwrap();
        assert_eq!((best.name.as_str(), best.by.as_str()), ("b", "score"));
        let a = r.rank_agreement.as_ref().unwrap();
        assert_eq!((a.spearman, a.runs), (1.0, 2));
        let md = markdown(&r);
        assert!(md.contains("**Best by judged score: b**"), "{md}");
        assert!(md.contains("Spearman ρ = 1.00"), "{md}");
    }

    #[test]
    fn pairwise_verdicts_rank_the_winner_first() {
        let entries = [
            entry(BASE, None),
            entry("a", Some(1.0)),
            entry("b", Some(2.0)),
        ];
        let prompts: Vec<EvalPrompt> = (0..4).map(prompt).collect();
        let replies: Vec<Vec<Generated>> = (0..3)
            .map(|_| prompts.iter().map(|p| reply(p, "なぜ？")).collect())
            .collect();
        // On every prompt, in both orders: b beats a and base, a beats base.
        let mut verdicts = Vec::new();
        for p in &prompts {
            for (w, l) in [("b", "a"), ("b", BASE), ("a", BASE)] {
                for (x, y) in [(w, l), (l, w)] {
                    verdicts.push(Verdict {
                        prompt: p.id.clone(),
                        a: x.into(),
                        b: y.into(),
                        winner: w.into(),
                        comment: "c".into(),
                    });
                }
            }
        }
        let pairwise = (verdicts, 0, json!({}));
        let r = report(&entries, &prompts, replies, HashMap::new(), Some(&pairwise));
        let rank = |n: &str| {
            let e = r.entries.iter().find(|e| e.name == n).unwrap();
            (e.pairwise.as_ref().unwrap().rank, e.pairwise_win_vs_base)
        };
        assert_eq!(rank("b").0, 1);
        assert_eq!(rank("a").0, 2);
        assert_eq!(rank(BASE).0, 3);
        assert_eq!(rank("b").1.unwrap().value, 1.0);
        assert_eq!(rank("a").1.unwrap().value, 1.0);
        let best = r.best.as_ref().unwrap();
        assert_eq!(
            (best.name.as_str(), best.by.as_str()),
            ("b", "bradley_terry")
        );
        // b is judged best but has the higher loss: the two rankings disagree.
        assert_eq!(r.rank_agreement.as_ref().unwrap().spearman, -1.0);
        assert!(markdown(&r).contains("| 1 | b |"));
    }

    #[test]
    fn questions_are_recognised_through_closing_quotes() {
        for q in [
            "君はどう思う？",
            "Why?",
            "「なぜだろうか？」",
            "本当にそうかね？ ",
            "what?)",
        ] {
            assert!(is_question(q), "{q}");
        }
        for s in ["そうだ。", "", "？と言った。", "なぜ?か"] {
            assert!(!is_question(s), "{s}");
        }
    }
}
