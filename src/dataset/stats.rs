//! Token statistics per variant, as the seed's table: an utterance's tokens are its text (with
//! the prefix where it has one) encoded without special tokens; an example's tokens are the sum
//! over its utterances. Chat-template tokens are a column of their own.

use super::{Extracted, Split, TokenCounts, Variant};
use crate::corpus::Role;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantStats {
    pub variant: String,
    /// Dialogues that gave at least one example.
    pub dialogues: usize,
    pub examples: usize,
    pub total_tokens: usize,
    /// Mean, max and min tokens per example (0 when there are no examples).
    pub mean_tokens: f64,
    pub max_tokens: usize,
    pub min_tokens: usize,
    /// Mean tokens per user utterance (prefix included) and per model utterance.
    pub user_mean_tokens: f64,
    pub model_mean_tokens: f64,
    /// Chat-template tokens per example (mean): the special tokens, and the template's own text
    /// (role headers, separators, the system text), each piece encoded on its own.
    pub template_tokens: f64,
    /// Examples from training and from held-out dialogues.
    pub train_examples: usize,
    pub val_examples: usize,
}

impl VariantStats {
    pub fn compute(variant: &Variant, x: &Extracted, counts: &TokenCounts, split: &Split) -> Self {
        let mut s = VariantStats {
            variant: variant.name.clone(),
            dialogues: x.dialogues,
            examples: x.examples.len(),
            total_tokens: 0,
            mean_tokens: 0.0,
            max_tokens: 0,
            min_tokens: 0,
            user_mean_tokens: 0.0,
            model_mean_tokens: 0.0,
            template_tokens: 0.0,
            train_examples: 0,
            val_examples: 0,
        };
        let (mut user, mut n_user, mut model, mut n_model, mut template) = (0, 0, 0, 0, 0);
        let mut min = usize::MAX;
        for ex in &x.examples {
            let mut tokens = 0;
            for u in &ex.turns {
                let n = counts.content_tokens(u);
                tokens += n;
                match u.role {
                    Role::User => (user, n_user) = (user + n, n_user + 1),
                    Role::Model => (model, n_model) = (model + n, n_model + 1),
                }
            }
            template += counts.template_tokens(&variant.layout, ex);
            s.total_tokens += tokens;
            s.max_tokens = s.max_tokens.max(tokens);
            min = min.min(tokens);
            if split.is_val(&ex.dialogue) {
                s.val_examples += 1;
            } else {
                s.train_examples += 1;
            }
        }
        let mean = |sum: usize, n: usize| if n == 0 { 0.0 } else { sum as f64 / n as f64 };
        s.min_tokens = if s.examples == 0 { 0 } else { min };
        s.mean_tokens = mean(s.total_tokens, s.examples);
        s.user_mean_tokens = mean(user, n_user);
        s.model_mean_tokens = mean(model, n_model);
        s.template_tokens = mean(template, s.examples);
        s
    }
}

/// The statistics as a Markdown table, one row per variant.
pub fn markdown_table(rows: &[VariantStats]) -> String {
    let head = [
        "variant",
        "dialogues",
        "examples",
        "total tokens",
        "mean",
        "max",
        "min",
        "user mean",
        "model mean",
        "template",
        "train",
        "val",
    ];
    let mut out = format!("| {} |\n|{}\n", head.join(" | "), "---|".repeat(head.len()));
    for r in rows {
        let cells = [
            r.variant.clone(),
            r.dialogues.to_string(),
            r.examples.to_string(),
            r.total_tokens.to_string(),
            format!("{:.2}", r.mean_tokens),
            r.max_tokens.to_string(),
            r.min_tokens.to_string(),
            format!("{:.2}", r.user_mean_tokens),
            format!("{:.2}", r.model_mean_tokens),
            format!("{:.2}", r.template_tokens),
            r.train_examples.to_string(),
            r.val_examples.to_string(),
        ];
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::corpus::{Dialogue, Judge, Turn};
    use crate::dataset::{extract, ChatTokenizer, Pairs, Variant};
    use serde_json::Map;
    use std::collections::BTreeSet;
    use std::path::Path;
    use tokenizers::models::wordlevel::WordLevel;
    use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
    use tokenizers::{AddedToken, Tokenizer};

    /// One token per whitespace-separated word, so counts can be worked out by hand. The
    /// newline between turns encodes to nothing; each role header is one token.
    pub fn word_tokenizer(words: &[&str]) -> ChatTokenizer {
        let specials = [
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
        ];
        let vocab = specials
            .iter()
            .chain(&["user", "model"])
            .chain(words)
            .enumerate()
            .map(|(i, w)| (w.to_string(), i as u32))
            .collect();
        let model = WordLevel::builder()
            .vocab(vocab)
            .unk_token("<unk>".into())
            .build()
            .unwrap();
        let mut t = Tokenizer::new(model);
        t.with_pre_tokenizer(Some(WhitespaceSplit));
        t.add_special_tokens(specials.map(|s| AddedToken::from(s, true)))
            .unwrap();
        ChatTokenizer::new(t, Path::new("words/tokenizer.json")).unwrap()
    }

    fn dialogue(id: &str, texts: &[&str], socratic: u8) -> Dialogue {
        Dialogue {
            id: id.into(),
            persona: "p".into(),
            question: "q".into(),
            user_temperature: 0.3,
            turns: texts
                .iter()
                .enumerate()
                .map(|(i, t)| Turn {
                    role: if i % 2 == 0 { Role::User } else { Role::Model },
                    text: t.to_string(),
                })
                .collect(),
            judge: Some(Judge {
                socratic,
                coherence: 3,
                comment: String::new(),
                model: None,
                extra: Map::new(),
            }),
            review: None,
            extra: Map::new(),
        }
    }

    fn variant(
        name: &str,
        pairs: Pairs,
        utterances: usize,
        prefix: &str,
        include_rejected: bool,
    ) -> Variant {
        Variant {
            name: name.into(),
            pairs,
            utterances,
            prefix: prefix.into(),
            include_rejected,
            layout: Default::default(),
        }
    }

    #[test]
    fn statistics_of_a_hand_counted_corpus() {
        let ds = vec![
            dialogue("d1", &["a b", "c d e", "f", "g h"], 4),
            dialogue("d2", &["a", "b c", "d e f g", "h"], 3),
            // Dropped by the judge: only variants with include_rejected see it.
            dialogue("d3", &["a b c d e f g", "h", "a", "b"], 2),
        ];
        let tok = word_tokenizer(&["a", "b", "c", "d", "e", "f", "g", "h", "x"]);
        let split = Split {
            seed: 0,
            train: BTreeSet::from(["d1".into(), "d3".into()]),
            val: BTreeSet::from(["d2".into()]),
        };
        let pairs01 = Pairs::Range { start: 0, end: 1 };
        let one = variant("one", pairs01, 2, "x ", false);
        let four = variant("four", Pairs::Range { start: 0, end: 0 }, 4, "", true);
        let xs: Vec<_> = [&one, &four]
            .iter()
            .map(|v| extract(v, &ds, false, false).unwrap())
            .collect();
        let cache = TokenCounts::build(
            &tok,
            [&one, &four]
                .into_iter()
                .zip(&xs)
                .flat_map(|(v, x)| x.examples.iter().map(move |e| (&v.layout, e))),
        )
        .unwrap();
        // one: d1#p0 "x a b"+"c d e" = 3+3, d1#p1 "x f"+"g h" = 2+2, d2#p0 "x a"+"b c" = 2+2,
        // d2#p1 "x d e f g"+"h" = 5+1. Template: BOS + 2 × (<start_of_turn>, header, <end_of_turn>).
        let got = VariantStats::compute(&one, &xs[0], &cache, &split);
        let want = VariantStats {
            variant: "one".into(),
            dialogues: 2,
            examples: 4,
            total_tokens: 20,
            mean_tokens: 5.0,
            max_tokens: 6,
            min_tokens: 4,
            user_mean_tokens: 3.0,
            model_mean_tokens: 2.0,
            template_tokens: 7.0,
            train_examples: 2,
            val_examples: 2,
        };
        assert_eq!(got, want);
        // four: d1 2+3+1+2 = 8, d2 1+2+4+1 = 8, d3 7+1+1+1 = 10; users (2+1+1+4+7+1)/6 = 16/6,
        // models (3+2+2+1+1+1)/6 = 10/6; template 1 + 4 × 3 = 13.
        let got = VariantStats::compute(&four, &xs[1], &cache, &split);
        assert_eq!(
            (
                got.dialogues,
                got.examples,
                got.total_tokens,
                got.max_tokens,
                got.min_tokens
            ),
            (3, 3, 26, 10, 8)
        );
        assert!((got.mean_tokens - 26.0 / 3.0).abs() < 1e-12);
        assert!((got.user_mean_tokens - 16.0 / 6.0).abs() < 1e-12);
        assert!((got.model_mean_tokens - 10.0 / 6.0).abs() < 1e-12);
        assert_eq!(
            (got.template_tokens, got.train_examples, got.val_examples),
            (13.0, 2, 1)
        );

        let table = markdown_table(std::slice::from_ref(&want));
        assert!(
            table.starts_with("| variant | dialogues | examples | total tokens | mean |"),
            "{table}"
        );
        assert!(
            table.ends_with("| one | 2 | 4 | 20 | 5.00 | 6 | 4 | 3.00 | 2.00 | 7.00 | 2 | 2 |\n"),
            "{table}"
        );
        let json = serde_json::to_value(&want).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(|k| k.as_str())
            .collect();
        let mut want_keys = vec![
            "variant",
            "dialogues",
            "examples",
            "total_tokens",
            "mean_tokens",
            "max_tokens",
            "min_tokens",
            "user_mean_tokens",
            "model_mean_tokens",
            "template_tokens",
            "train_examples",
            "val_examples",
        ];
        want_keys.sort();
        assert_eq!(keys, want_keys);
    }

    #[test]
    fn a_variant_without_examples_has_zeros() {
        let tok = word_tokenizer(&["a"]);
        let cache = TokenCounts::build(&tok, []).unwrap();
        let split = Split::new([], 42);
        let none = variant("none", Pairs::Range { start: 0, end: 0 }, 2, "", false);
        let s = VariantStats::compute(&none, &Extracted::default(), &cache, &split);
        assert_eq!(
            (
                s.examples,
                s.min_tokens,
                s.max_tokens,
                s.mean_tokens,
                s.template_tokens
            ),
            (0, 0, 0, 0.0, 0.0)
        );
    }
}
