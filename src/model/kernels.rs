//! Fused CPU kernels for the element-wise work around the matmuls: GeGLU, soft-capped masked
//! softmax, soft-capping and the cross-entropy rows. candle runs each of these as several
//! passes through scalar libm calls (`tanhf` alone took a quarter of a CPU training step); one
//! pass with a vectorisable rational tanh does the same work. Every kernel has a reference
//! path made of candle ops, used on other devices and checked against it in the tests; which
//! of the two a model runs is its [`Kernels`], chosen once at load.
//!
//! No kernel writes a subnormal float: a value that underflows (a masked attention probability,
//! a saturated GELU, a far-off logit's probability) is written as an exact zero. On Intel
//! cores every FMA with a subnormal operand takes a microcode assist, and the matmuls that
//! consume these outputs ran three times slower for it.

use candle_core::{CpuStorage, DType, Device, Storage, Tensor};
use rayon::prelude::*;

use super::simd::wide;

/// tanh as a rational function (the minimax approximation Eigen and XLA use), accurate to a
/// few float ulps; it auto-vectorises where `f32::tanh` cannot.
#[inline(always)]
pub fn tanh(x: f32) -> f32 {
    const CLAMP: f32 = 7.905_311;
    const A1: f32 = 4.893_524_6e-3;
    const A3: f32 = 6.372_619_3e-4;
    const A5: f32 = 1.485_722_4e-5;
    const A7: f32 = 5.122_297e-8;
    const A9: f32 = -8.604_672e-11;
    const A11: f32 = 2.000_188e-13;
    const A13: f32 = -2.760_768_5e-16;
    const B0: f32 = 4.893_525e-3;
    const B2: f32 = 2.268_434_6e-3;
    const B4: f32 = 1.185_347_1e-4;
    const B6: f32 = 1.198_258_4e-6;
    let x = x.clamp(-CLAMP, CLAMP);
    let x2 = x * x;
    let p = x * (A1 + x2 * (A3 + x2 * (A5 + x2 * (A7 + x2 * (A9 + x2 * (A11 + x2 * A13))))));
    let q = B0 + x2 * (B2 + x2 * (B4 + x2 * B6));
    p / q
}

/// `x`, or an exact zero where `|x|` is below the smallest normal float (see the module
/// note); a compare and a select, so it vectorises.
#[inline(always)]
pub fn flush(x: f32) -> f32 {
    if x.abs() < f32::MIN_POSITIVE {
        0.0
    } else {
        x
    }
}

/// ln of the smallest normal f32: below it e^x is subnormal.
const EXP_UNDERFLOW: f32 = -87.336_55;

/// e^x with Cephes' range reduction and polynomial (relative error about 2e-7 in
/// [-87, 88]); vectorisable, unlike `f32::exp`. Exactly 0 where e^x would be subnormal.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    let underflows = x < EXP_UNDERFLOW;
    let x = x.clamp(EXP_UNDERFLOW, 88.376_26);
    // Round to nearest with the 1.5·2^23 trick: `floor` is a library call on baseline x86-64.
    // The sum's low bits hold n itself (its bits are MAGIC's + n).
    const MAGIC: f32 = 12_582_912.0;
    let shifted = x * LOG2E + MAGIC;
    let n = shifted - MAGIC;
    let r = x - n * C1 - n * C2;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // 2^n through the exponent bits, n + 127 taken from `shifted`'s bits with integer
    // arithmetic (`n as i32` is a saturating conversion the compiler leaves scalar); n ≥ −126
    // and y ≥ 1 there, so the result is normal.
    let biased = shifted
        .to_bits()
        .wrapping_sub(MAGIC.to_bits())
        .wrapping_add(127);
    let e = y * f32::from_bits(biased << 23);
    // The polynomial can land a hair under 2^-126 at the boundary: that is flushed too.
    if underflows || e < f32::MIN_POSITIVE {
        0.0
    } else {
        e
    }
}

/// Lanes of the reductions below: one AVX-512 register of f32.
const LANES: usize = 16;

/// Maximum of `f` over a slice, in [`LANES`] independent lanes so that it vectorises (a plain
/// fold cannot: float `max` and `+` are not associative for the compiler).
#[inline(always)]
fn max_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            let v = f(c[i]);
            lanes[i] = if v > lanes[i] { v } else { lanes[i] };
        }
    }
    rest.iter()
        .map(|&x| f(x))
        .chain(lanes)
        .fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// Sum of `f` over a slice, in [`LANES`] lanes (see [`max_map`]).
#[inline(always)]
fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for i in 0..LANES {
            lanes[i] += f(c[i]);
        }
    }
    rest.iter().map(|&x| f(x)).sum::<f32>() + lanes.iter().sum::<f32>()
}

/// Maximum of a slice (see [`max_map`]).
#[inline(always)]
fn max_of(xs: &[f32]) -> f32 {
    max_map(xs, |x| x)
}

/// Sum of a slice (see [`max_map`]).
#[inline(always)]
fn sum_of(xs: &[f32]) -> f32 {
    sum_map(xs, |x| x)
}

/// `buf = cap · tanh(xs / cap)` (or a copy without a cap).
#[inline(always)]
fn cap_into(buf: &mut [f32], xs: &[f32], cap: Option<f32>) {
    match cap {
        Some(c) => {
            let inv = 1.0 / c;
            for (b, &x) in buf.iter_mut().zip(xs) {
                *b = c * tanh(x * inv);
            }
        }
        None => buf.copy_from_slice(xs),
    }
}

/// `buf = exp(buf − max)`.
#[inline(always)]
fn exp_shifted(buf: &mut [f32], max: f32) {
    for b in buf.iter_mut() {
        *b = exp(*b - max);
    }
}

const GELU_K0: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_K1: f32 = 0.044_715;

/// The contiguous f32 data of a CPU tensor, if it is one.
pub(crate) fn with_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Option<R> {
    if !t.device().is_cpu() || t.dtype() != DType::F32 || !t.is_contiguous() {
        return None;
    }
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let start = layout.start_offset();
            Some(f(&v[start..start + t.elem_count()]))
        }
        _ => None,
    }
}

/// Which implementation of the element-wise work a model runs, chosen once when it loads and
/// carried through every pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernels {
    /// The fused CPU kernels of this module wherever an operand is f32 (a bf16 model still
    /// has f32 attention scores and logits); candle ops for the rest.
    Fused,
    /// candle ops only: the path CUDA and Metal run, also runnable on the CPU.
    Reference,
}

/// The environment variable that overrides the choice: `fused` or `reference`.
pub const KERNELS_ENV: &str = "SOCRATUNE_KERNELS";

impl Kernels {
    /// Fused on the CPU, the reference path elsewhere (the fused kernels are CPU code).
    pub fn for_device(device: &Device) -> Self {
        if device.is_cpu() {
            Kernels::Fused
        } else {
            Kernels::Reference
        }
    }

    /// `SOCRATUNE_KERNELS` when set, else [`Kernels::for_device`]; checked against the device
    /// (and `SOCRATUNE_SIMD`, which the fused kernels read, checked too).
    pub fn from_env(device: &Device) -> Result<Self, String> {
        super::simd::check_env()?;
        let k = match std::env::var(KERNELS_ENV) {
            Ok(v) => Self::parse(&v).map_err(|e| format!("{KERNELS_ENV}: {e}"))?,
            Err(_) => Self::for_device(device),
        };
        k.check(device)?;
        Ok(k)
    }

    /// `fused` or `reference`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "fused" => Ok(Kernels::Fused),
            "reference" => Ok(Kernels::Reference),
            other => Err(format!("unknown kernels `{other}` (fused or reference)")),
        }
    }

    /// The fused kernels run on the CPU only.
    pub fn check(self, device: &Device) -> Result<(), String> {
        if self == Kernels::Fused && !device.is_cpu() {
            return Err("the fused kernels run on the CPU only; use reference".into());
        }
        Ok(())
    }

    /// Whether an op may use its fused kernel on operand `t` (f32 on the CPU).
    pub fn fuse(self, t: &Tensor) -> bool {
        self == Kernels::Fused && t.dtype() == DType::F32 && t.device().is_cpu()
    }
}

fn from_vec(v: Vec<f32>, like: &Tensor) -> candle_core::Result<Tensor> {
    Tensor::from_vec(v, like.shape(), &Device::Cpu)
}

/// Rows per parallel task: large enough to amortise scheduling.
fn chunk_rows(row: usize) -> usize {
    (16384 / row.max(1)).max(1)
}

wide! {
    /// `ys = gelu_tanh(gs) · us`.
    fn geglu_chunk(gs: &[f32], us: &[f32], ys: &mut [f32]) {
        for ((y, &x), &u) in ys.iter_mut().zip(gs).zip(us) {
            let t = tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
            *y = flush(0.5 * x * (1.0 + t) * u);
        }
    }
}

wide! {
    /// The gradients of [`geglu_chunk`] for the output gradients `ds`, into `dgs` and `dus`.
    fn geglu_grad_chunk(gs: &[f32], us: &[f32], ds: &[f32], dgs: &mut [f32], dus: &mut [f32]) {
        for i in 0..dgs.len() {
            let x = gs[i];
            let t = tanh(GELU_K0 * (x + GELU_K1 * x * x * x));
            let gelu = 0.5 * x * (1.0 + t);
            let dgelu = 0.5 * (1.0 + t)
                + 0.5 * x * (1.0 - t * t) * GELU_K0 * (1.0 + 3.0 * GELU_K1 * x * x);
            let d = ds[i];
            dgs[i] = flush(d * us[i] * dgelu);
            dus[i] = flush(d * gelu);
        }
    }
}

/// `gelu_tanh(g) · u`.
pub fn geglu_forward(g: &Tensor, u: &Tensor) -> candle_core::Result<Option<Tensor>> {
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let out = with_f32(&g, |gs| {
        with_f32(&u, |us| {
            let mut y = vec![0f32; gs.len()];
            y.par_chunks_mut(16384).enumerate().for_each(|(c, ys)| {
                let o = c * 16384..c * 16384 + ys.len();
                geglu_chunk(&gs[o.clone()], &us[o], ys);
            });
            y
        })
    })
    .flatten();
    out.map(|y| from_vec(y, &g)).transpose()
}

/// The gradients of `gelu_tanh(g) · u` for the output gradient `dy`: (`dg`, `du`).
pub fn geglu_backward(
    g: &Tensor,
    u: &Tensor,
    dy: &Tensor,
) -> candle_core::Result<Option<(Tensor, Tensor)>> {
    let (g, u, dy) = (g.contiguous()?, u.contiguous()?, dy.contiguous()?);
    let out = with_f32(&g, |gs| {
        with_f32(&u, |us| {
            with_f32(&dy, |ds| {
                let n = gs.len();
                let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
                dg.par_chunks_mut(16384)
                    .zip(du.par_chunks_mut(16384))
                    .enumerate()
                    .for_each(|(c, (dgs, dus))| {
                        let o = c * 16384..c * 16384 + dgs.len();
                        geglu_grad_chunk(&gs[o.clone()], &us[o.clone()], &ds[o], dgs, dus);
                    });
                (dg, du)
            })
        })
    })
    .flatten()
    .flatten();
    match out {
        Some((dg, du)) => Ok(Some((from_vec(dg, &g)?, from_vec(du, &g)?))),
        None => Ok(None),
    }
}

/// Where row `r` of scores `[B, H, R, S]` finds its bias row in `[Bb, 1, Rb, S]` (Bb is 1 or
/// B, Rb is 1 or R: broadcast dims).
fn bias_row(r: usize, heads: usize, rows: usize, bias_batches: usize, bias_rows: usize) -> usize {
    let b = if bias_batches == 1 {
        0
    } else {
        r / (heads * rows)
    };
    let within = if bias_rows == 1 { 0 } else { r % rows };
    b * bias_rows + within
}

wide! {
    /// `yr = softmax(cap · tanh(sr / cap) + brow)` (one row of [`capped_softmax_forward`]; the
    /// fused attention calls it on its tiles' rows).
    pub(crate) fn softmax_row(yr: &mut [f32], sr: &[f32], brow: &[f32], capf: Option<f32>) {
        cap_into(yr, sr, capf);
        for (v, &b) in yr.iter_mut().zip(brow) {
            *v += b;
        }
        let max = max_of(yr);
        exp_shifted(yr, max);
        let inv = 1.0 / sum_of(yr);
        for v in yr.iter_mut() {
            *v = flush(*v * inv);
        }
    }
}

wide! {
    /// The gradient of [`softmax_row`] w.r.t. `sr` into `dr`, from its output `yr` and the
    /// output gradient `gr`.
    pub(crate) fn softmax_grad_row(dr: &mut [f32], yr: &[f32], gr: &[f32], sr: &[f32], capf: Option<f32>) {
        let n = dr.len();
        for j in 0..n {
            dr[j] = yr[j] * gr[j];
        }
        let dot = sum_of(dr);
        match capf {
            Some(c) => {
                let inv = 1.0 / c;
                for j in 0..n {
                    let t = tanh(sr[j] * inv);
                    dr[j] = flush(yr[j] * (gr[j] - dot) * (1.0 - t * t));
                }
            }
            None => {
                for j in 0..n {
                    dr[j] = flush(yr[j] * (gr[j] - dot));
                }
            }
        }
    }
}

/// `softmax(cap · tanh(s / cap) + bias)` over the last dim of `s` `[B, H, R, S]`.
pub fn capped_softmax_forward(
    s: &Tensor,
    cap: Option<f64>,
    bias: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let (_, h, r, n) = s.dims4()?;
    let (bb, bh, br, bn) = bias.dims4()?;
    if bh != 1 || bn != n || (br != 1 && br != r) {
        return Ok(None);
    }
    let (s, bias) = (s.contiguous()?, bias.contiguous()?);
    let capf = cap.map(|c| c as f32);
    let out = with_f32(&s, |ss| {
        with_f32(&bias, |bs| {
            let mut y = vec![0f32; ss.len()];
            let rows_per = chunk_rows(n);
            y.par_chunks_mut(rows_per * n)
                .enumerate()
                .for_each(|(c, ys)| {
                    for (k, yr) in ys.chunks_mut(n).enumerate() {
                        let row = c * rows_per + k;
                        let sr = &ss[row * n..(row + 1) * n];
                        let brow = &bs[bias_row(row, h, r, bb, br) * n..][..n];
                        softmax_row(yr, sr, brow, capf);
                    }
                });
            y
        })
    })
    .flatten();
    out.map(|y| from_vec(y, &s)).transpose()
}

/// The gradient of [`capped_softmax_forward`] w.r.t. `s`, from its output `y` and the output
/// gradient `g`.
pub fn capped_softmax_backward(
    s: &Tensor,
    y: &Tensor,
    g: &Tensor,
    cap: Option<f64>,
) -> candle_core::Result<Option<Tensor>> {
    let n = s.dim(candle_core::D::Minus1)?;
    let (s, y, g) = (s.contiguous()?, y.contiguous()?, g.contiguous()?);
    let capf = cap.map(|c| c as f32);
    let out = with_f32(&s, |ss| {
        with_f32(&y, |ys| {
            with_f32(&g, |gs| {
                let mut ds = vec![0f32; ss.len()];
                let rows_per = chunk_rows(n);
                ds.par_chunks_mut(rows_per * n)
                    .enumerate()
                    .for_each(|(c, dsc)| {
                        for (k, dr) in dsc.chunks_mut(n).enumerate() {
                            let o = (c * rows_per + k) * n;
                            softmax_grad_row(dr, &ys[o..o + n], &gs[o..o + n], &ss[o..o + n], capf);
                        }
                    });
                ds
            })
        })
    })
    .flatten()
    .flatten();
    out.map(|d| from_vec(d, &s)).transpose()
}

wide! {
    /// One row of [`rms_norm_backward`], into `dr`.
    fn rms_norm_grad_row(dr: &mut [f32], xr: &[f32], gr: &[f32], ws: &[f32], eps: f32) {
        let h = dr.len();
        for j in 0..h {
            dr[j] = xr[j] * xr[j];
        }
        let rstd = 1.0 / (sum_of(dr) / h as f32 + eps).sqrt();
        for j in 0..h {
            dr[j] = gr[j] * ws[j] * xr[j];
        }
        let dot = sum_of(dr) * rstd / h as f32;
        for j in 0..h {
            dr[j] = flush((gr[j] * ws[j] - xr[j] * rstd * dot) * rstd);
        }
    }
}

/// The gradient of Gemma's RMSNorm `y = x · rstd · w1` (rows of `x` `[n, H]`, f32) w.r.t. `x`
/// for the output gradient `g`: `(g·w1 − x̂ · mean(g·w1·x̂)) · rstd`, one pass a row (about ten
/// candle ops otherwise).
pub fn rms_norm_backward(
    x: &Tensor,
    w1: &Tensor,
    g: &Tensor,
    eps: f64,
) -> candle_core::Result<Option<Tensor>> {
    let h = x.dim(candle_core::D::Minus1)?;
    let (x, w1, g) = (x.contiguous()?, w1.contiguous()?, g.contiguous()?);
    let out = with_f32(&x, |xs| {
        with_f32(&w1, |ws| {
            with_f32(&g, |gs| {
                let mut dx = vec![0f32; xs.len()];
                let rows_per = chunk_rows(h);
                dx.par_chunks_mut(rows_per * h)
                    .enumerate()
                    .for_each(|(c, dxc)| {
                        for (k, dr) in dxc.chunks_mut(h).enumerate() {
                            let o = (c * rows_per + k) * h;
                            rms_norm_grad_row(dr, &xs[o..o + h], &gs[o..o + h], ws, eps as f32);
                        }
                    });
                dx
            })
        })
    })
    .flatten()
    .flatten();
    out.map(|d| from_vec(d, &x)).transpose()
}

wide! {
    /// Cross-entropy of one row of raw logits `zr` with target `t`, soft-capped by `cap` first:
    /// `logsumexp(z) − z[t]`. Reads only.
    fn ce_row_loss(zr: &[f32], t: usize, cap: Option<f32>) -> f64 {
        let (max, sum, picked) = match cap {
            Some(c) => {
                let ic = 1.0 / c;
                let max = max_map(zr, |x| c * tanh(x * ic));
                let sum = sum_map(zr, |x| exp(c * tanh(x * ic) - max));
                (max, sum, c * tanh(zr[t] * ic))
            }
            None => {
                let max = max_of(zr);
                (max, sum_map(zr, |x| exp(x - max)), zr[t])
            }
        };
        (max as f64 + (sum as f64).ln()) - picked as f64
    }
}

wide! {
    /// [`ce_row_loss`], turning the row into the loss's gradient w.r.t. the raw logits:
    /// `(softmax − onehot) · (1 − tanh²(z / cap))`. In place, so the logits' buffer is the
    /// gradient's (no second `[n × V]` buffer).
    fn ce_row_grad(zr: &mut [f32], t: usize, cap: Option<f32>) -> f64 {
        match cap {
            Some(c) => {
                let ic = 1.0 / c;
                // The row holds tanh(z / cap) from here on: the capped logit and its derivative
                // both come from it.
                for x in zr.iter_mut() {
                    *x = tanh(*x * ic);
                }
                let max = c * max_of(zr);
                let sum = sum_map(zr, |th| exp(c * th - max));
                let th_t = zr[t];
                let loss = (max as f64 + (sum as f64).ln()) - (c * th_t) as f64;
                let inv = 1.0 / sum;
                for th in zr.iter_mut() {
                    *th = flush(exp(c * *th - max) * inv * (1.0 - *th * *th));
                }
                zr[t] = flush(zr[t] - (1.0 - th_t * th_t));
                loss
            }
            None => {
                let max = max_of(zr);
                let sum = sum_map(zr, |x| exp(x - max));
                let loss = (max as f64 + (sum as f64).ln()) - zr[t] as f64;
                let inv = 1.0 / sum;
                for x in zr.iter_mut() {
                    *x = flush(exp(*x - max) * inv);
                }
                zr[t] = flush(zr[t] - 1.0);
                loss
            }
        }
    }
}

/// The summed cross-entropy of rows of raw logits `z` (`[n, V]` row-major, one target a
/// row, soft-capped by `cap` first).
pub fn cross_entropy_loss(z: &[f32], v: usize, targets: &[u32], cap: Option<f64>) -> f64 {
    let capf = cap.map(|c| c as f32);
    z.par_chunks(v)
        .zip(targets.par_iter())
        .map(|(zr, &t)| ce_row_loss(zr, t as usize, capf))
        .sum()
}

/// [`cross_entropy_loss`], overwriting `z` with the gradient w.r.t. the raw logits.
pub fn cross_entropy_in_place(z: &mut [f32], v: usize, targets: &[u32], cap: Option<f64>) -> f64 {
    let capf = cap.map(|c| c as f32);
    z.par_chunks_mut(v)
        .zip(targets.par_iter())
        .map(|(zr, &t)| ce_row_grad(zr, t as usize, capf))
        .sum()
}

/// The cross-entropy rows of a tensor `z` `[n, V]`: the summed loss, and with `need_grad` the
/// gradient w.r.t. the raw logits (in a copy of `z`).
pub fn cross_entropy_rows(
    z: &Tensor,
    targets: &[u32],
    cap: Option<f64>,
    need_grad: bool,
) -> candle_core::Result<Option<(f64, Option<Tensor>)>> {
    let (_, v) = z.dims2()?;
    let z = z.contiguous()?;
    if !need_grad {
        return Ok(with_f32(&z, |zs| {
            (cross_entropy_loss(zs, v, targets, cap), None)
        }));
    }
    let Some(mut dz) = with_f32(&z, <[f32]>::to_vec) else {
        return Ok(None);
    };
    let total = cross_entropy_in_place(&mut dz, v, targets, cap);
    Ok(Some((total, Some(from_vec(dz, &z)?))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_simd_level_gives_the_same_bits() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // Lengths that are not multiples of the lanes, values that saturate tanh and
        // underflow exp, and masked (-inf) entries.
        let n = 1000 + 37;
        let mut v = |scale: f32| -> Vec<f32> {
            (0..n)
                .map(|_| rng.random_range(-1.0f32..1.0) * scale)
                .collect()
        };
        let (a, b, c) = (v(12.0), v(3.0), v(1.0));
        let mut bias = v(1.0);
        for x in bias.iter_mut().skip(700) {
            *x = f32::NEG_INFINITY;
        }
        let bits = |xs: &[f32]| xs.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let runs = crate::model::simd::at_each_level(|| {
            let mut y = vec![0f32; n];
            let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
            geglu_chunk(&a, &b, &mut y);
            geglu_grad_chunk(&a, &b, &c, &mut dg, &mut du);
            let mut p = vec![0f32; n];
            let mut dp = vec![0f32; n];
            let mut q = vec![0f32; n];
            softmax_row(&mut p, &a, &bias, Some(50.0));
            softmax_grad_row(&mut dp, &p, &c, &a, Some(50.0));
            softmax_row(&mut q, &b, &bias, None);
            let mut dn = vec![0f32; n];
            rms_norm_grad_row(&mut dn, &a, &c, &b, 1e-6);
            let mut z = a.clone();
            let loss = ce_row_loss(&a, 5, Some(30.0)) + ce_row_loss(&b, 900, None);
            let l2 = ce_row_grad(&mut z, 5, Some(30.0));
            let mut z2 = b.clone();
            let l3 = ce_row_grad(&mut z2, 900, None);
            let all = [y, dg, du, p, dp, q, dn, z, z2].concat();
            (bits(&all), [loss, l2, l3].map(f64::to_bits))
        });
        assert!(!runs.is_empty());
        for (level, r) in &runs[1..] {
            assert!(
                r == &runs[0].1,
                "{level:?} differs from the baseline kernels"
            );
        }
    }

    #[test]
    fn exp_is_within_a_few_ulps() {
        let mut worst = 0f32;
        for i in -87000..=88000 {
            let x = i as f32 * 0.001;
            let rel = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
        }
        assert!(worst < 5e-7, "max relative error {worst}");
        // Where e^x is subnormal the result is an exact zero, and never subnormal anywhere.
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(-87.4), 0.0);
        for i in 0..200_000 {
            let x = -100.0 + i as f32 * 1e-3;
            assert!(!exp(x).is_subnormal(), "exp({x}) = {:e}", exp(x));
        }
    }

    #[test]
    fn tanh_is_within_a_few_ulps() {
        let mut worst = 0f32;
        for i in -20000..=20000 {
            let x = i as f32 * 0.001;
            let e = (tanh(x) - x.tanh()).abs();
            worst = worst.max(e);
        }
        assert!(worst < 5e-7, "max abs error {worst}");
        assert_eq!(tanh(100.0), tanh(7.905_311));
        assert!((tanh(100.0) - 1.0).abs() < 1e-6);
    }
}
