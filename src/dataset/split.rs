//! The 80/20 split by dialogue. It is decided once over the ids of every dialogue in the
//! corpus, kept or not, so that every variant (with or without rejected dialogues) holds out
//! the same dialogues and their validation losses compare.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Share of dialogues held out for validation.
pub const VAL_FRACTION: f64 = 0.2;
pub const DEFAULT_SEED: u64 = 42;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    pub seed: u64,
    pub train: BTreeSet<String>,
    pub val: BTreeSet<String>,
}

impl Split {
    /// Sorts the ids, shuffles them with `seed`, and puts the first round(20%) in validation.
    pub fn new<'a>(ids: impl IntoIterator<Item = &'a str>, seed: u64) -> Self {
        let mut ids: Vec<&str> = ids
            .into_iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        shuffle(&mut ids, seed);
        let n_val = (ids.len() as f64 * VAL_FRACTION).round() as usize;
        let val = ids[..n_val].iter().map(|s| s.to_string()).collect();
        let train = ids[n_val..].iter().map(|s| s.to_string()).collect();
        Split { seed, train, val }
    }

    pub fn is_val(&self, dialogue: &str) -> bool {
        self.val.contains(dialogue)
    }

    pub fn manifest(&self, corpus: &std::path::Path, corpus_sha256: &str) -> Manifest {
        Manifest {
            seed: self.seed,
            val_fraction: VAL_FRACTION,
            corpus: corpus.display().to_string(),
            corpus_sha256: corpus_sha256.to_string(),
            dialogues: self.train.len() + self.val.len(),
            train: self.train.iter().cloned().collect(),
            val: self.val.iter().cloned().collect(),
        }
    }
}

/// Fisher–Yates over ChaCha8 seeded from the seed's little-endian bytes, written out here so
/// that no change in `rand`'s helpers can move a published split.
fn shuffle<T>(xs: &mut [T], seed: u64) {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    for i in (1..xs.len()).rev() {
        // Multiply-shift maps a 64-bit draw onto 0..=i; the bias (< i / 2^64) is immaterial.
        let j = ((rng.next_u64() as u128 * (i as u128 + 1)) >> 64) as usize;
        xs.swap(i, j);
    }
}

/// `split.json`: where each dialogue went, and what the split was made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub seed: u64,
    pub val_fraction: f64,
    pub corpus: String,
    pub corpus_sha256: String,
    /// Dialogues the split was decided over (all of the corpus, kept or not).
    pub dialogues: usize,
    pub train: Vec<String>,
    pub val: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::extract::tests::{dialogue, shipped};
    use crate::dataset::extract::{extract, uses};

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i:04}")).collect()
    }

    #[test]
    fn same_seed_same_split_and_no_overlap() {
        let all = ids(296);
        let a = Split::new(all.iter().map(|s| s.as_str()), 42);
        // Order of the input does not matter: ids are sorted first.
        let b = Split::new(all.iter().rev().map(|s| s.as_str()), 42);
        assert_eq!(a, b);
        assert_eq!(a.val.len(), 59, "round(296 × 0.2)");
        assert_eq!(a.train.len(), 237);
        assert!(a.train.is_disjoint(&a.val));
        let c = Split::new(all.iter().map(|s| s.as_str()), 7);
        assert_ne!(a.val, c.val);
    }

    #[test]
    fn the_split_is_pinned() {
        // Changing how the split is drawn would silently change every published run.
        let all = ids(10);
        let s = Split::new(all.iter().map(|s| s.as_str()), 42);
        let got: Vec<&str> = s.val.iter().map(|s| s.as_str()).collect();
        assert_eq!(got, PINNED_VAL);
    }
    const PINNED_VAL: [&str; 2] = ["d0006", "d0007"];

    #[test]
    fn rounding_of_the_validation_share() {
        for (n, want) in [(0, 0), (1, 0), (2, 0), (3, 1), (5, 1), (12, 2), (13, 3)] {
            let all = ids(n);
            assert_eq!(
                Split::new(all.iter().map(|s| s.as_str()), 1).val.len(),
                want,
                "n = {n}"
            );
        }
    }

    #[test]
    fn every_variant_holds_out_the_same_dialogues() {
        let ds: Vec<_> = (0..40)
            .map(|i| dialogue(&format!("d{i:02}"), 12, if i % 3 == 0 { 2 } else { 4 }))
            .collect();
        let split = Split::new(ds.iter().map(|d| d.id.as_str()), 42);
        let mut variants = shipped();
        let mut rejected = variants[3].clone();
        rejected.include_rejected = true;
        variants.push(rejected);
        for v in &variants {
            let x = extract(v, &ds, false, false).unwrap();
            for d in ds.iter().filter(|d| uses(v, d, false)) {
                let held: Vec<bool> = x
                    .examples
                    .iter()
                    .filter(|e| e.dialogue == d.id)
                    .map(|e| split.is_val(&e.dialogue))
                    .collect();
                assert!(!held.is_empty());
                assert!(
                    held.iter().all(|&h| h == split.is_val(&d.id)),
                    "{} {}",
                    v.name,
                    d.id
                );
            }
        }
        // The kept-only variant's validation dialogues are exactly the kept ones of the shared split.
        let kept_val: BTreeSet<&str> = ds
            .iter()
            .filter(|d| d.is_kept(false) && split.is_val(&d.id))
            .map(|d| d.id.as_str())
            .collect();
        let x = extract(&variants[3], &ds, false, false).unwrap();
        let got: BTreeSet<&str> = x
            .examples
            .iter()
            .filter(|e| split.is_val(&e.dialogue))
            .map(|e| e.dialogue.as_str())
            .collect();
        assert_eq!(got, kept_val);
    }
}
