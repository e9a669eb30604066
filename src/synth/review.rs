//! `synth review`: the human check of the judge. The queue holds every judged dialogue scored
//! ≤ 2 on either scale, plus a seeded random audit sample of the others (so that the judge's
//! "keep" gets checked too). The queue is a pure state machine driven by [`Key`]s, so it is
//! tested without a terminal; `tui` only draws it and feeds it keys.
//!
//! Decisions live in a review file (JSON, written atomically after every change), so quitting
//! at any moment loses nothing and reopening resumes at the same dialogue.

use super::SynthError;
use crate::corpus::{Decision, Dialogue, Review};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The highest score that sends a dialogue to review.
pub const FLAG_AT_OR_BELOW: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    /// Scored ≤ 2 on a scale.
    Flagged,
    /// Scored ≥ 3 on both, drawn for the audit sample.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// Index into the dialogues.
    pub index: usize,
    pub id: String,
    pub reason: Reason,
}

/// What the reviewer said about one dialogue. Scores are optional; they feed the kappa.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HumanDecision {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socratic: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coherence: Option<u8>,
}

impl HumanDecision {
    fn is_empty(&self) -> bool {
        *self == HumanDecision::default()
    }
}

/// The queue of dialogues to review, in file order.
pub fn build_queue(dialogues: &[Dialogue], audit: f64, seed: u64) -> Vec<Item> {
    let mut flagged = Vec::new();
    let mut passed = Vec::new();
    for (i, d) in dialogues.iter().enumerate() {
        if let Some(j) = &d.judge {
            if j.socratic <= FLAG_AT_OR_BELOW || j.coherence <= FLAG_AT_OR_BELOW {
                flagged.push(i);
            } else {
                passed.push(i);
            }
        }
    }
    let k = ((passed.len() as f64) * audit.clamp(0.0, 1.0)).round() as usize;
    passed.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
    let mut items: Vec<Item> = flagged
        .into_iter()
        .map(|i| (i, Reason::Flagged))
        .chain(passed.into_iter().take(k).map(|i| (i, Reason::Audit)))
        .map(|(index, reason)| Item {
            index,
            id: dialogues[index].id.clone(),
            reason,
        })
        .collect();
    items.sort_by_key(|it| it.index);
    items
}

/// A key press, as the queue understands it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Backspace,
    Esc,
    Left,
    Right,
    Up,
    Down,
    PageUp,
    PageDown,
    /// Ctrl-C: quit from any mode.
    Interrupt,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Browse,
    /// Typing a note; Enter saves it, Esc cancels.
    Note(String),
    /// The first of two score digits was typed (socratic); the next is coherence.
    Scores(u8),
}

/// What the caller should do after a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Only the view changed.
    Redraw,
    /// Decisions or the position changed: save the review file.
    Save,
    Quit,
}

#[derive(Debug, Clone)]
pub struct Queue {
    pub items: Vec<Item>,
    /// Current item; `items.len()` is the "all done" screen.
    pub pos: usize,
    pub decisions: BTreeMap<String, HumanDecision>,
    pub mode: Mode,
    /// First dialogue line shown (view only, not saved).
    pub scroll: usize,
}

impl Queue {
    /// Starts at `cursor` when it is in the queue, else at the first undecided item.
    pub fn new(
        items: Vec<Item>,
        decisions: BTreeMap<String, HumanDecision>,
        cursor: Option<&str>,
    ) -> Self {
        let pos = cursor
            .and_then(|c| items.iter().position(|it| it.id == c))
            .or_else(|| {
                items
                    .iter()
                    .position(|it| decisions.get(&it.id).is_none_or(|d| d.decision.is_none()))
            })
            .unwrap_or(items.len());
        Self {
            items,
            pos,
            decisions,
            mode: Mode::Browse,
            scroll: 0,
        }
    }

    pub fn current(&self) -> Option<&Item> {
        self.items.get(self.pos)
    }

    pub fn decision(&self, id: &str) -> Option<&HumanDecision> {
        self.decisions.get(id)
    }

    /// Items in the queue with a keep/drop decision.
    pub fn decided(&self) -> usize {
        self.items
            .iter()
            .filter(|it| {
                self.decisions
                    .get(&it.id)
                    .is_some_and(|d| d.decision.is_some())
            })
            .count()
    }

    pub fn cursor(&self) -> Option<&str> {
        self.current().map(|it| it.id.as_str())
    }

    fn edit(&mut self, f: impl FnOnce(&mut HumanDecision)) {
        let Some(id) = self.current().map(|it| it.id.clone()) else {
            return;
        };
        let d = self.decisions.entry(id.clone()).or_default();
        f(d);
        if d.is_empty() {
            self.decisions.remove(&id);
        }
    }

    fn go(&mut self, pos: usize) -> Effect {
        let pos = pos.min(self.items.len());
        if pos == self.pos {
            return Effect::Redraw;
        }
        self.pos = pos;
        self.scroll = 0;
        Effect::Save
    }

    pub fn handle(&mut self, key: Key) -> Effect {
        if key == Key::Interrupt {
            return Effect::Quit;
        }
        match std::mem::replace(&mut self.mode, Mode::Browse) {
            Mode::Note(mut text) => match key {
                Key::Enter => {
                    let note = text.trim().to_string();
                    self.edit(|d| d.note = (!note.is_empty()).then_some(note));
                    Effect::Save
                }
                Key::Esc => Effect::Redraw,
                Key::Backspace => {
                    text.pop();
                    self.mode = Mode::Note(text);
                    Effect::Redraw
                }
                Key::Char(c) => {
                    text.push(c);
                    self.mode = Mode::Note(text);
                    Effect::Redraw
                }
                _ => {
                    self.mode = Mode::Note(text);
                    Effect::Redraw
                }
            },
            Mode::Scores(socratic) => match key {
                Key::Char(c @ '0'..='4') => {
                    let coherence = c as u8 - b'0';
                    self.edit(|d| {
                        d.socratic = Some(socratic);
                        d.coherence = Some(coherence);
                    });
                    Effect::Save
                }
                Key::Esc => Effect::Redraw,
                _ => {
                    self.mode = Mode::Scores(socratic);
                    Effect::Redraw
                }
            },
            Mode::Browse => self.browse(key),
        }
    }

    fn browse(&mut self, key: Key) -> Effect {
        let on_item = self.current().is_some();
        match key {
            Key::Char('q') | Key::Esc => Effect::Quit,
            Key::Char('b') | Key::Left => self.go(self.pos.saturating_sub(1)),
            Key::Char('s') | Key::Char(' ') | Key::Right => self.go(self.pos + 1),
            Key::Up => {
                self.scroll = self.scroll.saturating_sub(1);
                Effect::Redraw
            }
            Key::Down => {
                self.scroll += 1;
                Effect::Redraw
            }
            Key::PageUp => {
                self.scroll = self.scroll.saturating_sub(10);
                Effect::Redraw
            }
            Key::PageDown => {
                self.scroll += 10;
                Effect::Redraw
            }
            _ if !on_item => Effect::Redraw,
            Key::Char('k') | Key::Char('d') => {
                let decision = if key == Key::Char('k') {
                    Decision::Keep
                } else {
                    Decision::Drop
                };
                self.edit(|d| d.decision = Some(decision));
                self.go(self.pos + 1);
                Effect::Save
            }
            Key::Char('u') => {
                self.edit(|d| *d = HumanDecision::default());
                Effect::Save
            }
            Key::Char('n') => {
                let note = self
                    .current()
                    .and_then(|it| self.decisions.get(&it.id))
                    .and_then(|d| d.note.clone());
                self.mode = Mode::Note(note.unwrap_or_default());
                Effect::Redraw
            }
            Key::Char(c @ '0'..='4') => {
                self.mode = Mode::Scores(c as u8 - b'0');
                Effect::Redraw
            }
            _ => Effect::Redraw,
        }
    }
}

/// The review file: decisions by dialogue id, where the reviewer was, and what the queue was
/// built from (so that reopening rebuilds the same queue).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewFile {
    pub input_sha256: String,
    pub audit: f64,
    pub seed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    #[serde(default)]
    pub decisions: BTreeMap<String, HumanDecision>,
}

impl ReviewFile {
    pub fn load(path: &Path) -> Result<Option<Self>, SynthError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(crate::fsutil::FileError::new(path, e).into()),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            SynthError::Config(format!("{}: unreadable review file: {e}", path.display()))
        })
    }

    pub fn save(&self, path: &Path) -> Result<(), SynthError> {
        crate::fsutil::write_json(path, self)?;
        Ok(())
    }
}

/// A review in progress: the queue plus the file it is saved to after every change.
#[derive(Debug)]
pub struct Session {
    pub queue: Queue,
    path: PathBuf,
    input_sha256: String,
    audit: f64,
    seed: u64,
}

impl Session {
    /// Builds the queue for `dialogues` and restores decisions and position from the review
    /// file if there is one (decisions already in the input seed it too). Returns warnings
    /// for the caller to show.
    pub fn open(
        dialogues: &[Dialogue],
        input_sha256: &str,
        path: &Path,
        audit: f64,
        seed: u64,
    ) -> Result<(Self, Vec<String>), SynthError> {
        let mut warnings = Vec::new();
        // Reviews already in the input seed a new review file; once the file exists it is
        // the truth (so that undoing such a review sticks).
        let mut decisions = BTreeMap::new();
        let mut cursor = None;
        let previous = ReviewFile::load(path)?;
        if previous.is_none() {
            decisions = decisions_from(dialogues);
        }
        if let Some(prev) = previous {
            if prev.input_sha256 != input_sha256 {
                warnings.push(
                    "the input changed since this review began; decisions are matched by dialogue id"
                        .to_string(),
                );
            }
            if (prev.audit, prev.seed) != (audit, seed) {
                warnings.push(format!(
                    "the review began with --audit {} --seed {}; the queue now differs",
                    prev.audit, prev.seed
                ));
            }
            decisions = prev.decisions;
            cursor = prev.cursor;
        }
        let queue = Queue::new(
            build_queue(dialogues, audit, seed),
            decisions,
            cursor.as_deref(),
        );
        let s = Self {
            queue,
            path: path.into(),
            input_sha256: input_sha256.into(),
            audit,
            seed,
        };
        Ok((s, warnings))
    }

    /// Feeds one key to the queue and saves when anything worth keeping changed.
    pub fn key(&mut self, key: Key) -> Result<Effect, SynthError> {
        let effect = self.queue.handle(key);
        if effect == Effect::Save {
            self.save()?;
        }
        Ok(effect)
    }

    pub fn save(&self) -> Result<(), SynthError> {
        ReviewFile {
            input_sha256: self.input_sha256.clone(),
            audit: self.audit,
            seed: self.seed,
            cursor: self.queue.cursor().map(str::to_string),
            decisions: self.queue.decisions.clone(),
        }
        .save(&self.path)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reviews already in the input (an earlier pass) as decisions.
fn decisions_from(ds: &[Dialogue]) -> BTreeMap<String, HumanDecision> {
    let score = |r: &Review, k: &str| {
        r.extra
            .get(k)
            .and_then(|v| v.as_u64())
            .filter(|v| *v <= 4)
            .map(|v| v as u8)
    };
    ds.iter()
        .filter_map(|d| {
            let r = d.review.as_ref()?;
            let h = HumanDecision {
                decision: Some(r.decision),
                note: r.note.clone(),
                socratic: score(r, "socratic"),
                coherence: score(r, "coherence"),
            };
            Some((d.id.clone(), h))
        })
        .collect()
}

/// Ids of dialogues given human scores but no keep/drop decision: neither the reviewed file
/// nor the calibration can use them, which the reviewer must be told.
pub fn scored_undecided(decisions: &BTreeMap<String, HumanDecision>) -> Vec<&str> {
    decisions
        .iter()
        .filter(|(_, h)| h.decision.is_none() && (h.socratic.is_some() || h.coherence.is_some()))
        .map(|(id, _)| id.as_str())
        .collect()
}

/// One line saying which scored dialogues lack a decision, if any.
pub fn scored_undecided_note(decisions: &BTreeMap<String, HumanDecision>) -> Option<String> {
    let ids = scored_undecided(decisions);
    if ids.is_empty() {
        return None;
    }
    let shown: Vec<&str> = ids.iter().take(10).copied().collect();
    Some(format!(
        "{} dialogue(s) have human scores but no keep/drop decision ({}{}): they are left out of the reviewed file and the calibration until you press k or d on them",
        ids.len(),
        shown.join(", "),
        if ids.len() > shown.len() { ", …" } else { "" }
    ))
}

/// Makes each dialogue's `review` what the decisions say: set where there is a keep/drop
/// decision (human scores in the review's extra fields `socratic`, `coherence`; other extra
/// fields of an earlier review kept), absent otherwise. Returns how many are set.
pub fn apply(dialogues: &mut [Dialogue], decisions: &BTreeMap<String, HumanDecision>) -> usize {
    let mut n = 0;
    for d in dialogues.iter_mut() {
        let previous = d.review.take();
        let Some(decision) = decisions.get(&d.id).and_then(|h| h.decision) else {
            continue;
        };
        let h = &decisions[&d.id];
        let mut extra = previous.map(|r| r.extra).unwrap_or_default();
        extra.remove("socratic");
        extra.remove("coherence");
        if let Some(s) = h.socratic {
            extra.insert("socratic".into(), json!(s));
        }
        if let Some(c) = h.coherence {
            extra.insert("coherence".into(), json!(c));
        }
        d.review = Some(Review {
            decision,
            note: h.note.clone(),
            extra,
        });
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn dialogue(id: &str, s: Option<(u8, u8)>) -> Dialogue {
        let judge = s
            .map(|(a, b)| format!(r#","judge":{{"socratic":{a},"coherence":{b},"comment":"c"}}"#))
            .unwrap_or_default();
        serde_json::from_str(&format!(
            r#"{{"id":"{id}","persona":"p","question":"q","user_temperature":0.3,"turns":[{{"role":"user","text":"x"}}]{judge}}}"#
        ))
        .unwrap()
    }

    fn corpus() -> Vec<Dialogue> {
        let mut ds = vec![
            dialogue("a", Some((2, 4))),
            dialogue("b", Some((3, 3))),
            dialogue("c", None),
            dialogue("d", Some((4, 1))),
        ];
        for i in 0..20 {
            ds.push(dialogue(&format!("h{i:02}"), Some((4, 4))));
        }
        ds
    }

    fn ids(q: &[Item]) -> Vec<&str> {
        q.iter().map(|i| i.id.as_str()).collect()
    }

    #[test]
    fn queue_holds_flagged_and_a_seeded_audit_sample() {
        let ds = corpus();
        let q = build_queue(&ds, 0.0, 1);
        assert_eq!(ids(&q), ["a", "d"]);
        let q1 = build_queue(&ds, 0.1, 1);
        assert_eq!(q1.len(), 2 + 2); // 10% of 21 passed, rounded
        assert_eq!(q1, build_queue(&ds, 0.1, 1));
        assert!(q1
            .iter()
            .filter(|i| i.reason == Reason::Audit)
            .all(|i| i.id != "c"));
        let q2 = build_queue(&ds, 0.1, 2);
        assert_ne!(ids(&q1), ids(&q2));
        assert!(q1.windows(2).all(|w| w[0].index < w[1].index));
    }

    fn queue() -> Queue {
        Queue::new(build_queue(&corpus(), 0.0, 1), BTreeMap::new(), None)
    }

    #[test]
    fn keep_drop_back_and_quit() {
        let mut q = queue();
        assert_eq!(q.cursor(), Some("a"));
        assert_eq!(q.handle(Key::Char('k')), Effect::Save);
        assert_eq!(q.cursor(), Some("d"));
        assert_eq!(q.handle(Key::Char('d')), Effect::Save);
        assert_eq!(q.pos, 2); // all done
        assert_eq!(q.handle(Key::Char('k')), Effect::Redraw); // nothing to decide
        assert_eq!(q.decided(), 2);
        assert_eq!(q.handle(Key::Char('b')), Effect::Save);
        assert_eq!(q.cursor(), Some("d"));
        assert_eq!(q.handle(Key::Char('k')), Effect::Save); // change of mind
        assert_eq!(q.decision("d").unwrap().decision, Some(Decision::Keep));
        assert_eq!(q.handle(Key::Left), Effect::Save);
        assert_eq!(q.handle(Key::Left), Effect::Save);
        assert_eq!(q.handle(Key::Left), Effect::Redraw); // already at the start
        assert_eq!(q.handle(Key::Char('u')), Effect::Save);
        assert!(q.decision("a").is_none());
        assert_eq!(q.handle(Key::Char('q')), Effect::Quit);
    }

    #[test]
    fn notes_are_typed_committed_or_cancelled() {
        let mut q = queue();
        q.handle(Key::Char('n'));
        for c in "長すぎるx".chars() {
            assert_eq!(q.handle(Key::Char(c)), Effect::Redraw);
        }
        q.handle(Key::Backspace);
        // Keys that mean something in browse mode are text while typing.
        assert_eq!(q.handle(Key::Char('q')), Effect::Redraw);
        q.handle(Key::Backspace);
        assert_eq!(q.handle(Key::Enter), Effect::Save);
        assert_eq!(q.decision("a").unwrap().note.as_deref(), Some("長すぎる"));
        assert_eq!(q.decision("a").unwrap().decision, None);
        q.handle(Key::Char('n'));
        assert_eq!(q.mode, Mode::Note("長すぎる".into()));
        q.handle(Key::Char('!'));
        assert_eq!(q.handle(Key::Esc), Effect::Redraw);
        assert_eq!(q.decision("a").unwrap().note.as_deref(), Some("長すぎる"));
        assert_eq!(q.mode, Mode::Browse);
        q.handle(Key::Char('n'));
        assert_eq!(q.handle(Key::Interrupt), Effect::Quit);
    }

    #[test]
    fn two_digits_give_human_scores() {
        let mut q = queue();
        assert_eq!(q.handle(Key::Char('3')), Effect::Redraw);
        assert_eq!(q.mode, Mode::Scores(3));
        assert_eq!(q.handle(Key::Char('9')), Effect::Redraw); // not a score
        assert_eq!(q.handle(Key::Char('1')), Effect::Save);
        let d = q.decision("a").unwrap();
        assert_eq!((d.socratic, d.coherence), (Some(3), Some(1)));
        q.handle(Key::Char('2'));
        q.handle(Key::Esc);
        assert_eq!(q.decision("a").unwrap().socratic, Some(3));
        assert_eq!(q.cursor(), Some("a")); // scoring does not advance
    }

    #[test]
    fn reopening_resumes_at_the_cursor_or_first_undecided() {
        let items = build_queue(&corpus(), 0.0, 1);
        let mut ds = BTreeMap::new();
        ds.insert(
            "a".to_string(),
            HumanDecision {
                decision: Some(Decision::Drop),
                ..Default::default()
            },
        );
        assert_eq!(
            Queue::new(items.clone(), ds.clone(), None).cursor(),
            Some("d")
        );
        assert_eq!(
            Queue::new(items.clone(), ds.clone(), Some("a")).cursor(),
            Some("a")
        );
        assert_eq!(
            Queue::new(items.clone(), ds.clone(), Some("gone")).cursor(),
            Some("d")
        );
        ds.insert(
            "d".to_string(),
            HumanDecision {
                decision: Some(Decision::Keep),
                ..Default::default()
            },
        );
        assert_eq!(Queue::new(items, ds, None).cursor(), None);
    }

    #[test]
    fn scores_without_a_decision_are_named() {
        let mut h = BTreeMap::new();
        h.insert(
            "a".to_string(),
            HumanDecision {
                socratic: Some(3),
                coherence: Some(2),
                ..Default::default()
            },
        );
        h.insert(
            "b".to_string(),
            HumanDecision {
                decision: Some(Decision::Keep),
                socratic: Some(4),
                ..Default::default()
            },
        );
        h.insert(
            "c".to_string(),
            HumanDecision {
                note: Some("n".into()),
                ..Default::default()
            },
        );
        assert_eq!(scored_undecided(&h), vec!["a"]);
        let note = scored_undecided_note(&h).unwrap();
        assert!(
            note.starts_with("1 dialogue(s) have human scores but no keep/drop decision (a)"),
            "{note}"
        );
        h.remove("a");
        assert!(scored_undecided_note(&h).is_none());
    }

    #[test]
    fn apply_sets_reviews_with_human_scores() {
        let mut ds = corpus();
        let mut decisions = BTreeMap::new();
        decisions.insert(
            "a".to_string(),
            HumanDecision {
                decision: Some(Decision::Keep),
                note: Some("問題なし".into()),
                socratic: Some(3),
                coherence: Some(4),
            },
        );
        decisions.insert(
            "d".to_string(),
            HumanDecision {
                note: Some("迷う".into()),
                ..Default::default()
            },
        );
        ds[3].review = Some(Review {
            decision: Decision::Keep,
            note: None,
            extra: Map::new(),
        });
        ds[0].review = Some(Review {
            decision: Decision::Drop,
            note: None,
            extra: serde_json::from_str(r#"{"reviewer":"a","socratic":1}"#).unwrap(),
        });
        assert_eq!(apply(&mut ds, &decisions), 1);
        let r = ds[0].review.as_ref().unwrap();
        assert_eq!(
            r.extra["reviewer"], "a",
            "unknown fields of an earlier review survive"
        );
        assert_eq!(
            (r.decision, r.note.as_deref()),
            (Decision::Keep, Some("問題なし"))
        );
        assert_eq!(r.extra["socratic"], 3);
        assert!(ds[0].is_kept(false));
        assert!(ds[3].review.is_none());
    }
}
