//! How far the judge agrees with the human: a confusion table of keep/drop decisions, raw
//! agreement and Cohen's kappa, and, where the human gave scores, per-scale quadratic weighted
//! kappa (near misses cost less than far ones, as they should on an ordinal 0–4 scale).

use super::review::{HumanDecision, Item, Reason};
use crate::corpus::{Decision, Dialogue};
use std::collections::BTreeMap;
use std::fmt::Write;

/// Cohen's kappa of a square confusion matrix (rows: rater A, columns: rater B) with
/// disagreement weights `w(i, j)`; `None` when chance disagreement is zero (kappa undefined).
pub fn kappa(m: &[Vec<usize>], weight: impl Fn(usize, usize) -> f64) -> Option<f64> {
    let k = m.len();
    let n: usize = m.iter().flatten().sum();
    if n == 0 {
        return None;
    }
    let rows: Vec<f64> = m.iter().map(|r| r.iter().sum::<usize>() as f64).collect();
    let cols: Vec<f64> = (0..k)
        .map(|j| m.iter().map(|r| r[j]).sum::<usize>() as f64)
        .collect();
    let (mut observed, mut expected) = (0.0, 0.0);
    for i in 0..k {
        for j in 0..k {
            let w = weight(i, j);
            observed += w * m[i][j] as f64;
            expected += w * rows[i] * cols[j] / n as f64;
        }
    }
    (expected > 0.0).then(|| 1.0 - observed / expected)
}

/// Unweighted: every disagreement costs 1.
pub fn cohen_kappa(m: &[Vec<usize>]) -> Option<f64> {
    kappa(m, |i, j| if i == j { 0.0 } else { 1.0 })
}

/// Quadratic weights `(i - j)² / (k - 1)²`.
pub fn quadratic_kappa(m: &[Vec<usize>]) -> Option<f64> {
    let k = m.len().max(2) as f64;
    kappa(m, |i, j| (i as f64 - j as f64).powi(2) / (k - 1.0).powi(2))
}

fn fmt_kappa(k: Option<f64>) -> String {
    k.map_or("n/a (no variation)".into(), |k| format!("{k:.3}"))
}

fn pct(a: usize, n: usize) -> String {
    if n == 0 {
        "n/a".into()
    } else {
        format!("{:.1}%", 100.0 * a as f64 / n as f64)
    }
}

/// What the judge alone decides: the keep rule applied as if there were no review.
pub fn judge_keeps(d: &Dialogue) -> bool {
    let probe = Dialogue {
        review: None,
        ..d.clone()
    };
    probe.is_kept(false)
}

/// The calibration report (Markdown) over the reviewed items of the queue.
pub fn report(
    dialogues: &[Dialogue],
    items: &[Item],
    decisions: &BTreeMap<String, HumanDecision>,
) -> String {
    let mut out = String::new();
    let reviewed: Vec<(&Item, &Dialogue, &HumanDecision, Decision)> = items
        .iter()
        .filter_map(|it| {
            let h = decisions.get(&it.id)?;
            let d = &dialogues[it.index];
            d.judge.as_ref()?;
            Some((it, d, h, h.decision?))
        })
        .collect();
    let _ = writeln!(out, "# Judge calibration\n");
    let flagged = items.iter().filter(|i| i.reason == Reason::Flagged).count();
    let _ = writeln!(
        out,
        "Queue: {} dialogues ({flagged} flagged with a score ≤ 2, {} audit sample); {} decided.\n",
        items.len(),
        items.len() - flagged,
        reviewed.len()
    );
    if let Some(note) = super::review::scored_undecided_note(decisions) {
        let _ = writeln!(out, "**Not counted:** {note}.\n");
    }
    let _ = writeln!(
        out,
        "The queue over-samples low scores, so these numbers describe the judge on that queue, \
         not on the whole corpus.\n"
    );
    for reason in [Reason::Flagged, Reason::Audit] {
        let of: Vec<_> = reviewed.iter().filter(|r| r.0.reason == reason).collect();
        let kept = of.iter().filter(|r| r.3 == Decision::Keep).count();
        let name = if reason == Reason::Flagged {
            "flagged"
        } else {
            "audit"
        };
        let _ = writeln!(
            out,
            "- {name}: {} decided, {kept} kept, {} dropped",
            of.len(),
            of.len() - kept
        );
    }

    // Judge decision (both scores ≥ 3) against the human's keep/drop.
    let mut m = vec![vec![0usize; 2]; 2];
    for (_, d, _, human) in &reviewed {
        m[usize::from(!judge_keeps(d))][usize::from(*human == Decision::Drop)] += 1;
    }
    let n = reviewed.len();
    let _ = writeln!(out, "\n## Keep / drop\n");
    let _ = writeln!(out, "| judge \\ human | keep | drop |\n|---|---|---|");
    let _ = writeln!(out, "| keep | {} | {} |", m[0][0], m[0][1]);
    let _ = writeln!(out, "| drop | {} | {} |", m[1][0], m[1][1]);
    let _ = writeln!(
        out,
        "\nAgreement: {} ({} of {n}); Cohen's kappa: {}.",
        pct(m[0][0] + m[1][1], n),
        m[0][0] + m[1][1],
        fmt_kappa(cohen_kappa(&m))
    );

    for scale in ["socratic", "coherence"] {
        let pairs: Vec<(usize, usize)> = reviewed
            .iter()
            .filter_map(|(_, d, h, _)| {
                let j = d.judge.as_ref()?;
                let (js, hs) = if scale == "socratic" {
                    (j.socratic, h.socratic?)
                } else {
                    (j.coherence, h.coherence?)
                };
                Some((js.min(4) as usize, hs.min(4) as usize))
            })
            .collect();
        let _ = writeln!(out, "\n## Scores: {scale}\n");
        if pairs.is_empty() {
            let _ = writeln!(out, "No human scores given.");
            continue;
        }
        let mut m = vec![vec![0usize; 5]; 5];
        for &(j, h) in &pairs {
            m[j][h] += 1;
        }
        let exact = pairs.iter().filter(|(j, h)| j == h).count();
        let near = pairs.iter().filter(|(j, h)| j.abs_diff(*h) <= 1).count();
        let _ = writeln!(
            out,
            "| judge \\ human | 0 | 1 | 2 | 3 | 4 |\n|---|---|---|---|---|---|"
        );
        for (i, row) in m.iter().enumerate() {
            let cells: Vec<String> = row.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(out, "| {i} | {} |", cells.join(" | "));
        }
        let _ = writeln!(
            out,
            "\n{} pairs; exact agreement {}, within one point {}; quadratic weighted kappa: {}.",
            pairs.len(),
            pct(exact, pairs.len()),
            pct(near, pairs.len()),
            fmt_kappa(quadratic_kappa(&m))
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unweighted_kappa_by_hand() {
        // po = 35/50 = 0.7; pe = (25·30 + 25·20) / 50² = 0.5; kappa = 0.2 / 0.5 = 0.4.
        let m = vec![vec![20, 5], vec![10, 15]];
        assert!((cohen_kappa(&m).unwrap() - 0.4).abs() < 1e-12);
    }

    #[test]
    fn quadratic_kappa_by_hand() {
        // n = 9, rows 3/3/3, columns 2/3/4, weights (i-j)²/4.
        // Observed: two counts one step off: 2 · 1/4 = 0.5.
        // Expected: E_ij = c_j / 3; Σ w·E = (0.25 + 4/3) + (1/6 + 1/3) + (2/3 + 0.25) = 3.
        // kappa = 1 - 0.5 / 3 = 5/6.
        let m = vec![vec![2, 1, 0], vec![0, 2, 1], vec![0, 0, 3]];
        assert!((quadratic_kappa(&m).unwrap() - 5.0 / 6.0).abs() < 1e-12);
        // Perfect agreement is 1; a constant rater leaves kappa undefined.
        assert_eq!(quadratic_kappa(&[vec![3, 0], vec![0, 2]]), Some(1.0));
        assert_eq!(cohen_kappa(&[vec![5, 0], vec![0, 0]]), None);
    }

    #[test]
    fn report_counts_agreement() {
        let d = |id: &str, s: u8, c: u8| -> Dialogue {
            serde_json::from_str(&format!(
                r#"{{"id":"{id}","persona":"p","question":"q","user_temperature":0.3,"turns":[{{"role":"user","text":"x"}}],
                    "judge":{{"socratic":{s},"coherence":{c},"comment":"c"}}}}"#
            ))
            .unwrap()
        };
        let ds = vec![d("a", 2, 3), d("b", 1, 1), d("c", 4, 4)];
        let items = vec![
            Item {
                index: 0,
                id: "a".into(),
                reason: Reason::Flagged,
            },
            Item {
                index: 1,
                id: "b".into(),
                reason: Reason::Flagged,
            },
            Item {
                index: 2,
                id: "c".into(),
                reason: Reason::Audit,
            },
        ];
        let mut h = BTreeMap::new();
        let hd = |k: Decision, s: Option<u8>| HumanDecision {
            decision: Some(k),
            socratic: s,
            coherence: s,
            note: None,
        };
        h.insert("a".to_string(), hd(Decision::Keep, Some(3)));
        h.insert("b".to_string(), hd(Decision::Drop, Some(1)));
        h.insert("c".to_string(), hd(Decision::Keep, None));
        let r = report(&ds, &items, &h);
        assert!(!r.contains("Not counted"), "{r}");
        h.get_mut("c").unwrap().decision = None;
        h.get_mut("c").unwrap().socratic = Some(4);
        let undecided = report(&ds, &items, &h);
        assert!(
            undecided.contains(
                "**Not counted:** 1 dialogue(s) have human scores but no keep/drop decision (c)"
            ),
            "{undecided}"
        );
        assert!(r.contains("| keep | 1 | 0 |"), "{r}");
        assert!(r.contains("| drop | 1 | 1 |"), "{r}");
        assert!(r.contains("Agreement: 66.7% (2 of 3)"), "{r}");
        assert!(r.contains("- flagged: 2 decided, 1 kept, 1 dropped"), "{r}");
        assert!(r.contains("2 pairs; exact agreement 50.0%"), "{r}");
    }
}
