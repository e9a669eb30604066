//! The keys and values an attention layer has seen, for generation, in buffers written in
//! place.
//!
//! Appending by concatenation copies the whole cache at every step (quadratic in the length
//! of a conversation; at 4k tokens of `gemma-2-2b`, hundreds of MB a token). Here each layer
//! keeps `[B, kv heads, capacity, D]` buffers, a step writes its keys into the next free
//! slots, and attention reads a view of the slots it needs. A full buffer is reallocated at
//! twice the size (so the copies add up to less than one per slot), keeping only the keys
//! a sliding layer can still see.

use super::Result;
use candle_core::{Device, Tensor};

/// Slots a new buffer has at least.
const MIN_SLOTS: usize = 64;

/// One layer's cache.
pub(super) struct LayerCache {
    /// `[B, kv heads, capacity, D]`; slots `0..len` are written.
    k: Tensor,
    v: Tensor,
    len: usize,
    /// The first slot still attended (a sliding layer stops seeing old keys).
    first: usize,
    /// Absolute position (batch slot) of slot 0.
    start: usize,
}

/// What attention reads after an append: every key of the step (the visible ones before it
/// and the new ones), as views of the buffers.
pub(super) struct Keys {
    pub k: Tensor,
    pub v: Tensor,
    /// Absolute position of the first of them.
    pub start: usize,
}

impl Clone for LayerCache {
    /// A copy of the visible keys (a shared buffer would see the other's writes).
    fn clone(&self) -> Self {
        let copy = |x: &Tensor| x.narrow(2, self.first, self.len - self.first)?.copy();
        match (copy(&self.k), copy(&self.v)) {
            (Ok(k), Ok(v)) => Self {
                k,
                v,
                len: self.len - self.first,
                first: 0,
                start: self.start + self.first,
            },
            // A narrow within bounds and a copy cannot fail but by running out of memory.
            (Err(e), _) | (_, Err(e)) => panic!("copying a KV cache: {e}"),
        }
    }
}

impl LayerCache {
    /// A cache holding `k` and `v` `[B, kv heads, S, D]`, the first at position `start`.
    fn holding(k: Tensor, v: Tensor, start: usize) -> Result<Self> {
        let len = k.dim(2)?;
        Ok(Self {
            k: k.contiguous()?,
            v: v.contiguous()?,
            len,
            first: 0,
            start,
        })
    }

    /// Appends the keys and values `[B, kv heads, T, D]` of positions `offset..` to the cache
    /// in `slot` (created on the first call) and returns what attention reads. `window`: a
    /// sliding layer's window; the keys it can no longer see stop being attended after this
    /// step, as before it they were not dropped (the bias masks them).
    pub fn append(
        slot: &mut Option<Self>,
        k: &Tensor,
        v: &Tensor,
        offset: usize,
        window: Option<usize>,
    ) -> Result<Keys> {
        let t = k.dim(2)?;
        let c = match slot {
            Some(c) => c,
            None => {
                let slots = (2 * t).max(MIN_SLOTS);
                let buf = |x: &Tensor| -> Result<Tensor> {
                    let (b, h, _, d) = x.dims4()?;
                    Ok(Tensor::zeros((b, h, slots, d), x.dtype(), x.device())?)
                };
                slot.insert(Self {
                    k: buf(k)?,
                    v: buf(v)?,
                    len: 0,
                    first: 0,
                    start: offset,
                })
            }
        };
        if c.len + t > c.k.dim(2)? {
            c.grow(t)?;
        }
        c.k.slice_set(&k.contiguous()?, 2, c.len)?;
        c.v.slice_set(&v.contiguous()?, 2, c.len)?;
        let from = c.first;
        c.len += t;
        if let Some(w) = window {
            c.first = c.first.max(c.len.saturating_sub(w));
        }
        let view = |x: &Tensor| -> Result<Tensor> {
            let x = x.narrow(2, from, c.len - from)?;
            // candle's CPU matmul reads the strided view; elsewhere, a copy is the safe side.
            Ok(if x.device().is_cpu() {
                x
            } else {
                x.contiguous()?
            })
        };
        Ok(Keys {
            k: view(&c.k)?,
            v: view(&c.v)?,
            start: c.start + from,
        })
    }

    /// Reallocates the buffers for `t` more slots: twice what is visible, at least, and the
    /// keys no longer attended left out.
    fn grow(&mut self, t: usize) -> Result<()> {
        let (b, h, _, d) = self.k.dims4()?;
        let kept = self.len - self.first;
        let slots = (2 * (kept + t)).max(MIN_SLOTS);
        let fresh = |x: &Tensor| -> Result<Tensor> {
            let buf = Tensor::zeros((b, h, slots, d), x.dtype(), x.device())?;
            if kept > 0 {
                buf.slice_set(&x.narrow(2, self.first, kept)?.contiguous()?, 2, 0)?;
            }
            Ok(buf)
        };
        self.k = fresh(&self.k)?;
        self.v = fresh(&self.v)?;
        self.start += self.first;
        self.len = kept;
        self.first = 0;
        Ok(())
    }

    /// The visible keys and values, `[B, kv heads, S, D]`, and the position of the first.
    fn visible(&self) -> Result<(Tensor, Tensor, usize)> {
        let n = self.len - self.first;
        Ok((
            self.k.narrow(2, self.first, n)?,
            self.v.narrow(2, self.first, n)?,
            self.start + self.first,
        ))
    }

    /// The cache of the rows `rows` (a batch's sequences that are still decoding), without
    /// the keys before `first` (the slots no remaining row has a real token in).
    pub fn select(&self, rows: &Tensor, first: usize) -> Result<Self> {
        let (k, v, start) = self.visible()?;
        let drop = first.saturating_sub(start).min(k.dim(2)?);
        let keep = k.dim(2)? - drop;
        let pick = |x: &Tensor| -> Result<Tensor> {
            Ok(x.narrow(2, drop, keep)?
                .contiguous()?
                .index_select(rows, 0)?)
        };
        Self::holding(pick(&k)?, pick(&v)?, start + drop)
    }

    /// One-row caches as the cache of a batch: row r's keys sit `shifts[r]` slots to the right
    /// of its own positions (its left padding) and every row ends at the same slot; the slots
    /// before a row's first key are zeros (the batch masks them).
    pub fn stack(rows: &[&LayerCache], shifts: &[usize]) -> Result<Self> {
        let parts = rows
            .iter()
            .map(|c| c.visible())
            .collect::<Result<Vec<_>>>()?;
        let spans = parts
            .iter()
            .zip(shifts)
            .map(|((k, _, start), &s)| Ok((start + s, start + s + k.dim(2)?)))
            .collect::<Result<Vec<_>>>()?;
        let first = spans.iter().map(|s| s.0).min().unwrap_or(0);
        if spans.iter().any(|s| s.1 != spans[0].1) {
            return Err(super::ModelError::Invalid(
                "stacked caches must end at the same slot".into(),
            ));
        }
        let pad = |x: &Tensor, n: usize| -> Result<Tensor> {
            let (b, h, _, d) = x.dims4()?;
            let zeros = Tensor::zeros((b, h, n, d), x.dtype(), x.device())?;
            Ok(Tensor::cat(&[&zeros, x], 2)?)
        };
        let mut k = Vec::with_capacity(rows.len());
        let mut v = Vec::with_capacity(rows.len());
        for ((ck, cv, _), s) in parts.iter().zip(&spans) {
            k.push(pad(ck, s.0 - first)?);
            v.push(pad(cv, s.0 - first)?);
        }
        Self::holding(Tensor::cat(&k, 0)?, Tensor::cat(&v, 0)?, first)
    }

    pub fn device(&self) -> Device {
        self.k.device().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, IndexOp};

    /// Keys of positions `from..from + t` whose values say their position.
    fn keys(from: usize, t: usize) -> Tensor {
        let v: Vec<f32> = (from..from + t)
            .flat_map(|p| [p as f32, -(p as f32)])
            .collect();
        Tensor::from_vec(v, (1, 1, t, 2), &Device::Cpu).unwrap()
    }

    fn positions(x: &Tensor) -> Vec<f32> {
        x.i((0, 0)).unwrap().i((.., 0)).unwrap().to_vec1().unwrap()
    }

    /// Appends across several reallocations, with and without a window: attention sees the
    /// keys it saw before this step and the new ones, and a clone does not see later writes.
    #[test]
    fn appends_in_place_and_grows() {
        for window in [None, Some(5)] {
            let mut slot = None;
            let mut pos = 0;
            let mut seen_before = 0..0;
            for (step, t) in [3, 1, 1, 70, 1, 1, 200, 1].into_iter().enumerate() {
                let k = keys(pos, t);
                let got =
                    LayerCache::append(&mut slot, &k, &(&k * 2.0).unwrap(), pos, window).unwrap();
                let want: Vec<f32> = (seen_before.start..pos + t).map(|p| p as f32).collect();
                assert_eq!(positions(&got.k), want, "window {window:?}, step {step}");
                assert_eq!(got.start, seen_before.start);
                let v = (got.v / 2.0).unwrap();
                assert_eq!(positions(&v), want);
                pos += t;
                let first = window.map_or(0, |w| pos.saturating_sub(w));
                seen_before = first..pos;
            }
            let c = slot.unwrap();
            let copy = c.clone();
            let mut slot = Some(c);
            LayerCache::append(&mut slot, &keys(pos, 1), &keys(pos, 1), pos, window).unwrap();
            let (k, _, start) = copy.visible().unwrap();
            assert_eq!(start, seen_before.start);
            assert_eq!(positions(&k).len(), seen_before.len());
            assert_eq!(copy.k.dtype(), DType::F32);
        }
    }
}
