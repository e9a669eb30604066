//! One AI×AI dialogue, with the judge's scores and the human review.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    User,
    Model,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub role: Role,
    pub text: String,
}

/// The LLM judge's scores, 0–4 each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    pub socratic: u8,
    pub coherence: u8,
    #[serde(default)]
    pub comment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Fields this version does not know, kept so that rewriting a file loses nothing.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Keep,
    Drop,
}

/// A human's decision on a dialogue, which overrides the judge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Review {
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dialogue {
    pub id: String,
    pub persona: String,
    pub question: String,
    pub user_temperature: f64,
    pub turns: Vec<Turn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The lowest judge score at which an unreviewed dialogue is kept.
pub const KEEP_THRESHOLD: u8 = 3;

impl Dialogue {
    /// Checks what a single record can check on its own: turns alternate `user`, `model`
    /// starting with `user`, no empty text, scores within 0–4.
    pub fn check(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("empty `id`".into());
        }
        if self.turns.is_empty() {
            return Err(format!("dialogue {}: no turns", self.id));
        }
        for (i, t) in self.turns.iter().enumerate() {
            let want = if i % 2 == 0 { Role::User } else { Role::Model };
            if t.role != want {
                let start = if i == 0 {
                    " (a dialogue starts with `user`)"
                } else {
                    ""
                };
                return Err(format!(
                    "dialogue {}: turn {i} is `{}`, expected `{}`: turns must alternate user, model{start}",
                    self.id,
                    role_name(t.role),
                    role_name(want)
                ));
            }
            if t.text.trim().is_empty() {
                return Err(format!("dialogue {}: turn {i} has empty text", self.id));
            }
        }
        if !(0.0..=2.0).contains(&self.user_temperature) {
            return Err(format!(
                "dialogue {}: user_temperature {} is outside 0–2",
                self.id, self.user_temperature
            ));
        }
        if let Some(j) = &self.judge {
            for (name, v) in [("socratic", j.socratic), ("coherence", j.coherence)] {
                if v > 4 {
                    return Err(format!(
                        "dialogue {}: judge.{name} = {v} is outside 0–4",
                        self.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Number of complete (user, model) pairs.
    pub fn pairs(&self) -> usize {
        self.turns.len() / 2
    }

    /// Whether the dialogue may be used for training: a review decides; without one, both judge
    /// scores must be at least 3; an unjudged dialogue counts only if `include_unjudged`.
    pub fn is_kept(&self, include_unjudged: bool) -> bool {
        match (&self.review, &self.judge) {
            (Some(r), _) => r.decision == Decision::Keep,
            (None, Some(j)) => j.socratic >= KEEP_THRESHOLD && j.coherence >= KEEP_THRESHOLD,
            (None, None) => include_unjudged,
        }
    }

    /// Why a dialogue is not kept, in a few words (None when it is kept).
    pub fn drop_reason(&self, include_unjudged: bool) -> Option<String> {
        if self.is_kept(include_unjudged) {
            return None;
        }
        Some(match (&self.review, &self.judge) {
            (Some(r), _) => match &r.note {
                Some(n) if !n.is_empty() => format!("dropped on review: {n}"),
                _ => "dropped on review".into(),
            },
            (None, Some(j)) => format!(
                "judge scores below {KEEP_THRESHOLD} (socratic {}, coherence {})",
                j.socratic, j.coherence
            ),
            (None, None) => "not judged".into(),
        })
    }
}

fn role_name(r: Role) -> &'static str {
    match r {
        Role::User => "user",
        Role::Model => "model",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialogue(json: &str) -> Dialogue {
        serde_json::from_str(json).unwrap()
    }

    const OK: &str = r#"{"id":"d1","persona":"p001","question":"q01","user_temperature":0.3,
        "turns":[{"role":"user","text":"正義とは？"},{"role":"model","text":"君はどう思うかね？"}],
        "judge":{"socratic":3,"coherence":4,"comment":"良い","model":"m","fingerprint":"fp"},
        "source":"x"}"#;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let d = dialogue(OK);
        assert_eq!(d.extra["source"], "x");
        assert_eq!(d.judge.as_ref().unwrap().extra["fingerprint"], "fp");
        let back: Value = serde_json::to_value(&d).unwrap();
        assert_eq!(back["source"], "x");
        assert_eq!(back["judge"]["fingerprint"], "fp");
        assert!(back.get("review").is_none());
    }

    #[test]
    fn checks_alternation_start_and_scores() {
        assert!(dialogue(OK).check().is_ok());
        let mut d = dialogue(OK);
        d.turns.swap(0, 1);
        let e = d.check().unwrap_err();
        assert!(e.contains("turn 0 is `model`, expected `user`"), "{e}");
        let mut d = dialogue(OK);
        d.turns[1].role = Role::User;
        assert!(d.check().unwrap_err().contains("turn 1 is `user`"));
        let mut d = dialogue(OK);
        d.judge.as_mut().unwrap().coherence = 5;
        assert!(d
            .check()
            .unwrap_err()
            .contains("judge.coherence = 5 is outside 0–4"));
    }

    #[test]
    fn kept_rule_follows_review_then_judge() {
        let mut d = dialogue(OK);
        assert!(d.is_kept(false));
        d.judge.as_mut().unwrap().socratic = 2;
        assert!(!d.is_kept(false));
        assert!(d.drop_reason(false).unwrap().contains("socratic 2"));
        d.review = Some(Review {
            decision: Decision::Keep,
            note: None,
            extra: Map::new(),
        });
        assert!(d.is_kept(false));
        d.review.as_mut().unwrap().decision = Decision::Drop;
        assert!(!d.is_kept(true));
        d.review = None;
        d.judge = None;
        assert!(!d.is_kept(false));
        assert!(d.is_kept(true));
    }
}
