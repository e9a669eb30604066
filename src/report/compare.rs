//! `socratune compare`: every run under `runs/`, side by side.

use super::curves::loss_svg;
use super::ReportError;
use crate::dataset::variant::natural_key;
use crate::eval::stats::Estimate;
use crate::eval::EvalReport;
use crate::fsutil::write_atomic;
use crate::rundir::RunDir;
use crate::train::metrics::{read_events, Event};
use crate::train::trainer::{read_summary, Summary};
use std::path::{Path, PathBuf};

/// What one run folder holds.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub name: String,
    pub dir: PathBuf,
    /// None while the run has not finished.
    pub summary: Option<Summary>,
    /// (step, train loss) and (step, val loss) from `metrics.jsonl`.
    pub train_curve: Vec<(f64, f64)>,
    pub val_curve: Vec<(f64, f64)>,
}

impl RunReport {
    fn common(&self) -> Option<f64> {
        self.summary.as_ref().and_then(|s| s.common_val_loss)
    }
}

/// Every folder under `runs` with a `metrics.jsonl`, sorted by name.
pub fn collect(runs: &Path) -> Result<Vec<RunReport>, ReportError> {
    let mut out = Vec::new();
    let entries = std::fs::read_dir(runs).map_err(|e| crate::fsutil::FileError::new(runs, e))?;
    for e in entries.flatten() {
        let dir = e.path();
        let run = RunDir::new(&dir);
        let metrics = run.metrics();
        if !metrics.is_file() {
            continue;
        }
        let events = read_events(&metrics)?;
        let train_curve = events
            .iter()
            .filter_map(|e| match e {
                Event::Train { step, loss, .. } => Some((*step as f64, *loss)),
                _ => None,
            })
            .collect();
        let val_curve = events
            .iter()
            .filter_map(|e| match e {
                Event::Eval { step, val_loss, .. } => Some((*step as f64, *val_loss)),
                _ => None,
            })
            .collect();
        out.push(RunReport {
            name: e.file_name().to_string_lossy().to_string(),
            summary: read_summary(&run),
            train_curve,
            val_curve,
            dir,
        });
    }
    if out.is_empty() {
        return Err(ReportError::NoRuns(format!(
            "{}: no runs (folders with metrics.jsonl)",
            runs.display()
        )));
    }
    out.sort_by_key(|r| natural_key(&r.name));
    Ok(out)
}

/// `runs/base.json`: the base model's common val loss on each run's own held-out text (the
/// variants format the same dialogues differently), so the comparison can show what each run
/// gained over the model it started from.
pub const BASE_FILE: &str = "base.json";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BaseScores {
    pub model: String,
    /// Variant → the base's common val loss on that variant's `common.jsonl`.
    pub common_val_loss: std::collections::BTreeMap<String, f64>,
}

/// Reads `runs/base.json` when there is one.
pub fn read_base(runs: &Path) -> Option<BaseScores> {
    let text = std::fs::read_to_string(runs.join(BASE_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The run to choose: lowest common val loss when every finished run has one; otherwise the
/// lowest best val loss (with the caveat that those are not comparable across variants).
pub fn best(reports: &[RunReport]) -> Option<(&RunReport, bool)> {
    let finished: Vec<&RunReport> = reports.iter().filter(|r| r.summary.is_some()).collect();
    if finished.is_empty() {
        return None;
    }
    let by_common = finished.iter().all(|r| r.common().is_some());
    let key = |r: &&RunReport| -> f64 {
        if by_common {
            r.common().unwrap_or(f64::INFINITY)
        } else {
            r.summary
                .as_ref()
                .map_or(f64::INFINITY, |s| s.best_val_loss)
        }
    };
    finished
        .into_iter()
        .min_by(|a, b| key(a).total_cmp(&key(b)))
        .map(|r| (r, by_common))
}

fn fmt_loss(x: Option<f64>) -> String {
    match x {
        Some(v) if v.is_finite() => format!("{v:.4}"),
        _ => "–".into(),
    }
}

fn fmt_duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The eval columns of one run: `(header, cell)` pairs, judged ones only when judged.
fn eval_cells(eval: &EvalReport, name: &str) -> Vec<(&'static str, String)> {
    let e = eval.entries.iter().find(|e| e.name == name);
    let est = |x: Option<&Estimate>, scale: f64, digits: usize| {
        x.map_or("–".to_string(), |x| {
            format!(
                "{:.d$} [{:.d$}, {:.d$}]",
                scale * x.value,
                scale * x.low,
                scale * x.high,
                d = digits
            )
        })
    };
    let mut cells = Vec::new();
    if eval.judge.is_some() {
        let pairwise = eval.entries.iter().any(|e| e.pairwise.is_some());
        if pairwise {
            cells.push((
                "judged strength",
                est(
                    e.and_then(|e| e.pairwise.as_ref()).map(|p| &p.strength),
                    1.0,
                    2,
                ),
            ));
        }
        cells.push((
            "judged score",
            est(e.and_then(|e| e.score.as_ref()), 1.0, 2),
        ));
        let win = e.and_then(|e| e.pairwise_win_vs_base.as_ref().or(e.win_vs_base.as_ref()));
        cells.push(("win vs base %", est(win, 100.0, 0)));
    }
    cells.push((
        "ends in ? %",
        est(e.and_then(|e| e.question_share.as_ref()), 100.0, 0),
    ));
    cells.push((
        "reply chars",
        e.map_or("–".into(), |e| format!("{:.0}", e.mean_chars)),
    ));
    cells
}

/// The comparison as Markdown, with the judged columns of `runs/eval.json` when there is one.
pub fn markdown(
    reports: &[RunReport],
    eval: Option<&EvalReport>,
    base: Option<&BaseScores>,
) -> String {
    let mut md = String::from("# Run comparison\n\n");
    let extra_head: Vec<&str> = eval
        .map(|ev| eval_cells(ev, "").into_iter().map(|c| c.0).collect())
        .unwrap_or_default();
    let extra = |name: &str| -> String {
        eval.map(|ev| {
            eval_cells(ev, name)
                .into_iter()
                .map(|c| format!(" {} |", c.1))
                .collect()
        })
        .unwrap_or_default()
    };
    md.push_str("| variant | common val loss | base on the same text |");
    for h in &extra_head {
        md.push_str(&format!(" {h} |"));
    }
    md.push_str(" best val loss | final val loss | best step | train / val examples | tokens trained | wall time | status |\n");
    md.push_str("|---|---:|---:|");
    md.push_str(&"---:|".repeat(extra_head.len()));
    md.push_str("---:|---:|---:|---:|---:|---:|---|\n");
    let base_on = |name: &str| fmt_loss(base.and_then(|b| b.common_val_loss.get(name).copied()));
    if base.is_some() {
        let chosen = best(reports)
            .map(|(r, _)| r.name.clone())
            .unwrap_or_default();
        md.push_str(&format!(
            "| base (on {chosen}'s text) | {} | – |{} – | – | – | – | – | – | base model |\n",
            base_on(&chosen),
            extra("base"),
        ));
    }
    for r in reports {
        match &r.summary {
            Some(s) => md.push_str(&format!(
                "| {} | {} | {} |{} {} | {} | {} | {} / {} | {} | {} | {} |\n",
                r.name,
                fmt_loss(s.common_val_loss),
                base_on(&r.name),
                extra(&r.name),
                fmt_loss(Some(s.best_val_loss)),
                fmt_loss(Some(s.final_val_loss)),
                s.best_step,
                s.train_examples,
                s.val_examples,
                s.tokens_trained,
                fmt_duration(s.wall_time_s),
                s.status
            )),
            None => {
                let last = r.train_curve.last().map(|p| p.0 as usize).unwrap_or(0);
                let best = r
                    .val_curve
                    .iter()
                    .map(|p| p.1)
                    .fold(f64::INFINITY, f64::min);
                md.push_str(&format!(
                    "| {} | – | – |{} {} | – | – | – | – | – | unfinished (step {last}) |\n",
                    r.name,
                    extra(&r.name),
                    fmt_loss(best.is_finite().then_some(best))
                ));
            }
        }
    }
    md.push('\n');
    md.push_str(
        "Each variant cuts its validation examples differently (which pairs, 2 or 4 utterances, which prefix), \
so *best* and *final val loss* compare checkpoints within one run only. **Choose by *common val loss***: \
the mean loss per Socrates-reply token over every model turn of the same held-out dialogues, each run \
formatted with its own prefix, computed with the run's best adapter.\n\n",
    );
    let judged_best = eval.and_then(|ev| Some((ev, ev.best.as_ref()?)));
    if let Some((ev, b)) = judged_best {
        let how = if b.by == "bradley_terry" {
            "pairwise Bradley–Terry strength"
        } else {
            "mean judged score"
        };
        md.push_str(&format!(
            "**Best by judged score: {}** ({how} {:.2}, over {} held-out prompts; see `eval.md`), adapter in `{}`. \
The judged columns say how the replies read to the judge; common val loss says how well a run predicts \
the held-out text.\n\n",
            b.name,
            b.value,
            ev.prompts,
            reports
                .iter()
                .find(|r| r.name == b.name)
                .map_or_else(|| format!("{}/best", b.name), |r| r.dir.join("best").display().to_string())
        ));
    }
    let by_loss = if judged_best.is_some() {
        "Lowest common val loss"
    } else {
        "Best"
    };
    match best(reports) {
        Some((r, true)) => {
            md.push_str(&format!(
                "**{by_loss}: {}** (common val loss {}), adapter in `{}`.\n",
                r.name,
                fmt_loss(r.common()),
                RunDir::new(&r.dir).best().display()
            ));
            if let (Some(b), Some(c)) = (base.and_then(|b| b.common_val_loss.get(&r.name)), r.common()) {
                md.push_str(&format!(
                    "The base model scores {b:.4} on the same held-out text: {} gains {:.4} nats per token ({:.0} % lower perplexity).\n",
                    r.name,
                    b - c,
                    100.0 * (1.0 - (c - b).exp())
                ));
            }
        }
        Some((r, false)) => md.push_str(&format!(
            "**Lowest best val loss: {}** ({}). Not every run has the common metric, so this is only a hint: \
rebuild the data with `socratune data build` (which writes `common.jsonl`) and retrain to compare properly.\n",
            r.name,
            fmt_loss(r.summary.as_ref().map(|s| s.best_val_loss))
        )),
        None => md.push_str("No run has finished yet.\n"),
    }
    md
}

/// Writes `runs/compare.md` and `runs/loss.svg`; returns the Markdown.
pub fn compare(runs: &Path) -> Result<String, ReportError> {
    let reports = collect(runs)?;
    let eval = crate::eval::report::read(runs);
    let mut md = markdown(&reports, eval.as_ref(), read_base(runs).as_ref());
    let svg = runs.join("loss.svg");
    loss_svg(&reports, &svg)?;
    md.push_str("\n![training and validation loss](loss.svg)\n");
    write_atomic(&runs.join("compare.md"), md.as_bytes())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn natural_order_of_variant_names() {
        let mut v = vec!["model10", "model2", "model1", "alpha"];
        v.sort_by_key(|s| natural_key(s));
        assert_eq!(v, ["alpha", "model1", "model2", "model10"]);
    }

    fn run(name: &str, common: f64) -> RunReport {
        let summary: Summary = serde_json::from_value(serde_json::json!({
            "variant": name, "status": "completed", "best_val_loss": common,
            "final_val_loss": common, "best_step": 4, "steps": 4, "epochs": 1.0,
            "train_examples": 8, "val_examples": 2, "tokens_trained": 100,
            "supervised_tokens_trained": 50, "wall_time_s": 3.0, "model": "m",
            "device": "cpu", "dtype": "f32", "config_sha256": "", "data_sha256": "",
            "common_val_loss": common,
        }))
        .unwrap();
        RunReport {
            name: name.into(),
            dir: PathBuf::from(name),
            summary: Some(summary),
            train_curve: Vec::new(),
            val_curve: Vec::new(),
        }
    }

    #[test]
    fn the_base_row_comes_after_the_header_and_every_row_has_its_cells() {
        let reports = [run("model1", 2.5), run("model2", 2.25)];
        let base = BaseScores {
            model: "m".into(),
            common_val_loss: [("model1".into(), 3.0), ("model2".into(), 2.75)].into(),
        };
        let md = markdown(&reports, None, Some(&base));
        let table: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert!(table[1].starts_with("|---|"), "{md}");
        assert!(
            table[2].starts_with("| base (on model2's text) | 2.7500 |"),
            "{md}"
        );
        let cells = |l: &str| l.matches('|').count();
        assert!(table.iter().all(|l| cells(l) == cells(table[0])), "{md}");
        assert!(md.contains("model2 gains 0.5000 nats"), "{md}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(59.4), "59s");
        assert_eq!(fmt_duration(61.0), "1m01s");
        assert_eq!(fmt_duration(3723.0), "1h02m");
    }
}
