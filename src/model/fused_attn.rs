//! The fused CPU attention of a whole sequence ([`super::ops::attention`] with the fused
//! kernels, f32): RoPE, the scores, the soft-capped masked softmax and the value product in one
//! graph node, with its backward written out.
//!
//! The work runs per (batch, key/value head) block, one block to a thread: the `g` query heads
//! that share a key head are stacked as `g·T` query rows against `T` keys. Causal attention
//! ([`Causal`]) cuts each head's rows into tiles of [`TILE`] positions and computes a tile only
//! against the keys up to its last position (and from the first its sliding window still
//! sees): the score blocks the causal mask discards are never formed, neither their products
//! nor their softmax. The probability of a key past a tile is an exact zero, as the softmax
//! writes for every masked key; inside a tile the additive bias still masks (the diagonal
//! block, padding, windows). Scores and probabilities are kept tile after tile, packed.

use super::cpu_gemm::{self, gemm_serial_into, gemm_serial_uninit, Mat};
use super::kernels;
use super::ops::{Attention, Causal, Heads, RopeTables};
use candle_core::{Result, Tensor};
use rayon::prelude::*;

/// Query positions a tile. Measured on the `small` step (see benches/NOTES.md): smaller
/// tiles skip more of the masked square, larger ones keep the products efficient.
const TILE: usize = 64;

/// A first key rounded down to a multiple of this: the softmax sums in lanes of up to 16, so
/// a tile's rows then sum in the same order as a whole row would.
const KEY_ALIGN: usize = 16;

/// One tile of a block: `rows` query rows from `row`, against keys `lo..hi`; its scores are at
/// `at` in the block's packed storage, `rows × (hi − lo)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tile {
    row: usize,
    rows: usize,
    lo: usize,
    hi: usize,
    at: usize,
}

impl Tile {
    fn keys(&self) -> usize {
        self.hi - self.lo
    }

    fn len(&self) -> usize {
        self.rows * self.keys()
    }
}

/// How every block's `g·T` query rows × `T` keys are cut into tiles, and the packed size.
#[derive(Debug)]
struct Tiling {
    tiles: Vec<Tile>,
    per_block: usize,
    /// The largest tile, for the backward's scratch.
    largest: usize,
}

impl Tiling {
    /// `g` heads of `t` positions; without `causal` one tile: every row against every key.
    fn new(g: usize, t: usize, causal: Option<Causal>, tile: usize) -> Self {
        let mut tiles = Vec::new();
        let mut at = 0;
        let mut push = |row, rows, lo, hi| {
            let tl = Tile {
                row,
                rows,
                lo,
                hi,
                at,
            };
            at += tl.len();
            tiles.push(tl);
        };
        match causal {
            None => push(0, g * t, 0, t),
            Some(c) => {
                for h in 0..g {
                    for first in (0..t).step_by(tile.max(1)) {
                        let end = (first + tile).min(t);
                        // Query `first` sees keys `j > first − window` (the bias' rule).
                        let lo = c.window.map_or(0, |w| (first + 1).saturating_sub(w));
                        push(h * t + first, end - first, lo - lo % KEY_ALIGN, end);
                    }
                }
            }
        }
        let largest = tiles.iter().map(Tile::len).max().unwrap_or(0);
        Self {
            tiles,
            per_block: at,
            largest,
        }
    }
}

/// (query rows, keys) of each tile of one head's causal attention over `t` positions without
/// a window: the products the fused attention forms (benches/gemm_step.rs lists them).
pub fn causal_tile_shapes(t: usize) -> Vec<(usize, usize)> {
    Tiling::new(1, t, Some(Causal { window: None }), TILE)
        .tiles
        .iter()
        .map(|tl| (tl.rows, tl.keys()))
        .collect()
}

/// The bias rows: `[Bb, 1, Rb, T]` with Bb 1 or B (broadcast), Rb 1 or `g·T`.
struct BiasRows<'a> {
    data: &'a [f32],
    t: usize,
    batches: usize,
    rows: usize,
}

impl<'a> BiasRows<'a> {
    /// Row `r` of block `i` (batch `i / nkv`).
    fn row(&self, i: usize, nkv: usize, r: usize) -> &'a [f32] {
        let b = if self.batches == 1 { 0 } else { i / nkv };
        let within = if self.rows == 1 { 0 } else { r };
        &self.data[(b * self.rows + within) * self.t..][..self.t]
    }
}

/// The fused attention of one call: its forward, and what its backward needs.
pub(super) struct Fused {
    shape: Heads,
    /// Queries (rotated, grouped per key/value head), keys (rotated), values: `[B, nkv, ·, D]`.
    qg: Tensor,
    kh: Tensor,
    vh: Tensor,
    tiling: Tiling,
    /// Scaled scores and probabilities, tile after tile, `[B·nkv, tiling.per_block]`.
    s: Vec<f32>,
    p: Vec<f32>,
    scale: f64,
    cap: Option<f64>,
    cos: Tensor,
    neg_sin: Tensor,
}

/// Block `i` (`len` elements) of a buffer of such blocks.
fn blk(data: &[f32], i: usize, len: usize) -> &[f32] {
    &data[i * len..(i + 1) * len]
}

/// Rows `from..from + n` (of `cols` each) of row-major data, as a matrix.
fn rows(data: &[f32], from: usize, n: usize, cols: usize) -> Mat<'_> {
    Mat::new(&data[from * cols..(from + n) * cols], n, cols)
}

/// A fresh buffer of `n` elements that the caller initialises in full before reading.
fn uninit(n: usize) -> Vec<f32> {
    Vec::with_capacity(n)
}

impl Fused {
    /// `q`, `k`, `v` detached: the output `[B·T, nh·D]` and the state of the backward.
    pub(super) fn forward(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        a: &Attention,
    ) -> Result<(Tensor, Self)> {
        Self::forward_tiled(q, k, v, a, TILE)
    }

    /// [`Fused::forward`] with causal tiles of `tile` positions.
    pub(super) fn forward_tiled(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        a: &Attention,
        tile: usize,
    ) -> Result<(Tensor, Self)> {
        let shape = a.shape;
        let Heads { b, t, nh, nkv, d } = shape;
        let RopeTables { cos, sin, neg_sin } = a.rope_tables;
        let rot = |x: &Tensor| candle_nn::rotary_emb::rope(x, cos, sin);
        let g = nh / nkv;
        let qg = rot(&shape.split(q, nh)?)?.reshape((b, nkv, g * t, d))?;
        let kh = rot(&shape.split(k, nkv)?)?;
        let vh = shape.split(v, nkv)?;
        let (bk, gt) = (b * nkv, g * t);
        let tiling = Tiling::new(g, t, a.causal, tile);
        let per = tiling.per_block;
        let bias = a.bias.contiguous()?;
        let (bb, bh, br, bn) = bias.dims4()?;
        if bh != 1 || bn != t || (bb != 1 && bb != b) || (br != 1 && br != gt) {
            candle_core::bail!(
                "attention: a bias {:?} does not fit scores [{b}, {nkv}, {gt}, {t}]",
                bias.dims()
            );
        }
        let bias_data = cpu_gemm::data(&bias)?;
        let bias_rows = BiasRows {
            data: bias_data.slice(),
            t,
            batches: bb,
            rows: br,
        };
        let (qd, kd, vd) = (
            cpu_gemm::data(&qg)?,
            cpu_gemm::data(&kh)?,
            cpu_gemm::data(&vh)?,
        );
        let (qs, ks, vs) = (qd.slice(), kd.slice(), vd.slice());
        let (scale, capf) = (a.scale as f32, a.cap.map(|c| c as f32));
        // The softmax writes into initialised memory: `p` starts zeroed (the allocator's zero
        // pages where it can), the others are written by gemm without being read.
        let (mut s, mut p, mut o) = (uninit(bk * per), vec![0f32; bk * per], uninit(bk * gt * d));
        s.spare_capacity_mut()[..bk * per]
            .par_chunks_mut(per.max(1))
            .zip(p.par_chunks_mut(per.max(1)))
            .zip(o.spare_capacity_mut()[..bk * gt * d].par_chunks_mut((gt * d).max(1)))
            .enumerate()
            .for_each(|(i, ((sb, pb), ob))| {
                let (qb, kb, vb) = (blk(qs, i, gt * d), blk(ks, i, t * d), blk(vs, i, t * d));
                for tl in &tiling.tiles {
                    let span = tl.at..tl.at + tl.len();
                    let st = gemm_serial_uninit(
                        &mut sb[span.clone()],
                        rows(qb, tl.row, tl.rows, d),
                        rows(kb, tl.lo, tl.keys(), d).t(),
                        scale,
                    );
                    let pt = &mut pb[span];
                    for (r, (pr, sr)) in pt
                        .chunks_mut(tl.keys())
                        .zip(st.chunks(tl.keys()))
                        .enumerate()
                    {
                        let brow = &bias_rows.row(i, nkv, tl.row + r)[tl.lo..tl.hi];
                        kernels::softmax_row(pr, sr, brow, capf);
                    }
                    gemm_serial_uninit(
                        &mut ob[tl.row * d..(tl.row + tl.rows) * d],
                        Mat::new(pt, tl.rows, tl.keys()),
                        rows(vb, tl.lo, tl.keys(), d),
                        1.0,
                    );
                }
            });
        // SAFETY: the tiles cover every block's packed storage (`per_block` is the sum of
        // their sizes) and all of its `g·T` output rows, each written above.
        unsafe {
            s.set_len(bk * per);
            o.set_len(bk * gt * d);
        }
        drop((qd, kd, vd, bias_data));
        let o = Tensor::from_vec(o, (b, nkv, gt, d), q.device())?;
        let out = shape.merge(&o, nh)?;
        let f = Self {
            shape,
            qg,
            kh,
            vh,
            tiling,
            s,
            p,
            scale: a.scale,
            cap: a.cap,
            cos: (*cos).clone(),
            neg_sin: (*neg_sin).clone(),
        };
        Ok((out, f))
    }

    /// The gradients of `q`, `k`, `v` from the output's, `dout` `[B·T, nh·D]`.
    pub(super) fn backward(&self, dout: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let Heads { b, t, nh, nkv, d } = self.shape;
        let g = nh / nkv;
        let (bk, gt) = (b * nkv, g * t);
        let d_o = self.shape.split(dout, nh)?.reshape((b, nkv, gt, d))?;
        let dev = dout.device();
        let (od, qd, kd, vd) = (
            cpu_gemm::data(&d_o)?,
            cpu_gemm::data(&self.qg)?,
            cpu_gemm::data(&self.kh)?,
            cpu_gemm::data(&self.vh)?,
        );
        let (os, qs, ks, vs) = (od.slice(), qd.slice(), kd.slice(), vd.slice());
        let (per, largest) = (self.tiling.per_block, self.tiling.largest);
        let (sc, capf) = (self.scale as f32, self.cap.map(|c| c as f32));
        let mut dq = uninit(bk * gt * d);
        // dK and dV sum over the tiles that see a key: accumulated, so zeroed first.
        let (mut dk, mut dv) = (vec![0f32; bk * t * d], vec![0f32; bk * t * d]);
        dq.spare_capacity_mut()[..bk * gt * d]
            .par_chunks_mut((gt * d).max(1))
            .zip(dk.par_chunks_mut((t * d).max(1)))
            .zip(dv.par_chunks_mut((t * d).max(1)))
            .enumerate()
            .for_each(|(i, ((dqb, dkb), dvb))| {
                let (ob, qb, kb, vb) = (
                    blk(os, i, gt * d),
                    blk(qs, i, gt * d),
                    blk(ks, i, t * d),
                    blk(vs, i, t * d),
                );
                let (sb, pb) = (blk(&self.s, i, per), blk(&self.p, i, per));
                // dP and dS of one tile at a time: never a whole block's.
                let (mut dp, mut ds) = (vec![0f32; largest], vec![0f32; largest]);
                for tl in &self.tiling.tiles {
                    let (n, len) = (tl.keys(), tl.len());
                    let span = tl.at..tl.at + len;
                    let (st, pt) = (&sb[span.clone()], &pb[span]);
                    let (dpt, dst) = (&mut dp[..len], &mut ds[..len]);
                    let o_rows = rows(ob, tl.row, tl.rows, d);
                    gemm_serial_into(dpt, o_rows, rows(vb, tl.lo, n, d).t(), 1.0, false);
                    for (((dr, pr), gr), sr) in dst
                        .chunks_mut(n)
                        .zip(pt.chunks(n))
                        .zip(dpt.chunks(n))
                        .zip(st.chunks(n))
                    {
                        kernels::softmax_grad_row(dr, pr, gr, sr, capf);
                    }
                    let ds_t = Mat::new(dst, tl.rows, n);
                    gemm_serial_uninit(
                        &mut dqb[tl.row * d..(tl.row + tl.rows) * d],
                        ds_t,
                        rows(kb, tl.lo, n, d),
                        sc,
                    );
                    let keys = tl.lo * d..tl.hi * d;
                    gemm_serial_into(
                        &mut dkb[keys.clone()],
                        ds_t.t(),
                        rows(qb, tl.row, tl.rows, d),
                        sc,
                        true,
                    );
                    gemm_serial_into(
                        &mut dvb[keys],
                        Mat::new(pt, tl.rows, n).t(),
                        o_rows,
                        1.0,
                        true,
                    );
                }
            });
        // SAFETY: the tiles cover all `g·T` query rows of every block, each dQ row written above.
        unsafe { dq.set_len(bk * gt * d) };
        drop((od, qd, kd, vd));
        let unrot = |x: &Tensor| candle_nn::rotary_emb::rope(x, &self.cos, &self.neg_sin);
        let dq = unrot(&Tensor::from_vec(dq, (b, nh, t, d), dev)?)?;
        let dk = unrot(&Tensor::from_vec(dk, (b, nkv, t, d), dev)?)?;
        let dv = Tensor::from_vec(dv, (b, nkv, t, d), dev)?;
        Ok((
            self.shape.merge(&dq, nh)?,
            self.shape.merge(&dk, nkv)?,
            self.shape.merge(&dv, nkv)?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiles cover each head's rows once, see no key past their last position, start at
    /// the first key the window lets their first row see (rounded down), and pack end to end.
    #[test]
    fn tiles_cover_the_rows_and_skip_only_masked_keys() {
        let whole = Tiling::new(2, 37, None, 16);
        assert_eq!(whole.tiles.len(), 1);
        assert_eq!(whole.per_block, 2 * 37 * 37);
        for window in [None, Some(10), Some(40)] {
            let tiling = Tiling::new(2, 37, Some(Causal { window }), 16);
            let mut covered = vec![0; 2 * 37];
            let mut at = 0;
            for tl in &tiling.tiles {
                assert_eq!(tl.at, at);
                at += tl.len();
                let first = tl.row % 37;
                assert_eq!(tl.hi, first + tl.rows, "{tl:?}");
                let seen = window.map_or(0, |w| (first + 1).saturating_sub(w));
                assert!(tl.lo <= seen && seen - tl.lo < KEY_ALIGN, "{tl:?}");
                for c in &mut covered[tl.row..tl.row + tl.rows] {
                    *c += 1;
                }
            }
            assert!(covered.iter().all(|&c| c == 1));
            assert_eq!(tiling.per_block, at);
            let lo: Vec<usize> = tiling.tiles.iter().map(|t| t.lo).collect();
            let want = match window {
                Some(10) => vec![0, 0, 16, 0, 0, 16],
                _ => vec![0; 6],
            };
            assert_eq!(lo, want);
            assert_eq!(tiling.largest, 16 * 32);
        }
    }
}
