//! Tokenized examples (`runs/<variant>/data/{train,val}.jsonl`) and the order they are seen in.

use super::TrainError;
use crate::corpus::read_jsonl;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// One tokenized example, as `data build` writes it.
pub use crate::dataset::build::Record as Example;

/// A file of examples with its content hash.
pub struct ExampleFile {
    pub examples: Vec<Example>,
    pub sha256: String,
}

/// Reads and checks an examples file: lengths agree, every example trains at least one token,
/// no example is longer than `max_len`.
pub fn load_examples(path: &Path, max_len: usize) -> Result<ExampleFile, TrainError> {
    let loaded = read_jsonl::<Example>(path)?;
    if let Some(bad) = loaded.skipped.first() {
        return Err(TrainError::Data(bad.to_string()));
    }
    let at = |line: usize, m: String| TrainError::Data(format!("{}:{line}: {m}", path.display()));
    let mut examples = Vec::with_capacity(loaded.records.len());
    for (line, ex) in loaded.records {
        if ex.input_ids.len() != ex.labels.len() {
            return Err(at(
                line,
                format!(
                    "example {}: {} input_ids but {} labels",
                    ex.id,
                    ex.input_ids.len(),
                    ex.labels.len()
                ),
            ));
        }
        if ex.supervised() == 0 {
            return Err(at(
                line,
                format!(
                    "example {} has no supervised token (every label after the first is -100)",
                    ex.id
                ),
            ));
        }
        if ex.input_ids.len() > max_len {
            return Err(at(
                line,
                format!(
                    "example {} has {} tokens, more than max_seq_len {max_len}; raise max_seq_len or rebuild the data with a length limit",
                    ex.id,
                    ex.input_ids.len()
                ),
            ));
        }
        examples.push(ex);
    }
    if examples.is_empty() {
        return Err(TrainError::Data(format!("{}: no examples", path.display())));
    }
    let sha256 = crate::fsutil::sha256_file(path)?;
    Ok(ExampleFile { examples, sha256 })
}

/// The order of examples in epoch `epoch`: a permutation seeded by (seed, epoch), so that any
/// step's micro-batches can be recomputed after a restart.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (epoch as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    order.shuffle(&mut rng);
    order
}

/// How examples are grouped: micro-batches of `micro` examples, `accum` micro-batches a step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub examples: usize,
    pub micro: usize,
    pub accum: usize,
}

impl Plan {
    pub fn steps_per_epoch(&self) -> usize {
        self.examples.div_ceil(self.micro * self.accum)
    }

    /// The micro-batches (example indices) of global step `step` (0-based).
    pub fn step_batches(&self, seed: u64, step: usize) -> (usize, Vec<Vec<usize>>) {
        let spe = self.steps_per_epoch();
        let (epoch, within) = (step / spe, step % spe);
        let order = epoch_order(self.examples, seed, epoch);
        let per_step = self.micro * self.accum;
        let start = within * per_step;
        let end = (start + per_step).min(self.examples);
        let batches = order[start..end]
            .chunks(self.micro)
            .map(<[usize]>::to_vec)
            .collect();
        (epoch, batches)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_example_once_per_epoch_and_reproducible() {
        let plan = Plan {
            examples: 10,
            micro: 2,
            accum: 2,
        };
        assert_eq!(plan.steps_per_epoch(), 3);
        let mut seen = Vec::new();
        for step in 0..3 {
            let (epoch, b) = plan.step_batches(7, step);
            assert_eq!(epoch, 0);
            seen.extend(b.into_iter().flatten());
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert_eq!(plan.step_batches(7, 4), plan.step_batches(7, 4));
        assert_eq!(
            plan.step_batches(7, 2).1,
            vec![vec![epoch_order(10, 7, 0)[8], epoch_order(10, 7, 0)[9]]]
        );
        assert_ne!(epoch_order(10, 7, 0), epoch_order(10, 7, 1));
    }

    #[test]
    fn bad_examples_are_refused_with_their_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.jsonl");
        let ok = r#"{"id":"a","input_ids":[2,5,6],"labels":[-100,-100,6]}"#;
        std::fs::write(
            &p,
            format!(
                "{ok}\n{}\n",
                r#"{"id":"b","input_ids":[2,5],"labels":[-100,-100]}"#
            ),
        )
        .unwrap();
        let e = load_examples(&p, 100).err().unwrap().to_string();
        assert!(
            e.contains("train.jsonl:2") && e.contains("no supervised token"),
            "{e}"
        );
        std::fs::write(&p, format!("{ok}\n")).unwrap();
        assert!(load_examples(&p, 2)
            .err()
            .unwrap()
            .to_string()
            .contains("more than max_seq_len 2"));
        assert_eq!(load_examples(&p, 3).unwrap().examples.len(), 1);
    }
}
