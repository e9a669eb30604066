//! `data check`: what a dialogue file holds and what a build would use from it.

use super::Result;
use crate::corpus::{load_dialogues, Catalog, Dialogue, LoadOptions, KEEP_THRESHOLD};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckReport {
    pub path: String,
    /// Valid dialogues.
    pub dialogues: usize,
    /// Lines that could not be used, `file:line: why`.
    pub bad_lines: Vec<String>,
    /// Dialogues a variant without `include_rejected` uses.
    pub kept: usize,
    /// Judged or reviewed, and not kept.
    pub dropped: usize,
    /// Neither judged nor reviewed (kept only with `include_unjudged`).
    pub unjudged: usize,
    pub include_unjudged: bool,
    /// Dropped dialogues by reason.
    pub drop_reasons: BTreeMap<String, usize>,
    /// Each dropped dialogue with its reason.
    pub dropped_dialogues: Vec<Dropped>,
    /// Dialogues by number of complete rounds.
    pub rounds: BTreeMap<usize, usize>,
    /// Dialogues by the user side's sampling temperature.
    pub user_temperature: BTreeMap<String, usize>,
    /// Dialogues by the kind of their user persona (when personas were given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persona_kinds: Option<BTreeMap<String, usize>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dropped {
    pub id: String,
    pub reason: String,
}

const BY_REVIEW: &str = "dropped on review";

fn by_judge() -> String {
    format!("judge scores below {KEEP_THRESHOLD}")
}

/// Reads every line (bad ones are listed, not fatal: the caller decides) and counts.
pub fn check(
    path: &Path,
    catalog: Option<&Catalog>,
    include_unjudged: bool,
) -> Result<CheckReport> {
    let loaded = load_dialogues(
        path,
        LoadOptions {
            skip_bad: true,
            catalog,
        },
    )?;
    let dialogues: Vec<&Dialogue> = loaded.records.iter().map(|(_, d)| d).collect();
    let mut r = CheckReport {
        path: path.display().to_string(),
        dialogues: dialogues.len(),
        bad_lines: loaded.skipped.iter().map(|b| b.to_string()).collect(),
        kept: 0,
        dropped: 0,
        unjudged: 0,
        include_unjudged,
        drop_reasons: BTreeMap::new(),
        dropped_dialogues: Vec::new(),
        rounds: BTreeMap::new(),
        user_temperature: BTreeMap::new(),
        persona_kinds: catalog.map(|_| BTreeMap::new()),
    };
    for d in dialogues {
        let unjudged = d.judge.is_none() && d.review.is_none();
        if unjudged {
            r.unjudged += 1;
        }
        if d.is_kept(include_unjudged) {
            r.kept += 1;
        } else if !unjudged {
            r.dropped += 1;
            let kind = if d.review.is_some() {
                BY_REVIEW.into()
            } else {
                by_judge()
            };
            *r.drop_reasons.entry(kind).or_default() += 1;
            let reason = d.drop_reason(include_unjudged).unwrap_or_default();
            r.dropped_dialogues.push(Dropped {
                id: d.id.clone(),
                reason,
            });
        }
        *r.rounds.entry(d.pairs()).or_default() += 1;
        *r.user_temperature
            .entry(d.user_temperature.to_string())
            .or_default() += 1;
        if let (Some(kinds), Some(cat)) = (r.persona_kinds.as_mut(), catalog) {
            if let Some(p) = cat.persona(&d.persona) {
                let kind = serde_json::to_value(p.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from));
                *kinds.entry(kind.unwrap_or_default()).or_default() += 1;
            }
        }
    }
    Ok(r)
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let counts = |m: &BTreeMap<String, usize>| {
            m.iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(
            f,
            "{}: {} dialogue(s), {} bad line(s)",
            self.path,
            self.dialogues,
            self.bad_lines.len()
        )?;
        writeln!(f, "  kept      {:>5}", self.kept)?;
        write!(f, "  dropped   {:>5}", self.dropped)?;
        if !self.drop_reasons.is_empty() {
            write!(f, "  ({})", counts(&self.drop_reasons))?;
        }
        writeln!(f)?;
        write!(f, "  unjudged  {:>5}", self.unjudged)?;
        if self.unjudged > 0 {
            let how = if self.include_unjudged {
                "counted as kept"
            } else {
                "not kept; --include-unjudged keeps them"
            };
            write!(f, "  ({how})")?;
        }
        writeln!(f)?;
        let rounds: Vec<String> = self
            .rounds
            .iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect();
        writeln!(f, "  rounds (dialogues): {}", rounds.join(", "))?;
        writeln!(f, "  user temperature: {}", counts(&self.user_temperature))?;
        if let Some(k) = &self.persona_kinds {
            writeln!(f, "  persona kinds: {}", counts(k))?;
        }
        for d in &self.dropped_dialogues {
            writeln!(f, "  dropped {}: {}", d.id, d.reason)?;
        }
        for b in &self.bad_lines {
            writeln!(f, "  bad line {b}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::{Persona, PersonaKind, Question};

    #[test]
    fn counts_kept_dropped_unjudged_and_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.jsonl");
        let line = |id: &str, temp: f64, extra: &str| {
            format!(
                r#"{{"id":"{id}","persona":"p1","question":"q1","user_temperature":{temp},"turns":[{{"role":"user","text":"正義とは？"}},{{"role":"model","text":"ふむ。"}}]{extra}}}"#
            )
        };
        let text = [
            line("d1", 0.3, r#","judge":{"socratic":4,"coherence":3}"#),
            line("d2", 0.7, r#","judge":{"socratic":2,"coherence":3}"#),
            line("d3", 0.7, r#","judge":{"socratic":4,"coherence":4},"review":{"decision":"drop","note":"口調が違う"}"#),
            line("d4", 0.3, ""),
            "{broken".into(),
        ]
        .join("\n");
        std::fs::write(&p, text).unwrap();
        let cat = Catalog {
            personas: vec![Persona {
                id: "p1".into(),
                kind: PersonaKind::Historical,
                name: "孔子".into(),
                description: "x".into(),
                inherits: None,
            }],
            questions: vec![Question {
                id: "q1".into(),
                text: "正義とは？".into(),
            }],
        };
        let r = check(&p, Some(&cat), false).unwrap();
        assert_eq!(
            (
                r.dialogues,
                r.kept,
                r.dropped,
                r.unjudged,
                r.bad_lines.len()
            ),
            (4, 1, 2, 1, 1)
        );
        assert!(
            r.bad_lines[0].contains("d.jsonl:5: malformed JSON"),
            "{:?}",
            r.bad_lines
        );
        assert_eq!(
            r.drop_reasons,
            BTreeMap::from([(by_judge(), 1), (BY_REVIEW.into(), 1)])
        );
        assert_eq!(
            r.dropped_dialogues[1],
            Dropped {
                id: "d3".into(),
                reason: "dropped on review: 口調が違う".into()
            }
        );
        assert_eq!(r.rounds, BTreeMap::from([(1, 4)]));
        assert_eq!(
            r.user_temperature,
            BTreeMap::from([("0.3".into(), 2), ("0.7".into(), 2)])
        );
        assert_eq!(
            r.persona_kinds,
            Some(BTreeMap::from([("historical".into(), 4)]))
        );
        let text = r.to_string();
        assert!(
            text.contains("kept          1")
                && text.contains("(dropped on review: 1, judge scores below 3: 1)"),
            "{text}"
        );
        assert!(
            text.contains("not kept; --include-unjudged keeps them"),
            "{text}"
        );
        let r = check(&p, None, true).unwrap();
        assert_eq!(
            (r.kept, r.dropped, r.unjudged, r.persona_kinds),
            (2, 2, 1, None)
        );
    }
}
