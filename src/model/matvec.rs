//! `x · Wᵀ` for the few rows of a decoding step, on the CPU in f32.
//!
//! A decoding step multiplies one row (a batch: a few rows) by every weight matrix of the
//! model, so each weight is read once and used for one multiply-add per element: the step is
//! bound by how fast the weights stream from memory. gemm (candle's matmul) takes a
//! single-threaded matrix-vector path for one row, and its general path for a few rows packs
//! the weight first. Here every output element is the dot product of a row of `x` with a
//! contiguous row of `W` (`[out, in]`, as checkpoints store it), the output rows are split
//! among the rayon threads, and each weight row, once loaded, serves every row of `x`.
//! Several weights that read the same input (q/k/v, gate/up) go in one parallel pass.

use super::kernels;
use candle_core::{DType, Device, Result, Tensor};
use rayon::prelude::*;

/// Rows of `x` up to which [`matvec`] applies; above, the matmul's blocking wins.
pub const MAX_ROWS: usize = 16;

/// Weight elements per parallel task (64 KiB of f32): large enough to amortise scheduling.
const TASK_ELEMS: usize = 16 * 1024;

/// Below this many weight elements in a call, threads cost more than they save.
const PARALLEL_ELEMS: usize = 64 * 1024;

/// `x · wᵢᵀ` for each weight `wᵢ` `[outᵢ, in]`, with `x` `[n, in]`: `[n, outᵢ]` each. `None`
/// when it does not apply (not all CPU f32, or more than [`MAX_ROWS`] rows); the caller then
/// multiplies as usual.
pub fn matvec(x: &Tensor, ws: &[&Tensor]) -> Result<Option<Vec<Tensor>>> {
    let (n, k) = x.dims2()?;
    let cpu_f32 = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32;
    if n == 0 || n > MAX_ROWS || !cpu_f32(x) || !ws.iter().all(|w| cpu_f32(w)) {
        return Ok(None);
    }
    let mut heights = Vec::with_capacity(ws.len());
    for w in ws {
        let (out, w_in) = w.dims2()?;
        if w_in != k {
            candle_core::bail!("matvec: weight {:?} for inputs of {k}", w.dims());
        }
        heights.push(out);
    }
    let x = x.contiguous()?;
    let ws = ws
        .iter()
        .map(|w| w.contiguous())
        .collect::<Result<Vec<_>>>()?;
    let Some(xs) = kernels::with_f32(&x, <[f32]>::to_vec) else {
        return Ok(None);
    };
    // Per weight, its output transposed (`[out, n]`): a task's output rows are contiguous.
    let mut outs: Vec<Vec<f32>> = heights.iter().map(|&out| vec![0f32; out * n]).collect();
    let guards: Vec<_> = ws.iter().map(|w| w.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(ws.len());
    for (w, (storage, layout)) in ws.iter().zip(&guards) {
        match &**storage {
            candle_core::Storage::Cpu(candle_core::CpuStorage::F32(v)) => {
                let start = layout.start_offset();
                slices.push(&v[start..start + w.elem_count()]);
            }
            _ => return Ok(None),
        }
    }
    let rows_per_task = (TASK_ELEMS / k.max(1)).max(1);
    let mut tasks: Vec<(&[f32], &mut [f32])> = Vec::new();
    for (w, out) in slices.iter().zip(outs.iter_mut()) {
        tasks.extend(
            w.chunks(rows_per_task * k)
                .zip(out.chunks_mut(rows_per_task * n)),
        );
    }
    let total: usize = slices.iter().map(|w| w.len()).sum();
    let run = |(w, out): (&[f32], &mut [f32])| rows(w, &xs, n, k, out);
    if total < PARALLEL_ELEMS {
        tasks.into_iter().for_each(run);
    } else {
        tasks.into_par_iter().for_each(run);
    }
    drop(guards);
    outs.into_iter()
        .map(|o| {
            let out = o.len() / n;
            let o = if n == 1 {
                o
            } else {
                super::lowrank::transpose(&o, out, n)
            };
            Tensor::from_vec(o, (n, out), &Device::Cpu)
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// `out[j, i] = x[i] · w[j]` for the weight rows `w` (`[rows, k]`) and the rows of `x`
/// (`[n, k]`), with the widest vector unit the CPU has.
fn rows(w: &[f32], x: &[f32], n: usize, k: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    match super::simd::level() {
        // SAFETY: the CPU has the features the functions are compiled for.
        super::simd::Level::Avx512 => return unsafe { x86::rows_avx512(w, x, n, k, out) },
        super::simd::Level::Avx2 => {
            return unsafe { rows_with(w, x, n, k, out, |a, b| x86::dot_avx2(a, b)) }
        }
        super::simd::Level::Baseline => {}
    }
    rows_with(w, x, n, k, out, dot_plain)
}

#[inline(always)]
fn rows_with(
    w: &[f32],
    x: &[f32],
    n: usize,
    k: usize,
    out: &mut [f32],
    dot: impl Fn(&[f32], &[f32]) -> f32,
) {
    for (wr, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
        for (xr, y) in x.chunks_exact(k).zip(o.iter_mut()) {
            *y = dot(wr, xr);
        }
    }
}

/// The dot product in eight lanes, for CPUs without AVX2 (the compiler vectorises it for
/// SSE).
fn dot_plain(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (u, v) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += u[i] * v[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Dot products with explicit vector instructions: the compiler does not turn a lane loop
/// into full-width fused multiply-adds on its own.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// [`super::rows`] with AVX-512: rows of `x` four at a time against each weight row (a
    /// batch's step), so that each load of the weight serves four FMAs.
    #[target_feature(enable = "avx512f")]
    pub(super) fn rows_avx512(w: &[f32], x: &[f32], n: usize, k: usize, out: &mut [f32]) {
        for (wr, o) in w.chunks_exact(k).zip(out.chunks_exact_mut(n)) {
            let mut i = 0;
            while i + 4 <= n {
                let xs = [0, 1, 2, 3].map(|j| &x[(i + j) * k..(i + j + 1) * k]);
                o[i..i + 4].copy_from_slice(&dot4_avx512(wr, xs));
                i += 4;
            }
            for (xr, y) in x[i * k..].chunks_exact(k).zip(&mut o[i..]) {
                *y = dot_avx512(wr, xr);
            }
        }
    }

    /// `w · xⱼ` for four rows `xⱼ` of `w`'s length.
    #[target_feature(enable = "avx512f")]
    fn dot4_avx512(w: &[f32], xs: [&[f32]; 4]) -> [f32; 4] {
        let k = w.len();
        assert!(xs.iter().all(|x| x.len() == k));
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 16 floats at an index + 16 ≤ k of slices of length k.
        unsafe {
            while i + 16 <= k {
                let wv = _mm512_loadu_ps(w.as_ptr().add(i));
                for (s, x) in acc.iter_mut().zip(xs) {
                    *s = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(i)), *s);
                }
                i += 16;
            }
        }
        let mut r = [0f32; 4];
        for ((r, s), x) in r.iter_mut().zip(acc).zip(xs) {
            let tail: f32 = w[i..].iter().zip(&x[i..]).map(|(a, b)| a * b).sum();
            *r = _mm512_reduce_add_ps(s) + tail;
        }
        r
    }

    /// Four AVX-512 accumulators (64 floats a round), so that consecutive FMAs do not wait
    /// on each other.
    #[target_feature(enable = "avx512f")]
    pub(super) fn dot_avx512(a: &[f32], b: &[f32]) -> f32 {
        let k = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm512_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 16 floats at an index + 16 ≤ k.
        unsafe {
            while i + 64 <= k {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = i + 16 * j;
                    *s =
                        _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(o)), _mm512_loadu_ps(pb.add(o)), *s);
                }
                i += 64;
            }
            while i + 16 <= k {
                acc[0] = _mm512_fmadd_ps(
                    _mm512_loadu_ps(pa.add(i)),
                    _mm512_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 16;
            }
        }
        let sum = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
        let tail: f32 = a[i..k].iter().zip(&b[i..k]).map(|(x, y)| x * y).sum();
        _mm512_reduce_add_ps(sum) + tail
    }

    /// [`dot_avx512`] with AVX2 registers (four of 8 floats).
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let k = a.len().min(b.len());
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut i = 0;
        // SAFETY: every load reads 8 floats at an index + 8 ≤ k.
        unsafe {
            while i + 32 <= k {
                for (j, s) in acc.iter_mut().enumerate() {
                    let o = i + 8 * j;
                    *s =
                        _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(o)), _mm256_loadu_ps(pb.add(o)), *s);
                }
                i += 32;
            }
            while i + 8 <= k {
                acc[0] = _mm256_fmadd_ps(
                    _mm256_loadu_ps(pa.add(i)),
                    _mm256_loadu_ps(pb.add(i)),
                    acc[0],
                );
                i += 8;
            }
        }
        let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let mut lanes = [0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), sum) };
        let tail: f32 = a[i..k].iter().zip(&b[i..k]).map(|(x, y)| x * y).sum();
        lanes.iter().sum::<f32>() + tail
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_values as seq;

    /// Against candle's matmul, for one and several rows, weights of several heights (one
    /// that splits into uneven tasks), an inner size that is no multiple of the lanes, and
    /// sizes on both sides of the parallel threshold.
    #[test]
    fn matches_the_matmul() {
        let dev = Device::Cpu;
        for (n, k) in [(1, 64), (3, 100), (1, 2048), (6, 515), (8, 512), (16, 33)] {
            let x = Tensor::from_vec(seq(n * k, 1), (n, k), &dev).unwrap();
            let ws: Vec<Tensor> = [7, 300, 1000]
                .iter()
                .enumerate()
                .map(|(s, &out)| {
                    Tensor::from_vec(seq(out * k, s as u32 + 2), (out, k), &dev).unwrap()
                })
                .collect();
            let refs: Vec<&Tensor> = ws.iter().collect();
            let got = matvec(&x, &refs).unwrap().expect("applies");
            for (w, y) in ws.iter().zip(&got) {
                let want = x.matmul(&w.t().unwrap()).unwrap();
                assert_eq!(y.dims(), want.dims());
                let d = crate::model::max_abs_diff(y, &want);
                assert!(d < 1e-4 * (k as f32).sqrt(), "n {n}, k {k}: {d}");
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let dev = Device::Cpu;
        let w = Tensor::zeros((4, 8), DType::F32, &dev).unwrap();
        let many = Tensor::zeros((MAX_ROWS + 1, 8), DType::F32, &dev).unwrap();
        assert!(matvec(&many, &[&w]).unwrap().is_none());
        let f64_x = Tensor::zeros((1, 8), DType::F64, &dev).unwrap();
        assert!(matvec(&f64_x, &[&w]).unwrap().is_none());
        let x = Tensor::zeros((1, 7), DType::F32, &dev).unwrap();
        let e = matvec(&x, &[&w]).unwrap_err().to_string();
        assert!(e.contains("for inputs of 7"), "{e}");
    }
}
