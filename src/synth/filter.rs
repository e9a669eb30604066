//! `synth filter`: the kept dialogues (the keep rule: a review decides; without one, both
//! judge scores ≥ 3), with a report of why each other dialogue was dropped, near-duplicate
//! pairs among the kept ones (optionally dropping the later of each), and coverage of
//! personas, questions and temperatures.

use super::judge::same_file;
use super::minhash::{near_duplicates, MinHashParams};
use super::{sidecar, SynthError};
use crate::corpus::{
    load_dialogues, load_personas, load_questions, write_jsonl, Catalog, Dialogue, LoadOptions,
};
use crate::fsutil::write_atomic;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct FilterOptions {
    pub input: PathBuf,
    pub out: PathBuf,
    pub personas: PathBuf,
    pub questions: PathBuf,
    /// Count dialogues without scores or review as kept.
    pub include_unjudged: bool,
    /// Report pairs at or above this Jaccard similarity.
    pub dup_threshold: f64,
    /// Also drop the later dialogue of each such pair.
    pub drop_duplicates: bool,
    pub minhash: MinHashParams,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Duplicate {
    pub first: String,
    pub second: String,
    pub jaccard: f64,
    pub estimate: f64,
}

#[derive(Debug, Default)]
pub struct FilterSummary {
    pub total: usize,
    pub kept: usize,
    /// (dialogue id, reason), in file order.
    pub dropped: Vec<(String, String)>,
    pub duplicates: Vec<Duplicate>,
    pub missing_personas: Vec<String>,
    pub missing_questions: Vec<String>,
    pub report: String,
    pub report_file: PathBuf,
}

/// The text compared for near-duplicates: everything after the opening question, which
/// dialogues on the same question share by design.
fn dup_text(d: &Dialogue) -> String {
    d.turns
        .iter()
        .skip(1)
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn filter(opts: &FilterOptions) -> Result<FilterSummary, SynthError> {
    if same_file(&opts.input, &opts.out) {
        return Err(SynthError::Config(format!(
            "--out {} is the input; write a new file",
            opts.out.display()
        )));
    }
    let catalog = Catalog {
        personas: load_personas(&opts.personas)?,
        questions: load_questions(&opts.questions)?,
    };
    let loaded = load_dialogues(
        &opts.input,
        LoadOptions {
            skip_bad: false,
            catalog: Some(&catalog),
        },
    )?;
    let dialogues: Vec<Dialogue> = loaded.records.into_iter().map(|(_, d)| d).collect();

    let mut dropped: BTreeMap<usize, String> = BTreeMap::new();
    for (i, d) in dialogues.iter().enumerate() {
        if let Some(r) = d.drop_reason(opts.include_unjudged) {
            dropped.insert(i, r);
        }
    }
    let kept_idx: Vec<usize> = (0..dialogues.len())
        .filter(|i| !dropped.contains_key(i))
        .collect();
    let texts: Vec<String> = kept_idx.iter().map(|&i| dup_text(&dialogues[i])).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let pairs = near_duplicates(&refs, opts.minhash, opts.dup_threshold);
    let mut duplicates = Vec::new();
    for p in &pairs {
        let (a, b) = (kept_idx[p.a], kept_idx[p.b]);
        duplicates.push(Duplicate {
            first: dialogues[a].id.clone(),
            second: dialogues[b].id.clone(),
            jaccard: p.jaccard,
            estimate: p.estimate,
        });
        // Pairs come sorted by their later item, so whether the earlier one survives is known
        // when its pair is reached: in a chain a ≈ b ≈ c (a unlike c), b goes and c stays.
        if opts.drop_duplicates && !dropped.contains_key(&a) && !dropped.contains_key(&b) {
            dropped.insert(
                b,
                format!(
                    "near-duplicate of {} (Jaccard {:.2})",
                    dialogues[a].id, p.jaccard
                ),
            );
        }
    }
    let kept: Vec<&Dialogue> = dialogues
        .iter()
        .enumerate()
        .filter(|(i, _)| !dropped.contains_key(i))
        .map(|(_, d)| d)
        .collect();
    write_jsonl(&opts.out, kept.iter().copied())?;

    let dropped: Vec<(String, String)> = dropped
        .into_iter()
        .map(|(i, r)| (dialogues[i].id.clone(), r))
        .collect();
    let (report, missing_personas, missing_questions) =
        render_report(opts, &dialogues, &kept, &dropped, &duplicates, &catalog);
    let report_file = sidecar(&opts.out, "report.md");
    write_atomic(&report_file, report.as_bytes())?;
    Ok(FilterSummary {
        total: dialogues.len(),
        kept: kept.len(),
        dropped,
        duplicates,
        missing_personas,
        missing_questions,
        report,
        report_file,
    })
}

/// Drop reasons grouped by kind (the text before any detail).
fn reason_kind(r: &str) -> &str {
    if r.starts_with("dropped on review") {
        "dropped on review"
    } else if r.starts_with("judge scores below") {
        "judge scores below 3"
    } else if r.starts_with("near-duplicate") {
        "near-duplicate"
    } else {
        r
    }
}

fn render_report(
    opts: &FilterOptions,
    all: &[Dialogue],
    kept: &[&Dialogue],
    dropped: &[(String, String)],
    dups: &[Duplicate],
    catalog: &Catalog,
) -> (String, Vec<String>, Vec<String>) {
    let mut out = String::new();
    let _ = writeln!(out, "# Filter report\n");
    let _ = writeln!(
        out,
        "Input: `{}` ({} dialogues). Kept: {} → `{}`.\n",
        opts.input.display(),
        all.len(),
        kept.len(),
        opts.out.display()
    );
    let _ = writeln!(
        out,
        "Rule: a review decides; without one, both judge scores must be ≥ 3; unjudged dialogues are {}.",
        if opts.include_unjudged { "kept (--include-unjudged)" } else { "dropped" }
    );

    let _ = writeln!(out, "\n## Dropped ({})\n", dropped.len());
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, r) in dropped {
        *kinds.entry(reason_kind(r)).or_default() += 1;
    }
    for (k, n) in &kinds {
        let _ = writeln!(out, "- {k}: {n}");
    }
    if !dropped.is_empty() {
        let _ = writeln!(out, "\n| dialogue | reason |\n|---|---|");
        for (id, r) in dropped {
            let _ = writeln!(
                out,
                "| {id} | {} |",
                r.replace('|', "\\|").replace('\n', " ")
            );
        }
    }

    let _ = writeln!(
        out,
        "\n## Near-duplicates ({} pairs at Jaccard ≥ {}; character {}-grams, {} hashes, {} bands)\n",
        dups.len(),
        opts.dup_threshold,
        opts.minhash.ngram,
        opts.minhash.hashes,
        opts.minhash.bands
    );
    if dups.is_empty() {
        let _ = writeln!(out, "None.");
    } else {
        let _ = writeln!(
            out,
            "| first | second | Jaccard | MinHash estimate |\n|---|---|---|---|"
        );
        for d in dups {
            let _ = writeln!(
                out,
                "| {} | {} | {:.3} | {:.3} |",
                d.first, d.second, d.jaccard, d.estimate
            );
        }
        let _ = writeln!(
            out,
            "\n{}",
            if opts.drop_duplicates {
                "The later dialogue of each pair was dropped."
            } else {
                "Reported only (--drop-duplicates drops the later one)."
            }
        );
    }

    let _ = writeln!(out, "\n## Coverage of the kept dialogues\n");
    let count = |f: &dyn Fn(&Dialogue) -> String| {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for d in kept {
            *m.entry(f(d)).or_default() += 1;
        }
        m
    };
    let by_persona = count(&|d| d.persona.clone());
    let by_question = count(&|d| d.question.clone());
    let by_temp = count(&|d| format!("{}", d.user_temperature));
    let missing = |ids: Vec<&String>, have: &BTreeMap<String, usize>| -> Vec<String> {
        ids.into_iter()
            .filter(|id| !have.contains_key(*id))
            .cloned()
            .collect()
    };
    let missing_personas = missing(
        catalog.personas.iter().map(|p| &p.id).collect(),
        &by_persona,
    );
    let missing_questions = missing(
        catalog.questions.iter().map(|q| &q.id).collect(),
        &by_question,
    );
    for (name, m, total, miss) in [
        (
            "personas",
            &by_persona,
            catalog.personas.len(),
            &missing_personas,
        ),
        (
            "questions",
            &by_question,
            catalog.questions.len(),
            &missing_questions,
        ),
    ] {
        let counts: Vec<usize> = m.values().copied().collect();
        let (lo, hi) = (
            counts.iter().min().copied().unwrap_or(0),
            counts.iter().max().copied().unwrap_or(0),
        );
        let _ =
            writeln!(
            out,
            "- {name}: {} of {total} have a kept dialogue (min {lo}, max {hi} per {}); missing: {}",
            m.len(),
            &name[..name.len() - 1],
            if miss.is_empty() { "none".to_string() } else { miss.join(", ") }
        );
    }
    let temps: Vec<String> = by_temp.iter().map(|(t, n)| format!("{t}: {n}")).collect();
    let _ = writeln!(
        out,
        "- user temperatures: {}",
        if temps.is_empty() {
            "none".into()
        } else {
            temps.join(", ")
        }
    );
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let persona_ids: HashSet<&str> = kept.iter().map(|d| d.persona.as_str()).collect();
    for p in &catalog.personas {
        if persona_ids.contains(p.id.as_str()) {
            *kinds
                .entry(format!("{:?}", p.kind).to_lowercase())
                .or_default() += by_persona[&p.id];
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    let _ = writeln!(
        out,
        "- dialogues by persona kind: {}",
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        }
    );
    let _ = writeln!(out, "\n| persona | kept |\n|---|---|");
    for p in &catalog.personas {
        let _ = writeln!(
            out,
            "| {} | {} |",
            p.id,
            by_persona.get(&p.id).copied().unwrap_or(0)
        );
    }
    let _ = writeln!(out, "\n| question | kept |\n|---|---|");
    for q in &catalog.questions {
        let _ = writeln!(
            out,
            "| {} | {} |",
            q.id,
            by_question.get(&q.id).copied().unwrap_or(0)
        );
    }
    (out, missing_personas, missing_questions)
}
