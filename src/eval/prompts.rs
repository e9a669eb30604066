//! The held-out prompts: every user turn of the split's validation dialogues (the dialogues
//! no run trained on), each with the conversation before it, the same for every run.

use super::{EvalError, Result};
use crate::corpus::{load_dialogues, Dialogue, LoadOptions, Role};
use crate::dataset::split::Manifest;
use crate::dataset::Utterance;
use crate::fsutil::sha256_file;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::{Path, PathBuf};

/// One user turn to answer and what came before it.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalPrompt {
    /// `<dialogue>#p<pair>`: the user turn is turn 2·pair of the dialogue.
    pub id: String,
    pub dialogue: Dialogue,
    pub pair: usize,
}

impl EvalPrompt {
    /// Turns 0 ..= 2·pair: the history ending with the user turn to answer.
    pub fn history(&self) -> Vec<Utterance> {
        self.dialogue.turns[..=2 * self.pair]
            .iter()
            .map(|t| Utterance {
                role: t.role,
                text: t.text.clone(),
            })
            .collect()
    }
}

/// Reads the split every run shares (their `data/split.json` must hold the same validation
/// dialogues) and loads its corpus (`corpus`, or the path the split names, whose SHA-256 must
/// match).
pub fn held_out(splits: &[PathBuf], corpus: Option<&Path>) -> Result<(Manifest, Vec<Dialogue>)> {
    let read = |p: &Path| -> Result<Manifest> {
        let text = std::fs::read_to_string(p).map_err(|e| crate::fsutil::FileError::new(p, e))?;
        serde_json::from_str(&text)
            .map_err(|e| EvalError::Invalid(format!("{}: not a split manifest: {e}", p.display())))
    };
    let first = splits
        .first()
        .ok_or_else(|| EvalError::Invalid("no run to take the held-out split from".into()))?;
    let split = read(first)?;
    for p in &splits[1..] {
        let other = read(p)?;
        if other.val != split.val {
            return Err(EvalError::Invalid(format!(
                "{} and {} hold out different dialogues: evaluate runs built from the same corpus and seed",
                first.display(),
                p.display()
            )));
        }
    }
    let path = corpus.map_or_else(|| PathBuf::from(&split.corpus), Path::to_path_buf);
    if !path.is_file() {
        return Err(EvalError::Invalid(format!(
            "{}: the corpus the split was made from ({}) is not there; pass --dialogues",
            first.display(),
            path.display()
        )));
    }
    let sha = sha256_file(&path)?;
    if sha != split.corpus_sha256 {
        return Err(EvalError::Invalid(format!(
            "{}: its SHA-256 differs from the one {} records (the corpus changed since the data was built)",
            path.display(),
            first.display()
        )));
    }
    let all = load_dialogues(&path, LoadOptions::default())?;
    let val: Vec<Dialogue> = all
        .records
        .into_iter()
        .map(|(_, d)| d)
        .filter(|d| split.val.contains(&d.id))
        .collect();
    Ok((split, val))
}

/// Every user turn of `dialogues` (in file order, then turn order), or a seeded sample of
/// `count` of them kept in that order.
pub fn select(dialogues: &[Dialogue], count: usize, seed: u64) -> Vec<EvalPrompt> {
    let mut all: Vec<EvalPrompt> = dialogues
        .iter()
        .flat_map(|d| {
            (0..d.turns.len().div_ceil(2))
                .filter(|&k| d.turns[2 * k].role == Role::User)
                .map(move |k| EvalPrompt {
                    id: format!("{}#p{k}", d.id),
                    dialogue: d.clone(),
                    pair: k,
                })
        })
        .collect();
    if count < all.len() {
        let mut idx: Vec<usize> = (0..all.len()).collect();
        idx.shuffle(&mut rand_chacha::ChaCha8Rng::seed_from_u64(seed));
        let mut keep = idx[..count].to_vec();
        keep.sort_unstable();
        all = keep.into_iter().map(|i| all[i].clone()).collect();
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corpus::Turn;

    fn dialogue(id: &str, turns: usize) -> Dialogue {
        Dialogue {
            id: id.into(),
            persona: "p".into(),
            question: "q".into(),
            user_temperature: 0.3,
            turns: (0..turns)
                .map(|i| Turn {
                    role: if i % 2 == 0 { Role::User } else { Role::Model },
                    text: format!("{id}-{i}"),
                })
                .collect(),
            judge: None,
            review: None,
            extra: Default::default(),
        }
    }

    #[test]
    fn every_user_turn_is_a_prompt_with_its_history() {
        let ds = [dialogue("a", 4), dialogue("b", 3)];
        let p = select(&ds, 100, 0);
        let ids: Vec<&str> = p.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, ["a#p0", "a#p1", "b#p0", "b#p1"]);
        let h = p[1].history();
        assert_eq!(h.len(), 3);
        assert_eq!(h[2].text, "a-2");
        assert_eq!(h[2].role, Role::User);
    }

    #[test]
    fn a_sample_is_seeded_and_keeps_file_order() {
        let ds: Vec<Dialogue> = (0..10).map(|i| dialogue(&format!("d{i}"), 6)).collect();
        let a = select(&ds, 7, 3);
        assert_eq!(a.len(), 7);
        assert_eq!(a, select(&ds, 7, 3));
        assert_ne!(a, select(&ds, 7, 4));
        let all = select(&ds, 1000, 0);
        let pos: Vec<usize> = a
            .iter()
            .map(|x| all.iter().position(|y| y.id == x.id).unwrap())
            .collect();
        assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    }
}
