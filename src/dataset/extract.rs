//! Cutting dialogues into training examples as a variant says.

use super::{DatasetError, Result, Variant};
use crate::corpus::{Dialogue, Role, Turn};

/// One utterance of an example, its prefix (if any) already in `text`.
#[derive(Debug, Clone, PartialEq)]
pub struct Utterance {
    pub role: Role,
    pub text: String,
}

impl From<&Turn> for Utterance {
    fn from(t: &Turn) -> Self {
        Utterance {
            role: t.role,
            text: t.text.clone(),
        }
    }
}

impl From<&Utterance> for Utterance {
    fn from(u: &Utterance) -> Self {
        u.clone()
    }
}

// A variant's examples (training) and the prompts of a chat with that variant (inference) are
// cut by the two functions below and nothing else, so that the two cannot disagree.

/// Index of the first turn of the window in a conversation of `len` turns whose last pair
/// (complete in training, only its user turn in chat) is the one being learned or answered:
/// the last `pairs` pairs, or the whole conversation when `None`.
pub fn window_start(len: usize, pairs: Option<usize>) -> usize {
    let current = len.saturating_sub(1) / 2;
    match pairs {
        Some(n) => 2 * (current + 1).saturating_sub(n),
        None => 0,
    }
}

/// `turns` (from the window's start on) as utterances, `prefix` put before the first one's
/// text exactly (no separator).
pub fn window<'a, T>(turns: &'a [T], prefix: &str) -> Vec<Utterance>
where
    &'a T: Into<Utterance>,
{
    let mut out: Vec<Utterance> = turns.iter().map(Into::into).collect();
    if let Some(first) = out.first_mut() {
        first.text.insert_str(0, prefix);
    }
    out
}

/// `variant.span()` consecutive pairs of one dialogue, starting at pair `pair`.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// `<dialogue>#p<pair>`, unique within a variant.
    pub id: String,
    pub dialogue: String,
    pub pair: usize,
    /// Alternating user, model, starting with user.
    pub turns: Vec<Utterance>,
}

/// A variant's examples, with what was left out.
#[derive(Debug, Clone, Default)]
pub struct Extracted {
    pub examples: Vec<Example>,
    /// Dialogues that gave at least one example.
    pub dialogues: usize,
    /// Dialogues too short for the variant, skipped under `--skip-bad` (one message each).
    pub too_short: Vec<String>,
}

/// Whether a variant uses a dialogue: kept ones, or every one with `include_rejected`.
pub fn uses(variant: &Variant, d: &Dialogue, include_unjudged: bool) -> bool {
    variant.include_rejected || d.is_kept(include_unjudged)
}

/// Extracts `variant`'s examples from `dialogues` (in their order, then by pair). A used
/// dialogue without every pair the variant needs is an error, or skipped and reported when
/// `skip_short`.
pub fn extract(
    variant: &Variant,
    dialogues: &[Dialogue],
    include_unjudged: bool,
    skip_short: bool,
) -> Result<Extracted> {
    let mut out = Extracted::default();
    let needed = variant.pairs_needed();
    for d in dialogues
        .iter()
        .filter(|d| uses(variant, d, include_unjudged))
    {
        if d.pairs() < needed {
            let message = format!(
                "dialogue {} has {} pair(s), but examples starting at pairs {} with {} utterances need {needed} (pairs 0..={})",
                d.id,
                d.pairs(),
                variant.pairs,
                variant.utterances,
                needed - 1
            );
            if skip_short {
                out.too_short.push(message);
                continue;
            }
            return Err(DatasetError::TooShort {
                variant: variant.name.clone(),
                message,
            });
        }
        for k in variant.pairs.iter() {
            out.examples.push(example(variant, d, k));
        }
        out.dialogues += 1;
    }
    Ok(out)
}

/// The held-out dialogues in full, as one example each with the variant's prefix on the first
/// user turn: every variant is scored on the same model turns (the common metric). Only kept
/// dialogues count, whatever the variant's `include_rejected`, so the set is the same for all.
pub fn common_examples(
    variant: &Variant,
    dialogues: &[Dialogue],
    held_out: impl Fn(&str) -> bool,
    include_unjudged: bool,
) -> Vec<Example> {
    dialogues
        .iter()
        .filter(|d| d.is_kept(include_unjudged) && held_out(&d.id) && d.pairs() > 0)
        .map(|d| {
            let mut ex = span(variant, d, 0, d.pairs());
            ex.id = format!("{}#all", d.id);
            ex
        })
        .collect()
}

fn example(variant: &Variant, d: &Dialogue, pair: usize) -> Example {
    span(variant, d, pair, variant.span())
}

/// `pairs` consecutive pairs of `d` from `pair`, the prefix on the first user utterance: the
/// window of a chat with the variant when it answers the last of these pairs.
fn span(variant: &Variant, d: &Dialogue, pair: usize, pairs: usize) -> Example {
    let conversation = &d.turns[..2 * (pair + pairs)];
    let start = window_start(conversation.len(), Some(pairs));
    debug_assert_eq!(start, 2 * pair);
    let turns = window(&conversation[start..], &variant.prefix);
    Example {
        id: format!("{}#p{pair}", d.id),
        dialogue: d.id.clone(),
        pair,
        turns,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corpus::{Decision, Judge, Review, Turn};
    use crate::dataset::Pairs;
    use serde_json::Map;
    use std::path::Path;

    /// A dialogue of `rounds` rounds whose texts say where they are: `u0`, `m0`, `u1`, …
    pub fn dialogue(id: &str, rounds: usize, socratic: u8) -> Dialogue {
        let turns = (0..rounds)
            .flat_map(|k| {
                [
                    Turn {
                        role: Role::User,
                        text: format!("u{k}"),
                    },
                    Turn {
                        role: Role::Model,
                        text: format!("m{k}"),
                    },
                ]
            })
            .collect();
        Dialogue {
            id: id.into(),
            persona: "p001".into(),
            question: "q01".into(),
            user_temperature: 0.7,
            turns,
            judge: Some(Judge {
                socratic,
                coherence: 4,
                comment: String::new(),
                model: None,
                extra: Map::new(),
            }),
            review: None,
            extra: Map::new(),
        }
    }

    pub fn shipped() -> Vec<Variant> {
        Variant::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/variants")).unwrap()
    }

    fn texts(e: &Example) -> Vec<&str> {
        e.turns.iter().map(|u| u.text.as_str()).collect()
    }

    #[test]
    fn each_shipped_variant_cuts_a_known_dialogue_as_the_seed_did() {
        let d = vec![dialogue("d1", 12, 4)];
        let short = "ソクラテスさん。";
        let long = "あなたは古代ギリシャの哲学者ソクラテスです。";
        let vs = shipped();
        for v in &vs {
            let x = extract(v, &d, false, false).unwrap();
            assert_eq!(x.dialogues, 1);
            let prefix = match v.name.as_str() {
                "model1" | "model6" | "model8" => short,
                "model2" | "model7" | "model9" => long,
                _ => "",
            };
            match v.name.as_str() {
                "model1" | "model2" | "model3" => {
                    assert_eq!(x.examples.len(), 11, "{}", v.name);
                    for (i, e) in x.examples.iter().enumerate() {
                        let k = i + 1;
                        assert_eq!(e.id, format!("d1#p{k}"));
                        assert_eq!(texts(e), [format!("{prefix}u{k}"), format!("m{k}")]);
                    }
                }
                "model4" | "model6" | "model7" => {
                    assert_eq!(x.examples.len(), 1, "{}", v.name);
                    assert_eq!(texts(&x.examples[0]), [format!("{prefix}u0"), "m0".into()]);
                }
                _ => {
                    assert_eq!(x.examples.len(), 1, "{}", v.name);
                    let e = &x.examples[0];
                    assert_eq!(
                        texts(e),
                        [format!("{prefix}u0"), "m0".into(), "u1".into(), "m1".into()]
                    );
                    assert_eq!(
                        e.turns.iter().map(|u| u.role).collect::<Vec<_>>(),
                        [Role::User, Role::Model, Role::User, Role::Model]
                    );
                }
            }
        }
    }

    #[test]
    fn common_examples_are_whole_kept_held_out_dialogues_with_the_prefix() {
        let ds = vec![
            dialogue("d1", 3, 4),
            dialogue("d2", 3, 1),
            dialogue("d3", 2, 4),
        ];
        let v = variant(Pairs::List(vec![0]), 2, true);
        let held_out = |id: &str| id != "d3";
        let c = common_examples(&v, &ds, held_out, false);
        // d2 is not kept (judge 1), d3 is not held out; include_rejected does not matter.
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].id, "d1#all");
        assert_eq!(texts(&c[0]), ["Pu0", "m0", "u1", "m1", "u2", "m2"]);
    }

    fn variant(pairs: Pairs, utterances: usize, include_rejected: bool) -> Variant {
        Variant {
            name: "v".into(),
            pairs,
            utterances,
            prefix: "P".into(),
            include_rejected,
            layout: Default::default(),
        }
    }

    #[test]
    fn kept_dialogues_only_unless_include_rejected() {
        let mut reviewed = dialogue("d3", 2, 4);
        reviewed.review = Some(Review {
            decision: Decision::Drop,
            note: None,
            extra: Map::new(),
        });
        let mut unjudged = dialogue("d4", 2, 4);
        unjudged.judge = None;
        let ds = vec![
            dialogue("d1", 2, 4),
            dialogue("d2", 2, 2),
            reviewed,
            unjudged,
        ];
        let one = Pairs::Range { start: 0, end: 0 };
        let ids = |x: Extracted| {
            x.examples
                .into_iter()
                .map(|e| e.dialogue)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            ids(extract(&variant(one.clone(), 2, false), &ds, false, false).unwrap()),
            ["d1"]
        );
        assert_eq!(
            ids(extract(&variant(one.clone(), 2, false), &ds, true, false).unwrap()),
            ["d1", "d4"]
        );
        assert_eq!(
            ids(extract(&variant(one, 2, true), &ds, false, false).unwrap()),
            ["d1", "d2", "d3", "d4"]
        );
    }

    #[test]
    fn list_pairs_and_four_utterances_overlap() {
        let ds = vec![dialogue("d1", 5, 4)];
        let x = extract(
            &variant(Pairs::List(vec![0, 2, 3]), 4, false),
            &ds,
            false,
            false,
        )
        .unwrap();
        let got: Vec<_> = x
            .examples
            .iter()
            .map(|e| (e.id.as_str(), texts(e).join(" ")))
            .collect();
        assert_eq!(
            got,
            [
                ("d1#p0", "Pu0 m0 u1 m1".into()),
                ("d1#p2", "Pu2 m2 u3 m3".into()),
                ("d1#p3", "Pu3 m3 u4 m4".into())
            ]
        );
    }

    #[test]
    fn a_short_dialogue_is_an_error_or_skipped() {
        let ds = vec![dialogue("d1", 12, 4), dialogue("d2", 11, 4)];
        let v = Variant {
            name: "model1".into(),
            ..variant(Pairs::Range { start: 1, end: 11 }, 2, false)
        };
        let e = extract(&v, &ds, false, false).unwrap_err().to_string();
        assert_eq!(e, "variant model1: dialogue d2 has 11 pair(s), but examples starting at pairs 1..=11 with 2 utterances need 12 (pairs 0..=11)");
        let x = extract(&v, &ds, false, true).unwrap();
        assert_eq!(
            (x.examples.len(), x.dialogues, x.too_short.len()),
            (11, 1, 1)
        );
        // A 4-utterance example at the last pair needs the pair after it.
        let v = variant(Pairs::Range { start: 11, end: 11 }, 4, false);
        let e = extract(&v, &ds[..1], false, false).unwrap_err().to_string();
        assert!(
            e.contains("dialogue d1 has 12 pair(s)") && e.contains("need 13"),
            "{e}"
        );
    }
}
