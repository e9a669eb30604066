//! Which examples make each micro-batch and each optimizer step.
//!
//! Every layout is a pure function of (example lengths, options, seed, epoch), so the
//! micro-batches of any global step can be recomputed after a restart: exact resume needs
//! only the step number, the config and the data hash, which the checkpoint already holds.
//!
//! * `random`: the epoch's seeded permutation cut into micro-batches in order (the historical
//!   behaviour; padded to the longest example of each micro-batch).
//! * `grouped`: the same permutation cut into buckets of about [`BUCKET_EXAMPLES`] examples,
//!   each bucket sorted by length (longest first; ties keep the shuffled order), cut into
//!   micro-batches, and the epoch's micro-batches shuffled again, so a micro-batch holds
//!   examples of similar length while steps still mix lengths and the composition changes
//!   from epoch to epoch.
//! * `micro_batch_tokens = N` (either order): micro-batches are filled while
//!   `rows × longest row ≤ N` (padding included), instead of `micro_batch` examples each, so a
//!   micro-batch's activation memory is bounded by tokens, not by the longest example.
//!
//! * `pack = true`: several examples share a row of up to `max_seq_len` tokens (or the token
//!   budget, if smaller). The epoch's permutation is packed best-fit-decreasing (longest
//!   first, ties in shuffled order; each example goes to the fullest row it fits), the rows
//!   are shuffled (seeded, per epoch) and cut into micro-batches of `micro_batch` rows or up
//!   to the token budget. Packing is a layout of examples: the model keeps them apart (see
//!   `Batch::packed`), and a restart recomputes the epoch's rows from the lengths.
//!
//! With a token budget (or grouping and a budget), the number of micro-batches may differ
//! from epoch to epoch; steps are counted per epoch, and `locate` maps a global step to its
//! epoch by summing the epochs before it.

use super::data::{epoch_order, Example};
use super::TrainError;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::path::Path;

/// How examples are ordered into micro-batches (`batching` in configs/train.toml).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Batching {
    /// A seeded permutation, cut in order.
    #[default]
    Random,
    /// Length-sorted buckets of the permutation, micro-batches shuffled.
    Grouped,
}

impl Batching {
    pub fn is_random(&self) -> bool {
        *self == Batching::Random
    }
}

/// Examples sorted together in `grouped` order. Large enough that neighbours in a sorted
/// bucket differ by a few tokens on corpora of a few hundred examples and more; small enough
/// that micro-batches of the same lengths are drawn differently every epoch.
pub const BUCKET_EXAMPLES: usize = 512;

/// A micro-batch: its rows, each the examples it holds in order (one a row unless packing).
pub type MicroBatch = Vec<Vec<usize>>;

/// The layout of a training set into micro-batches and steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Tokens of each example.
    pub lengths: Vec<usize>,
    /// Examples a micro-batch (when there is no token budget).
    pub micro: usize,
    /// Micro-batches an optimizer step.
    pub accum: usize,
    /// `rows × longest row` a micro-batch may not exceed.
    pub tokens: Option<usize>,
    pub batching: Batching,
    /// Packing: the most tokens a row holds (None: one example a row).
    pub pack: Option<usize>,
    pub seed: u64,
}

/// Where a global step falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub epoch: usize,
    /// Steps of `epoch` done before this one.
    pub within: usize,
    /// Steps in `epoch`.
    pub steps_in_epoch: usize,
}

impl Plan {
    /// A plan over `examples` (read from `path`); every example must fit the token budget,
    /// and with `pack = Some(max_seq_len)` a row (of `max_seq_len`, or the budget if smaller).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        examples: &[Example],
        path: &Path,
        micro: usize,
        accum: usize,
        tokens: Option<usize>,
        batching: Batching,
        pack: Option<usize>,
        seed: u64,
    ) -> Result<Self, TrainError> {
        if let Some(budget) = tokens {
            if let Some(e) = examples.iter().find(|e| e.input_ids.len() > budget) {
                return Err(TrainError::Data(format!(
                    "{}: example {} has {} tokens, more than micro_batch_tokens {budget}; raise micro_batch_tokens to at least the longest example",
                    path.display(),
                    e.id,
                    e.input_ids.len()
                )));
            }
        }
        // Rows of a packed micro-batch must fit its token budget too.
        let pack = pack.map(|row| tokens.map_or(row, |t| t.min(row)));
        if let Some(row) = pack {
            if let Some(e) = examples.iter().find(|e| e.input_ids.len() > row) {
                return Err(TrainError::Data(format!(
                    "{}: example {} has {} tokens, more than a packed row of {row}; raise max_seq_len",
                    path.display(),
                    e.id,
                    e.input_ids.len()
                )));
            }
        }
        Ok(Self {
            lengths: examples.iter().map(|e| e.input_ids.len()).collect(),
            micro,
            accum,
            tokens,
            batching,
            pack,
            seed,
        })
    }

    /// The micro-batches of `epoch`, in the order they are trained.
    pub fn epoch_micro_batches(&self, epoch: usize) -> Vec<MicroBatch> {
        let order = epoch_order(self.lengths.len(), self.seed, epoch);
        let singles = |o: &[usize]| o.iter().map(|&i| vec![i]).collect::<Vec<_>>();
        // A generator of its own per epoch and use.
        let rng = |salt: u64| {
            ChaCha8Rng::seed_from_u64(
                self.seed ^ salt ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            )
        };
        if let Some(row) = self.pack {
            let mut rows = pack_rows(&self.lengths, &order, row);
            // Best-fit-decreasing emits rows by their longest example: mix them.
            rows.shuffle(&mut rng(0x9ACC_ED50_7EB5_11AB));
            return self.cut(rows);
        }
        match self.batching {
            Batching::Random => self.cut(singles(&order)),
            Batching::Grouped => {
                let bucket = match self.tokens {
                    // Whole micro-batches a bucket, so that only the last one can be short.
                    None => BUCKET_EXAMPLES.div_ceil(self.micro) * self.micro,
                    Some(_) => BUCKET_EXAMPLES,
                };
                let mut batches = Vec::new();
                for chunk in order.chunks(bucket) {
                    let mut sorted = chunk.to_vec();
                    // Stable: equal lengths keep their shuffled order.
                    sorted.sort_by_key(|&i| std::cmp::Reverse(self.lengths[i]));
                    batches.extend(self.cut(singles(&sorted)));
                }
                batches.shuffle(&mut rng(0x5EED_B47C_4E50_0F1D));
                batches
            }
        }
    }

    /// Rows cut into micro-batches: `micro` rows each, or filled up to the token budget.
    fn cut(&self, rows: Vec<Vec<usize>>) -> Vec<MicroBatch> {
        let Some(budget) = self.tokens else {
            return rows.chunks(self.micro).map(<[_]>::to_vec).collect();
        };
        let mut batches = Vec::new();
        let mut cur: MicroBatch = Vec::new();
        let mut longest = 0;
        for r in rows {
            let l = row_len(&self.lengths, &r);
            if !cur.is_empty() && (cur.len() + 1) * longest.max(l) > budget {
                batches.push(std::mem::take(&mut cur));
                longest = 0;
            }
            cur.push(r);
            longest = longest.max(l);
        }
        if !cur.is_empty() {
            batches.push(cur);
        }
        batches
    }

    pub fn steps_in_epoch(&self, epoch: usize) -> usize {
        if self.tokens.is_none() && self.pack.is_none() {
            // Fixed-size micro-batches: the same count every epoch, no need to lay it out.
            return self.lengths.len().div_ceil(self.micro).div_ceil(self.accum);
        }
        self.epoch_micro_batches(epoch).len().div_ceil(self.accum)
    }

    /// Optimizer steps in the first `epochs` epochs.
    pub fn total_steps(&self, epochs: usize) -> usize {
        (0..epochs).map(|e| self.steps_in_epoch(e)).sum()
    }

    /// The epoch and in-epoch position of global step `step` (0-based).
    pub fn locate(&self, step: usize) -> Position {
        let (mut epoch, mut before) = (0, 0);
        loop {
            let n = self.steps_in_epoch(epoch);
            if step < before + n {
                return Position {
                    epoch,
                    within: step - before,
                    steps_in_epoch: n,
                };
            }
            before += n;
            epoch += 1;
        }
    }

    /// Epochs done after `steps` steps, fractional.
    pub fn epochs_done(&self, steps: usize) -> f64 {
        let p = self.locate(steps);
        p.epoch as f64 + p.within as f64 / p.steps_in_epoch as f64
    }

    /// The micro-batches of global step `step` (0-based), and its epoch.
    pub fn step_batches(&self, step: usize) -> (usize, Vec<MicroBatch>) {
        let p = self.locate(step);
        let batches = self.epoch_micro_batches(p.epoch);
        let start = p.within * self.accum;
        let end = (start + self.accum).min(batches.len());
        (p.epoch, batches[start..end].to_vec())
    }
}

/// Tokens of a row.
fn row_len(lengths: &[usize], row: &[usize]) -> usize {
    row.iter().map(|&i| lengths[i]).sum()
}

/// Padding of a set of micro-batches: (real tokens, padded tokens = Σ rows × longest row).
pub fn padding(lengths: &[usize], batches: &[MicroBatch]) -> (usize, usize) {
    batches.iter().fold((0, 0), |(real, padded), b| {
        let rows = b.iter().map(|r| row_len(lengths, r));
        let longest = rows.clone().max().unwrap_or(0);
        (real + rows.sum::<usize>(), padded + b.len() * longest)
    })
}

/// Best-fit-decreasing packing of the examples `order` into rows of at most `capacity`
/// tokens: longest first (a stable sort, so ties keep their order in `order`), each into the
/// row it fills most (the earliest such row on ties), a new row when none has room. An
/// example longer than `capacity` goes alone in a row of its own. Rows are returned in the
/// order they were opened, each listing its examples in the order they were placed.
pub fn pack_rows(lengths: &[usize], order: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut sorted = order.to_vec();
    sorted.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let mut rows: Vec<Vec<usize>> = Vec::new();
    // (room left, row index) of every row with room: the first entry at or above a length
    // is the best fit.
    let mut room: BTreeSet<(usize, usize)> = BTreeSet::new();
    for i in sorted {
        let l = lengths[i];
        match room.range((l, 0)..).next().copied() {
            Some((left, r)) => {
                room.remove(&(left, r));
                rows[r].push(i);
                if left > l {
                    room.insert((left - l, r));
                }
            }
            None => {
                rows.push(vec![i]);
                if l < capacity {
                    room.insert((capacity - l, rows.len() - 1));
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(
        lengths: Vec<usize>,
        micro: usize,
        accum: usize,
        tokens: Option<usize>,
        b: Batching,
    ) -> Plan {
        Plan {
            lengths,
            micro,
            accum,
            tokens,
            batching: b,
            pack: None,
            seed: 7,
        }
    }

    /// Lengths of an uneven corpus: 1000 examples between 20 and 535 tokens.
    fn uneven() -> Vec<usize> {
        (0..1000).map(|i| 20 + (i * 7919) % 516).collect()
    }

    fn all_steps(p: &Plan, epoch: usize) -> Vec<Vec<MicroBatch>> {
        let first = p.total_steps(epoch);
        (first..first + p.steps_in_epoch(epoch))
            .map(|s| {
                let (e, b) = p.step_batches(s);
                assert_eq!(e, epoch);
                b
            })
            .collect()
    }

    /// Every example of a set of steps, sorted.
    fn sorted_examples(steps: &[Vec<MicroBatch>]) -> Vec<usize> {
        let mut seen: Vec<usize> = steps
            .iter()
            .flatten()
            .flatten()
            .flatten()
            .copied()
            .collect();
        seen.sort();
        seen
    }

    #[test]
    fn random_order_is_the_historical_one() {
        // Before this module: step s took order[s·m·a ..][.. m·a] cut into chunks of m.
        let p = plan(vec![5; 10], 2, 2, None, Batching::Random);
        assert_eq!(p.steps_in_epoch(0), 3);
        let order = epoch_order(10, 7, 1);
        for within in 0..3 {
            let start = within * 4;
            let expected: Vec<MicroBatch> = order[start..(start + 4).min(10)]
                .chunks(2)
                .map(|c| c.iter().map(|&i| vec![i]).collect())
                .collect();
            assert_eq!(p.step_batches(3 + within), (1, expected));
        }
    }

    #[test]
    fn every_layout_trains_each_example_once_an_epoch_and_is_reproducible() {
        for b in [Batching::Random, Batching::Grouped] {
            for tokens in [None, Some(1200)] {
                let p = plan(uneven(), 4, 3, tokens, b);
                for epoch in 0..3 {
                    let steps = all_steps(&p, epoch);
                    assert_eq!(
                        sorted_examples(&steps),
                        (0..1000).collect::<Vec<_>>(),
                        "{b:?} {tokens:?}"
                    );
                    for s in &steps {
                        assert!(!s.is_empty() && s.len() <= 3);
                        for m in s {
                            assert!(m.iter().all(|r| r.len() == 1));
                            match tokens {
                                None => assert!(m.len() <= 4),
                                Some(t) => {
                                    let longest = m.iter().map(|r| p.lengths[r[0]]).max().unwrap();
                                    assert!(m.len() * longest <= t, "{m:?}");
                                }
                            }
                        }
                    }
                }
                // A fresh plan (a restarted run) lays out any step the same way.
                let again = plan(uneven(), 4, 3, tokens, b);
                for s in [0, 17, p.total_steps(2) + 5] {
                    assert_eq!(p.step_batches(s), again.step_batches(s));
                }
            }
        }
    }

    #[test]
    fn grouping_cuts_padding_and_changes_between_epochs() {
        let lengths = uneven();
        let share = |p: &Plan| {
            let (real, padded) = padding(&p.lengths, &p.epoch_micro_batches(0));
            1.0 - real as f64 / padded as f64
        };
        let random = share(&plan(lengths.clone(), 4, 1, None, Batching::Random));
        let grouped = plan(lengths.clone(), 4, 1, None, Batching::Grouped);
        assert!(
            random > 0.25 && share(&grouped) < 0.02,
            "{random} {}",
            share(&grouped)
        );
        assert_ne!(
            grouped.epoch_micro_batches(0),
            grouped.epoch_micro_batches(1)
        );
        // Grouped with a budget: fewer, fuller micro-batches than the padded budget.
        let rb = plan(lengths.clone(), 4, 1, Some(2140), Batching::Random);
        let gb = plan(lengths, 4, 1, Some(2140), Batching::Grouped);
        assert!(share(&gb) < 0.05 && share(&rb) > 0.25);
        assert!(gb.steps_in_epoch(0) < rb.steps_in_epoch(0));
    }

    #[test]
    fn locate_counts_uneven_epochs() {
        let p = plan(uneven(), 4, 2, Some(1500), Batching::Random);
        let (e0, e1) = (p.steps_in_epoch(0), p.steps_in_epoch(1));
        assert_eq!(p.total_steps(2), e0 + e1);
        assert_eq!(
            p.locate(e0 + 3),
            Position {
                epoch: 1,
                within: 3,
                steps_in_epoch: e1
            }
        );
        assert_eq!(p.epochs_done(e0), 1.0);
    }

    #[test]
    fn an_example_over_the_budget_is_named() {
        let ex = |id: &str, n: usize| Example {
            id: id.into(),
            dialogue: String::new(),
            input_ids: vec![2; n],
            labels: vec![5; n],
        };
        let e = Plan::new(
            &[ex("a", 10), ex("long-one", 40)],
            Path::new("runs/x/data/train.jsonl"),
            2,
            1,
            Some(32),
            Batching::Grouped,
            None,
            1,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("train.jsonl")
                && e.contains("long-one")
                && e.contains("micro_batch_tokens 32"),
            "{e}"
        );
    }

    #[test]
    fn packed_rows_hold_every_example_once_within_capacity() {
        let lengths = uneven();
        for seed in [1u64, 2] {
            let order = epoch_order(lengths.len(), seed, 0);
            let rows = pack_rows(&lengths, &order, 1024);
            let mut seen: Vec<usize> = rows.iter().flatten().copied().collect();
            seen.sort();
            assert_eq!(seen, (0..1000).collect::<Vec<_>>());
            assert!(rows.iter().all(|r| row_len(&lengths, r) <= 1024));
            // Best fit wastes little: the rows are at least 97% full on this corpus.
            let real: usize = lengths.iter().sum();
            assert!(
                real as f64 / (rows.len() * 1024) as f64 > 0.97,
                "{}",
                rows.len()
            );
            assert_eq!(rows, pack_rows(&lengths, &order, 1024));
        }
        // Best fit, not first fit: 5 goes to the row with 6 left, not the one with 7.
        assert_eq!(
            pack_rows(&[3, 4, 5, 2], &[0, 1, 2, 3], 9),
            vec![vec![2, 1], vec![0, 3]]
        );
        // Longer than a row: alone in its own row, the others packed around it.
        assert_eq!(
            pack_rows(&[12, 4, 5], &[1, 0, 2], 10),
            vec![vec![0], vec![2, 1]]
        );
    }

    #[test]
    fn packed_plans_are_exact_layouts_of_examples() {
        let ex = |id: String, n: usize| Example {
            id,
            dialogue: String::new(),
            input_ids: vec![2; n],
            labels: vec![5; n],
        };
        let examples: Vec<Example> = uneven()
            .into_iter()
            .enumerate()
            .map(|(i, n)| ex(format!("e{i}"), n))
            .collect();
        let path = Path::new("train.jsonl");
        let plan = |tokens| {
            Plan::new(
                &examples,
                path,
                4,
                3,
                tokens,
                Batching::Random,
                Some(1024),
                9,
            )
            .unwrap()
        };
        for tokens in [None, Some(1600)] {
            let p = plan(tokens);
            // Rows are as long as the budget allows.
            let row = tokens.map_or(1024, |t| t.min(1024));
            assert_eq!(p.pack, Some(row));
            for epoch in 0..2 {
                let steps = all_steps(&p, epoch);
                assert_eq!(sorted_examples(&steps), (0..1000).collect::<Vec<_>>());
                for m in steps.iter().flatten() {
                    let lens: Vec<usize> = m.iter().map(|r| row_len(&p.lengths, r)).collect();
                    assert!(lens.iter().all(|&l| l <= row));
                    match tokens {
                        None => assert!(m.len() <= 4),
                        Some(t) => assert!(m.len() * lens.iter().max().unwrap() <= t),
                    }
                }
                let (real, padded) = padding(&p.lengths, &p.epoch_micro_batches(epoch));
                assert!(1.0 - (real as f64 / padded as f64) < 0.05);
            }
            assert_ne!(p.epoch_micro_batches(0), p.epoch_micro_batches(1));
            // A restart lays out every step the same way.
            for s in [0, 5, p.total_steps(1) + 2] {
                assert_eq!(p.step_batches(s), plan(tokens).step_batches(s));
            }
        }
        // An example longer than the row is refused, named.
        let mut long = examples[..3].to_vec();
        long.push(ex("too-long".into(), 1100));
        let e = Plan::new(&long, path, 4, 1, None, Batching::Random, Some(1024), 9)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("train.jsonl") && e.contains("too-long") && e.contains("packed row of 1024"),
            "{e}"
        );
    }
}
