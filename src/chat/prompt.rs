//! Which turns a reply is generated from, with what prefix, system text and format.
//!
//! A variant trained on `utterances` = 2 saw one pair per example (a user turn, the reply),
//! on 4 two consecutive pairs, always with its prefix on the example's first user turn. So a
//! reply sees the last `utterances / 2` pairs (its own included) with the prefix on the first
//! user turn of that window; without a variant, the whole history. When the window does not
//! fit the context (with room for the reply), whole rounds go from its oldest end.

use super::{ChatError, Result};
use crate::corpus::Role;
use crate::dataset::extract::{window, window_start};
use crate::dataset::{render_prompt, ChatTokenizer, Format, Layout, Utterance, Variant};

/// How much of the conversation a reply sees, and what goes before it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PromptFormat {
    /// Pairs in the window, the one being answered included (None: the whole history).
    pub pairs: Option<usize>,
    /// Put before the window's first user turn, exactly (no separator).
    pub prefix: String,
    /// The system text and the format, as the variant was trained with.
    pub layout: Layout,
}

impl PromptFormat {
    /// The whole history, no prefix.
    pub fn whole() -> Self {
        Self::default()
    }

    /// The window, prefix and layout a variant was trained with.
    pub fn from_variant(v: &Variant) -> Self {
        Self {
            pairs: Some(v.span()),
            prefix: v.prefix.clone(),
            layout: v.layout.clone(),
        }
    }

    /// One line for messages: `2 pairs, prefix "…"` (then the system text and the Alpaca
    /// format, when set).
    pub fn describe(&self) -> String {
        let window = match self.pairs {
            None => "the whole history".to_string(),
            Some(1) => "1 pair".to_string(),
            Some(n) => format!("{n} pairs"),
        };
        let mut s = if self.prefix.is_empty() {
            format!("{window}, no prefix")
        } else {
            format!("{window}, prefix {:?}", self.prefix)
        };
        if let Some(system) = &self.layout.system {
            s.push_str(&format!(", system {system:?}"));
        }
        if self.layout.format == Format::Alpaca {
            s.push_str(", Alpaca format");
        }
        s
    }

    /// Index of the window's first turn in a history of `len` turns that ends with a user turn.
    /// Training cuts its examples with the same function.
    pub fn window_start(&self, len: usize) -> usize {
        window_start(len, self.pairs)
    }

    /// The turns of `history` from `start`, the prefix on the first (as training puts it).
    pub fn turns(&self, history: &[Utterance], start: usize) -> Vec<Utterance> {
        window(&history[start..], &self.prefix)
    }

    /// The prompt for the reply to `history` (alternating turns ending with a user turn): the
    /// window, rendered, nothing dropped.
    pub fn render(&self, tok: &ChatTokenizer, history: &[Utterance]) -> Result<Vec<u32>> {
        check(history)?;
        let start = self.window_start(history.len());
        Ok(render_prompt(
            tok,
            &self.layout,
            &self.turns(history, start),
        )?)
    }

    /// The prompt for the reply to `history`, with the oldest rounds of the window dropped
    /// while the prompt plus `reserve` new tokens would exceed `context`. The newest user turn
    /// is always kept: if it fits only without the full reserve, the reply gets the room that
    /// is left (see [`Prompt::room`]); if it does not fit at all, that is an error.
    pub fn build(
        &self,
        tok: &ChatTokenizer,
        history: &[Utterance],
        context: usize,
        reserve: usize,
    ) -> Result<Prompt> {
        check(history)?;
        let first = self.window_start(history.len());
        let last = history.len() - 1;
        let mut start = first;
        loop {
            let ids = render_prompt(tok, &self.layout, &self.turns(history, start))?;
            if ids.len() + reserve <= context || start == last {
                if ids.len() >= context {
                    return Err(ChatError::TooLong {
                        tokens: ids.len(),
                        context,
                    });
                }
                return Ok(Prompt {
                    room: context - ids.len(),
                    ids,
                    start,
                    dropped: (start - first) / 2,
                });
            }
            start += 2;
        }
    }
}

/// A rendered prompt and where its window starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Index in the history of the first turn the prompt holds.
    pub start: usize,
    /// Rounds the window lost to the context limit.
    pub dropped: usize,
    /// Tokens the reply may have before the context is full.
    pub room: usize,
}

/// A history a reply can follow: alternating user and model turns, starting and ending with
/// a user turn.
fn check(history: &[Utterance]) -> Result<()> {
    if history.len().is_multiple_of(2) {
        return Err(ChatError::Invalid(
            "a reply follows a conversation that ends with a user turn".into(),
        ));
    }
    for (i, u) in history.iter().enumerate() {
        let want = if i % 2 == 0 { Role::User } else { Role::Model };
        if u.role != want {
            return Err(ChatError::Invalid(format!(
                "turn {i} has the wrong role: turns alternate user and model, starting with user"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tokenizer::tests::small;
    use crate::dataset::Pairs;

    fn history(n: usize) -> Vec<Utterance> {
        (0..n)
            .map(|i| Utterance {
                role: if i % 2 == 0 { Role::User } else { Role::Model },
                text: format!("t{i}"),
            })
            .collect()
    }

    fn variant(utterances: usize, prefix: &str) -> Variant {
        Variant {
            name: "v".into(),
            pairs: Pairs::Range { start: 0, end: 0 },
            utterances,
            prefix: prefix.into(),
            include_rejected: false,
            layout: Layout::default(),
        }
    }

    fn texts(turns: &[Utterance]) -> Vec<&str> {
        turns.iter().map(|u| u.text.as_str()).collect()
    }

    #[test]
    fn a_two_utterance_variant_sees_the_last_user_turn_with_its_prefix() {
        let f = PromptFormat::from_variant(&variant(2, "P。"));
        // The opening (turn 0) answered first, then each user turn alone.
        assert_eq!(f.window_start(1), 0);
        assert_eq!(texts(&f.turns(&history(1), 0)), ["P。t0"]);
        let h = history(7);
        let start = f.window_start(h.len());
        assert_eq!(start, 6);
        assert_eq!(texts(&f.turns(&h, start)), ["P。t6"]);
    }

    #[test]
    fn a_four_utterance_variant_sees_two_pairs_prefix_on_the_first() {
        let f = PromptFormat::from_variant(&variant(4, "P。"));
        assert_eq!(texts(&f.turns(&history(1), f.window_start(1))), ["P。t0"]);
        assert_eq!(
            texts(&f.turns(&history(3), f.window_start(3))),
            ["P。t0", "t1", "t2"]
        );
        let h = history(7);
        assert_eq!(
            texts(&f.turns(&h, f.window_start(h.len()))),
            ["P。t4", "t5", "t6"]
        );
    }

    #[test]
    fn without_a_variant_the_whole_history() {
        let h = history(7);
        let f = PromptFormat::whole();
        assert_eq!(f.window_start(7), 0);
        assert_eq!(texts(&f.turns(&h, 0)), texts(&h));
        let f = PromptFormat {
            prefix: "P。".into(),
            ..f
        };
        assert_eq!(texts(&f.turns(&h, 0))[..2], ["P。t0", "t1"]);
        assert_eq!(f.describe(), "the whole history, prefix \"P。\"");
    }

    #[test]
    fn the_prompt_is_the_rendered_window() {
        let tok = small();
        let h = history(5);
        let f = PromptFormat::from_variant(&variant(4, "P。"));
        let want = render_prompt(&tok, &f.layout, &f.turns(&h, 2)).unwrap();
        assert_eq!(f.render(&tok, &h).unwrap(), want);
        let p = f.build(&tok, &h, 256, 16).unwrap();
        assert_eq!((p.ids, p.start, p.dropped), (want.clone(), 2, 0));
        assert_eq!(p.room, 256 - want.len());
        assert!(f.render(&tok, &h[..4]).is_err(), "ends with a model turn");
    }

    #[test]
    fn trimming_drops_whole_rounds_from_the_oldest_and_moves_the_prefix() {
        let tok = small();
        let h = history(9);
        let f = PromptFormat {
            pairs: None,
            prefix: "P。".into(),
            layout: Layout::default(),
        };
        let len_from = |s: usize| {
            render_prompt(&tok, &f.layout, &f.turns(&h, s))
                .unwrap()
                .len()
        };
        let full = len_from(0);
        // Room for everything: nothing dropped.
        assert_eq!(f.build(&tok, &h, full + 10, 10).unwrap().dropped, 0);
        // One token short: the first round goes, the prefix moves to turn 2.
        let p = f.build(&tok, &h, full + 9, 10).unwrap();
        assert_eq!((p.start, p.dropped), (2, 1));
        assert_eq!(
            p.ids,
            render_prompt(&tok, &f.layout, &f.turns(&h, 2)).unwrap(),
            "prefix on the new first user turn"
        );
        assert!(p.ids.len() + 10 <= full + 9);
        // Only the newest user turn fits, and only with less than the reserve: it gets the rest.
        let last = len_from(8);
        let p = f.build(&tok, &h, last + 3, 10).unwrap();
        assert_eq!((p.start, p.dropped, p.room), (8, 4, 3));
        // Not even that: an error naming both numbers.
        let e = f.build(&tok, &h, last, 10).unwrap_err().to_string();
        assert!(
            e.contains(&format!("{last} tokens")) && e.contains(&format!("context is {last}")),
            "{e}"
        );
        // A variant window is trimmed the same way, within the window.
        let v = PromptFormat::from_variant(&variant(4, "P。"));
        let two = render_prompt(&tok, &v.layout, &v.turns(&h, 6))
            .unwrap()
            .len();
        let p = v.build(&tok, &h, two + 4, 5).unwrap();
        assert_eq!((p.start, p.dropped), (8, 1));
    }

    /// Training and chat cannot disagree: for every family's template, every shipped variant
    /// (the fallback ones too) and every example of a dialogue, the tokens before the example's
    /// last reply (as training renders them) are the prompt chat renders for the same history
    /// with that variant.
    #[test]
    fn every_shipped_variant_trains_on_the_prompt_chat_renders() {
        use crate::dataset::extract::tests::{dialogue, shipped};
        use crate::dataset::tokenizer::tests::small_for;
        use crate::dataset::{extract, render, ChatTemplate, Segments, IGNORE};
        let d = dialogue("d1", 12, 4);
        let conversation: Vec<Utterance> = d.turns.iter().map(Into::into).collect();
        let fallback =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/variants-fallback");
        let variants = [shipped(), Variant::load_dir(&fallback).unwrap()].concat();
        for template in ChatTemplate::ALL {
            let tok = small_for(template);
            for v in &variants {
                let x = extract(v, std::slice::from_ref(&d), false, false).unwrap();
                let segments =
                    Segments::build(&tok, x.examples.iter().map(|e| (&v.layout, e))).unwrap();
                let format = PromptFormat::from_variant(v);
                for e in &x.examples {
                    let t = render(e, &v.layout, &segments);
                    // The last reply's trained tokens run to the end but for the separator.
                    let untrained_tail = t.labels.iter().rev().take_while(|&&l| l == IGNORE);
                    let tail = untrained_tail.count();
                    let trained = t.labels[..t.labels.len() - tail]
                        .iter()
                        .rev()
                        .take_while(|&&l| l != IGNORE)
                        .count();
                    let reply = t.labels.len() - tail - trained;
                    let answered = 2 * (e.pair + v.span()) - 1;
                    let history = &conversation[..answered];
                    assert_eq!(
                        format.render(&tok, history).unwrap(),
                        t.input_ids[..reply],
                        "{template} {} {}",
                        v.name,
                        e.id
                    );
                    let start = format.window_start(history.len());
                    assert_eq!(
                        format.turns(history, start)[..],
                        e.turns[..e.turns.len() - 1]
                    );
                }
            }
        }
    }
}
