//! Several sequences decoded at once with one KV cache. Prompts are left-padded to a common
//! length so that every row's next token lands in the same slot: the cache's keys are slots,
//! a slot is masked in the rows where it holds padding, and each row counts its own positions
//! for RoPE (a row's positions and slots differ by its padding, so causality and the sliding
//! window, which compare slots, still see positions). Rows that finish are dropped.
//!
//! Prompts of one length are fed in one pass. Prompts of different lengths are fed one by one
//! and their caches stacked, left-padded: padding a batch's prompts costs the quadratic
//! attention of the longest for every row (measured: eval's long base-model prompts ran 1.2×
//! slower in padded batches of 8 than one at a time on the CPU), and a prompt of a few
//! hundred tokens already fills the matrix units.

use super::{CausalLm, KvCache, Pass};
use crate::model::cache::LayerCache;
use crate::model::{ModelError, Result};
use candle_core::Tensor;

/// The KV cache of a batch of sequences (see the module note).
#[derive(Clone, Default)]
pub struct BatchCache {
    layers: Vec<Option<LayerCache>>,
    /// Per row, per slot: a real token (not padding)?
    real: Vec<Vec<bool>>,
    /// Per row, tokens processed so far (the position of its next token).
    lens: Vec<usize>,
}

impl BatchCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows in the batch.
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Per row, tokens processed so far.
    pub fn lens(&self) -> &[usize] {
        &self.lens
    }

    /// Keeps the rows where `keep` is set, in order, and drops the slots no remaining row has
    /// a real token in (the padding of a longer prompt that finished).
    pub fn retain(&mut self, keep: &[bool]) -> Result<()> {
        if keep.len() != self.rows() {
            return Err(ModelError::Invalid(format!(
                "retain: {} flags for a batch of {} rows",
                keep.len(),
                self.rows()
            )));
        }
        let kept: Vec<u32> = (0..keep.len() as u32)
            .filter(|&r| keep[r as usize])
            .collect();
        if kept.is_empty() {
            *self = Self::new();
            return Ok(());
        }
        let first = kept
            .iter()
            .map(|&r| self.real[r as usize].iter().position(|&x| x).unwrap_or(0))
            .min()
            .unwrap_or(0);
        let Some(dev) = self.layers.iter().flatten().next().map(|c| c.device()) else {
            return Err(ModelError::Invalid("retain: nothing was fed yet".into()));
        };
        let rows = Tensor::new(kept.as_slice(), &dev)?;
        for lc in self.layers.iter_mut().flatten() {
            *lc = lc.select(&rows, first)?;
        }
        let pick = |r: &u32| *r as usize;
        self.real = kept.iter().map(|r| self.real[pick(r)].clone()).collect();
        self.lens = kept.iter().map(|r| self.lens[pick(r)]).collect();
        Ok(())
    }
}

impl CausalLm {
    /// Feeds each row's tokens after what `cache` holds for it and returns the f32 logits of
    /// every row's last token, `[B, vocab]`. The first call (an empty cache) takes prompts of
    /// any lengths (left-padded in the cache); later calls feed every row the same number of
    /// tokens.
    pub fn forward_batch(&self, rows: &[&[u32]], cache: &mut BatchCache) -> Result<Tensor> {
        let b = rows.len();
        let fresh = cache.rows() == 0;
        if b == 0 || (!fresh && b != cache.rows()) {
            return Err(ModelError::Invalid(format!(
                "a batch of {b} rows for a cache of {} rows",
                cache.rows()
            )));
        }
        if let Some(r) = rows.iter().position(|r| r.is_empty()) {
            return Err(ModelError::Invalid(format!("row {r}: no tokens to feed")));
        }
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        if fresh && rows.iter().any(|r| r.len() != t) {
            return self.prefill_one_by_one(rows, cache);
        }
        if rows.iter().any(|r| r.len() != t) {
            return Err(ModelError::Invalid(
                "after the prompts, every row of a batch feeds the same number of tokens".into(),
            ));
        }
        if fresh {
            cache.real = vec![Vec::new(); b];
            cache.lens = vec![0; b];
        }
        let max = self.cfg.max_position_embeddings;
        let offset = cache.real[0].len();
        if let Some((r, len)) = cache.lens.iter().enumerate().find(|(_, &l)| l + t > max) {
            return Err(ModelError::Invalid(format!(
                "row {r}: context of {} tokens exceeds max_position_embeddings {max}",
                len + t
            )));
        }
        let mut positions = Vec::with_capacity(b);
        for (r, len) in cache.lens.iter_mut().enumerate() {
            positions.push((*len..*len + t).map(|p| p as u32).collect::<Vec<u32>>());
            cache.real[r].extend(std::iter::repeat_n(true, t));
            *len += t;
        }
        let ids: Vec<u32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        let x = Tensor::from_vec(ids, (b, t), &self.device)?;
        let pass = Pass {
            positions: Some(&positions),
            ..Pass::new(b, t, offset, Some(&cache.real))
        };
        let h = self.cached_layers(&x, &pass, &mut cache.layers)?;
        let last = h
            .reshape((b, t, self.cfg.hidden_size))?
            .narrow(1, t - 1, 1)?
            .squeeze(1)?;
        self.head_logits(&last.contiguous()?)
    }

    /// The first call of [`CausalLm::forward_batch`] with prompts of different lengths: each
    /// through [`CausalLm::forward_cached`], the caches stacked left-padded.
    fn prefill_one_by_one(&self, rows: &[&[u32]], cache: &mut BatchCache) -> Result<Tensor> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(0);
        let mut logits = Vec::with_capacity(rows.len());
        let mut caches = Vec::with_capacity(rows.len());
        for row in rows {
            let mut c = KvCache::new();
            logits.push(self.forward_cached(row, &mut c)?);
            caches.push(c.layers);
        }
        let shifts: Vec<usize> = rows.iter().map(|r| t - r.len()).collect();
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in 0..self.layers.len() {
            let parts: Vec<&LayerCache> = caches.iter().filter_map(|c| c[l].as_ref()).collect();
            layers.push(Some(LayerCache::stack(&parts, &shifts)?));
        }
        *cache = BatchCache {
            layers,
            real: shifts
                .iter()
                .map(|&p| (0..t).map(|i| i >= p).collect())
                .collect(),
            lens: rows.iter().map(|r| r.len()).collect(),
        };
        Ok(Tensor::stack(&logits, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvCache, ModelConfig};
    use candle_core::{DType, Device};

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        crate::model::max_abs_diff(a, b)
    }

    /// A row's logits do not depend on how much padding it got: the same prompt next to
    /// prompts of other lengths (so padded by 0, 3 or 9) gives the unbatched logits, and so
    /// does every decoding step after it, across the sliding window (7 tokens in `tiny`).
    #[test]
    fn a_padded_rows_output_does_not_depend_on_the_pad_length() {
        let cfg = ModelConfig::preset("tiny").unwrap();
        let m =
            CausalLm::random_with_embedding_std(&cfg, 5, 0.5, DType::F32, &Device::Cpu).unwrap();
        let prompt: Vec<u32> = (0..6).map(|i| 20 + 7 * i).collect();
        let mut alone = KvCache::new();
        let mut want = vec![m.forward_cached(&prompt, &mut alone).unwrap()];
        let steps: Vec<u32> = (0..10).map(|i| 100 + i).collect();
        for &s in &steps {
            want.push(m.forward_cached(&[s], &mut alone).unwrap());
        }
        for pad in [0, 3, 9] {
            let other: Vec<u32> = (0..6 + pad).map(|i| 40 + i as u32).collect();
            let mut cache = BatchCache::new();
            let mut got = m
                .forward_batch(&[&other, &prompt], &mut cache)
                .unwrap()
                .get(1)
                .unwrap();
            for (k, &s) in steps.iter().enumerate() {
                let d = max_diff(&got, &want[k]);
                assert!(d < 1e-5, "pad {pad}, step {k}: {d}");
                got = m
                    .forward_batch(&[&[7], &[s]], &mut cache)
                    .unwrap()
                    .get(1)
                    .unwrap();
            }
            assert_eq!(cache.lens(), &[6 + pad + 10, 16]);
        }
    }

    /// Dropping a finished row (here the longest, so its padding goes too) leaves the others'
    /// logits as they were.
    #[test]
    fn dropping_rows_keeps_the_others() {
        let mut cfg = ModelConfig::preset("tiny-gemma3").unwrap();
        cfg.sliding_window = Some(4);
        let m =
            CausalLm::random_with_embedding_std(&cfg, 2, 0.5, DType::F32, &Device::Cpu).unwrap();
        let rows: [&[u32]; 3] = [
            &[5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
            &[30, 31],
            &[50, 51, 52],
        ];
        let mut kept = BatchCache::new();
        m.forward_batch(&rows, &mut kept).unwrap();
        let mut full = kept.clone();
        kept.retain(&[false, true, true]).unwrap();
        assert_eq!(kept.rows(), 2);
        let a = m.forward_batch(&[&[60], &[61]], &mut kept).unwrap();
        let b = m.forward_batch(&[&[1], &[60], &[61]], &mut full).unwrap();
        assert!(max_diff(&a, &b.narrow(0, 1, 2).unwrap()) < 1e-5);
        let e = m.forward_batch(&[&[1]], &mut kept).unwrap_err().to_string();
        assert!(e.contains("1 rows for a cache of 2 rows"), "{e}");
        let e = m
            .forward_batch(&[&[1], &[2, 3]], &mut kept)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same number of tokens"), "{e}");
    }
}
