//! The LoRA products on the CPU in f32: every one has a side of the adapter's rank r (16 by
//! default), which no general GEMM blocks well. gemm's AVX-512 f32 microkernel computes 64 × 6
//! tiles (`x4x6`: 64 along the output's contiguous dimension); an `[n, 16]` output fills a
//! quarter of one, and a product over k = 16 spends as long packing its operands as multiplying
//! them. So each of the three shapes gets its own register tile here, vectorised along the
//! dimension that is contiguous in memory, with the other operand broadcast from memory:
//!
//! * [`rank_n`]: `[m, k] · [k, r]` (the adapter's down-projection `u = x·Aᵀ`, `du = g·B`);
//! * [`rank_k`]: `[m, r] · [r, n]`, added to the output (`y += s·u·Bᵀ`, `dx += du·A`), with
//!   the dropout mask applied on the way;
//! * [`rank_m`]: `pᵀ · q` for `p` `[m, r]`, a sum of m outer products (`dA = duᵀ·x̃`,
//!   `dBᵀ = uᵀ·g`), with the dropout mask applied to `q` on the way.
//!
//! Rows (or, for [`rank_m`], column blocks) are split over the rayon threads. The AVX-512
//! kernels are chosen at run time; other CPUs take the same products through gemm.

use super::cpu_gemm::{gemm_into, Mat};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// Below this many multiply-adds a product runs on the calling thread: handing it to the pool
/// would cost more than it saves.
const PARALLEL_FMAS: usize = 1 << 18;

/// `dst[m, r] = alpha · p[m, k] · q[k, r]`, all row-major.
pub fn rank_n(dst: &mut [f32], p: &[f32], q: &[f32], mkr: [usize; 3], alpha: f32) {
    rank_n_on(avx512(), dst, p, q, mkr, alpha)
}

/// [`rank_n`] with the AVX-512 kernel (`simd`, where the CPU has it) or through gemm.
fn rank_n_on(simd: bool, dst: &mut [f32], p: &[f32], q: &[f32], mkr: [usize; 3], alpha: f32) {
    let [m, k, r] = mkr;
    assert!(
        dst.len() == m * r && p.len() == m * k && q.len() == k * r,
        "rank_n shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if simd {
        let chunk = row_chunk(m, k * r, x86::ROWS);
        let run = |(i, d): (usize, &mut [f32])| {
            let rows = d.len() / r;
            let p = &p[i * chunk * k..][..rows * k];
            // SAFETY: the CPU has AVX-512; the shapes were checked above.
            unsafe { x86::rank_n(d, p, q, rows, k, r, alpha) }
        };
        return for_chunks(dst, chunk * r, m * k * r, run);
    }
    gemm_into(dst, Mat::new(p, m, k), Mat::new(q, k, r), alpha, false);
}

/// `dst[m, n] (+)= alpha · (p[m, r] · q[r, n]) ⊙ mask[m, n]`, all row-major; with
/// `accumulate` the product is added to what `dst` holds.
pub fn rank_k(
    dst: &mut [f32],
    p: &[f32],
    q: &[f32],
    mrn: [usize; 3],
    alpha: f32,
    accumulate: bool,
    mask: Option<&[f32]>,
) {
    rank_k_on(avx512(), dst, p, q, mrn, alpha, accumulate, mask)
}

/// [`rank_k`] with the AVX-512 kernel (`simd`, where the CPU has it) or through gemm.
#[allow(clippy::too_many_arguments)]
fn rank_k_on(
    simd: bool,
    dst: &mut [f32],
    p: &[f32],
    q: &[f32],
    [m, r, n]: [usize; 3],
    alpha: f32,
    accumulate: bool,
    mask: Option<&[f32]>,
) {
    assert!(
        dst.len() == m * n && p.len() == m * r && q.len() == r * n,
        "rank_k shapes"
    );
    assert!(mask.is_none_or(|k| k.len() == m * n), "rank_k mask shape");
    #[cfg(target_arch = "x86_64")]
    if simd {
        let chunk = row_chunk(m, r * n, x86::ROWS);
        let run = |(i, d): (usize, &mut [f32])| {
            let rows = d.len() / n;
            let mask = mask.map(|k| &k[i * chunk * n..][..rows * n]);
            let p = &p[i * chunk * r..][..rows * r];
            // SAFETY: the CPU has AVX-512; the shapes were checked above.
            unsafe { x86::rank_k(d, p, q, [rows, r, n], alpha, accumulate, mask) }
        };
        return for_chunks(dst, chunk * n, m * r * n, run);
    }
    let (pm, qm) = (Mat::new(p, m, r), Mat::new(q, r, n));
    match mask {
        None => gemm_into(dst, pm, qm, alpha, accumulate),
        Some(mask) => {
            let mut t = vec![0f32; m * n];
            gemm_into(&mut t, pm, qm, alpha, false);
            for ((d, t), k) in dst.iter_mut().zip(&t).zip(mask) {
                *d = if accumulate { *d + t * k } else { t * k };
            }
        }
    }
}

/// `dst[r, n] = alpha · pᵀ · (q ⊙ mask)` for `p` `[m, r]`, `q` and `mask` `[m, n]`, all
/// row-major.
pub fn rank_m(
    dst: &mut [f32],
    p: &[f32],
    q: &[f32],
    mrn: [usize; 3],
    alpha: f32,
    mask: Option<&[f32]>,
) {
    rank_m_on(avx512(), dst, p, q, mrn, alpha, mask)
}

/// [`rank_m`] with the AVX-512 kernel (`simd`, where the CPU has it) or through gemm.
fn rank_m_on(
    simd: bool,
    dst: &mut [f32],
    p: &[f32],
    q: &[f32],
    [m, r, n]: [usize; 3],
    alpha: f32,
    mask: Option<&[f32]>,
) {
    assert!(
        dst.len() == r * n && p.len() == m * r && q.len() == m * n,
        "rank_m shapes"
    );
    assert!(mask.is_none_or(|k| k.len() == m * n), "rank_m mask shape");
    #[cfg(target_arch = "x86_64")]
    if simd {
        // The m rows are split over the threads, each summing its share into its own
        // `[r, n]` (small), added up at the end: the threads' work is even and each reads
        // its rows of `q` in order.
        let tasks = match m * r * n < PARALLEL_FMAS {
            true => 1,
            false => rayon::current_num_threads()
                .min(m.div_ceil(x86::CHUNK))
                .max(1),
        };
        let per = m.div_ceil(tasks);
        let run = |t: usize, out: &mut [f32]| {
            let rows = (t * per).min(m)..((t + 1) * per).min(m);
            // SAFETY: the CPU has AVX-512; the shapes were checked above.
            unsafe { x86::rank_m(out, p, q, mask, [r, n], rows) }
        };
        let mut partial = vec![Vec::new(); tasks - 1];
        match tasks {
            1 => run(0, dst),
            _ => {
                rayon::join(
                    || run(0, dst),
                    || {
                        partial.par_iter_mut().enumerate().for_each(|(t, out)| {
                            *out = vec![0f32; r * n];
                            run(t + 1, out)
                        })
                    },
                )
                .1
            }
        }
        for part in &partial {
            dst.iter_mut().zip(part).for_each(|(d, s)| *d += s);
        }
        dst.iter_mut().for_each(|d| *d *= alpha);
        return;
    }
    let masked;
    let q = match mask {
        None => q,
        Some(k) => {
            masked = q.iter().zip(k).map(|(q, k)| q * k).collect::<Vec<_>>();
            &masked
        }
    };
    gemm_into(dst, Mat::new(p, m, r).t(), Mat::new(q, m, n), alpha, false);
}

/// `[rows, cols]` → `[cols, rows]`, row-major (the adapters' small `A` and `B`).
pub fn transpose(a: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(a.len(), rows * cols, "transpose shape");
    let mut t = vec![0f32; a.len()];
    for (i, row) in a.chunks_exact(cols.max(1)).enumerate() {
        for (j, v) in row.iter().enumerate() {
            t[j * rows + i] = *v;
        }
    }
    t
}

/// Whether the kernels run their AVX-512 code ([`super::simd`]: the CPU has it and
/// `SOCRATUNE_SIMD` does not cap it), else gemm.
fn avx512() -> bool {
    super::simd::level() == super::simd::Level::Avx512
}

/// Rows a task takes: a multiple of the kernel's `tile` rows, about four tasks a thread.
#[cfg(target_arch = "x86_64")]
fn row_chunk(m: usize, fmas_per_row: usize, tile: usize) -> usize {
    if m * fmas_per_row < PARALLEL_FMAS {
        return m.max(1);
    }
    let tasks = 4 * rayon::current_num_threads();
    m.div_ceil(tasks).div_ceil(tile).max(1) * tile
}

/// `run(i, chunk)` over the `chunk`-element pieces of `dst`, on the pool when there are
/// `fmas` enough.
#[cfg(target_arch = "x86_64")]
fn for_chunks(
    dst: &mut [f32],
    chunk: usize,
    fmas: usize,
    run: impl Fn((usize, &mut [f32])) + Sync + Send,
) {
    if dst.is_empty() {
        return;
    }
    if fmas < PARALLEL_FMAS {
        dst.chunks_mut(chunk).enumerate().for_each(run);
    } else {
        dst.par_chunks_mut(chunk).enumerate().for_each(run);
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    /// Output rows of the [`rank_n`] and [`rank_k`] tiles (their row tasks are multiples of it).
    pub(super) const ROWS: usize = 12;
    /// Output columns of a [`rank_m`] block: its tile's three vectors.
    pub(super) const COLS: usize = 48;

    /// Per vector of a tile `v` vectors wide starting at column `at` of `n`: the lanes inside.
    #[inline(always)]
    fn masks<const V: usize>(at: usize, n: usize) -> [__mmask16; V] {
        std::array::from_fn(|v| {
            let left = n.saturating_sub(at + 16 * v).min(16);
            ((1u32 << left) - 1) as __mmask16
        })
    }

    /// [`super::rank_n`] on `m` rows: tiles of `R` rows by `V` vectors of `q`'s columns.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rank_n(
        dst: &mut [f32],
        p: &[f32],
        q: &[f32],
        m: usize,
        k: usize,
        r: usize,
        alpha: f32,
    ) {
        // Wider tiles as r grows, staying within the 32 vector registers.
        match r.div_ceil(16) {
            1 => rank_n_with::<ROWS, 1>(dst, p, q, m, k, r, alpha),
            2 => rank_n_with::<ROWS, 2>(dst, p, q, m, k, r, alpha),
            3 => rank_n_with::<8, 3>(dst, p, q, m, k, r, alpha),
            _ => rank_n_with::<6, 4>(dst, p, q, m, k, r, alpha),
        }
    }

    #[inline(always)]
    unsafe fn rank_n_with<const R: usize, const V: usize>(
        dst: &mut [f32],
        p: &[f32],
        q: &[f32],
        m: usize,
        k: usize,
        r: usize,
        alpha: f32,
    ) {
        let (d, p, q) = (dst.as_mut_ptr(), p.as_ptr(), q.as_ptr());
        for c in (0..r).step_by(16 * V) {
            let lanes = masks::<V>(c, r);
            let mut i = 0;
            while i + R <= m {
                tile_n::<R, V>(
                    d.add(i * r + c),
                    p.add(i * k),
                    q.add(c),
                    [k, r],
                    lanes,
                    alpha,
                );
                i += R;
            }
            for i in i..m {
                tile_n::<1, V>(
                    d.add(i * r + c),
                    p.add(i * k),
                    q.add(c),
                    [k, r],
                    lanes,
                    alpha,
                );
            }
        }
    }

    /// `R` rows of `dst` (row stride r) = alpha · `R` rows of `p` (stride k) · `q` (`[k, r]`,
    /// at the tile's first column), in the lanes `lanes`.
    #[inline(always)]
    unsafe fn tile_n<const R: usize, const V: usize>(
        dst: *mut f32,
        p: *const f32,
        q: *const f32,
        [k, r]: [usize; 2],
        lanes: [__mmask16; V],
        alpha: f32,
    ) {
        let mut acc = [[_mm512_setzero_ps(); V]; R];
        for kk in 0..k {
            let qrow = q.add(kk * r);
            let qv: [__m512; V] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(lanes[v], qrow.add(16 * v)));
            for (i, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*p.add(i * k + kk));
                for (a, q) in acc.iter_mut().zip(qv) {
                    *a = _mm512_fmadd_ps(b, q, *a);
                }
            }
        }
        let alpha = _mm512_set1_ps(alpha);
        for (i, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(dst.add(i * r + 16 * v), lanes[v], _mm512_mul_ps(*a, alpha));
            }
        }
    }

    /// [`super::rank_k`] on `m` rows: tiles of `ROWS / 2` rows by 4 vectors of `q`'s columns.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rank_k(
        dst: &mut [f32],
        p: &[f32],
        q: &[f32],
        [m, r, n]: [usize; 3],
        alpha: f32,
        accumulate: bool,
        mask: Option<&[f32]>,
    ) {
        const R: usize = ROWS / 2;
        let (d, p, q) = (dst.as_mut_ptr(), p.as_ptr(), q.as_ptr());
        let mask = mask.map(|k| k.as_ptr());
        let how = Epilogue {
            alpha,
            accumulate,
            mask,
            n,
        };
        let mut i = 0;
        while i + R <= m {
            for c in (0..n).step_by(64) {
                tile_k::<R>(d, p, q, i, c, r, &how);
            }
            i += R;
        }
        for i in i..m {
            for c in (0..n).step_by(64) {
                tile_k::<1>(d, p, q, i, c, r, &how);
            }
        }
    }

    /// How a [`tile_k`] writes its sums.
    struct Epilogue {
        alpha: f32,
        accumulate: bool,
        mask: Option<*const f32>,
        /// Columns of `dst`, `q` and the mask.
        n: usize,
    }

    /// Rows `i..i + R`, columns `c..c + 64` of `dst` (those inside `n`).
    #[inline(always)]
    unsafe fn tile_k<const R: usize>(
        d: *mut f32,
        p: *const f32,
        q: *const f32,
        i: usize,
        c: usize,
        r: usize,
        how: &Epilogue,
    ) {
        let n = how.n;
        let lanes = masks::<4>(c, n);
        let mut acc = [[_mm512_setzero_ps(); 4]; R];
        for j in 0..r {
            let qrow = q.add(j * n + c);
            let qv: [__m512; 4] =
                std::array::from_fn(|v| _mm512_maskz_loadu_ps(lanes[v], qrow.add(16 * v)));
            for (ii, acc) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*p.add((i + ii) * r + j));
                for (a, q) in acc.iter_mut().zip(qv) {
                    *a = _mm512_fmadd_ps(b, q, *a);
                }
            }
        }
        let alpha = _mm512_set1_ps(how.alpha);
        for (ii, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                let at = (i + ii) * n + c + 16 * v;
                let mut s = _mm512_mul_ps(*a, alpha);
                if let Some(k) = how.mask {
                    s = _mm512_mul_ps(s, _mm512_maskz_loadu_ps(lanes[v], k.add(at)));
                }
                if how.accumulate {
                    s = _mm512_add_ps(s, _mm512_maskz_loadu_ps(lanes[v], d.add(at)));
                }
                _mm512_mask_storeu_ps(d.add(at), lanes[v], s);
            }
        }
    }

    /// Rows of `q` a [`rank_m`] task packs and sums at a time.
    pub(super) const CHUNK: usize = 128;
    /// Columns of `q` packed at a time: a packed chunk (256 KiB) stays in the core's cache
    /// while every tile of `dst` reads it.
    const GROUP: usize = 11 * COLS;

    /// `dst` (`[r, n]`) = the sum over the rows `rows` of [`super::rank_m`]'s product (alpha
    /// not applied), chunk by chunk of [`CHUNK`] rows and group by group of [`GROUP`]
    /// columns: the slice of `q` (times the mask) is first copied block by block into a
    /// contiguous buffer, then tiles of 8 rows of `dst` by a block's three vectors add its
    /// share. Read in place, `q`'s rows are a stride of n floats apart (2–8 KiB here), which
    /// defeats the caches and prefetchers.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn rank_m(
        dst: &mut [f32],
        p: &[f32],
        q: &[f32],
        mask: Option<&[f32]>,
        [r, n]: [usize; 2],
        rows: std::ops::Range<usize>,
    ) {
        PACKED.with_borrow_mut(|packed| {
            packed.resize(packed.len().max(CHUNK * GROUP), 0.0);
            if rows.is_empty() {
                dst.fill(0.0);
            }
            let mut i = rows.start;
            while i < rows.end {
                let chunk = i..(i + CHUNK).min(rows.end);
                for c in (0..n).step_by(GROUP) {
                    let cols = c..(c + GROUP).min(n);
                    let first = i == rows.start;
                    rank_m_chunk(
                        dst.as_mut_ptr(),
                        p,
                        q,
                        mask,
                        [r, n],
                        &chunk,
                        cols,
                        first,
                        packed,
                    )
                }
                i = chunk.end;
            }
        })
    }

    thread_local! {
        /// [`rank_m`]'s packing buffer, kept by each thread: a fresh one each call costs
        /// page faults (it is hundreds of KiB) that took longer than the product.
        static PACKED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }

    /// Adds the rows `chunk` of the product to the columns `cols` of `dst` (overwrites them
    /// when `first`).
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    unsafe fn rank_m_chunk(
        dst: *mut f32,
        p: &[f32],
        q: &[f32],
        mask: Option<&[f32]>,
        [r, n]: [usize; 2],
        chunk: &std::ops::Range<usize>,
        cols: std::ops::Range<usize>,
        first: bool,
        packed: &mut [f32],
    ) {
        let (p, q, mask) = (p.as_ptr(), q.as_ptr(), mask.map(|k| k.as_ptr()));
        let (i, rows) = (chunk.start, chunk.len());
        // Row by row, so that `q` is read in order.
        for ii in 0..rows {
            for (b, c) in cols.clone().step_by(COLS).enumerate() {
                let lanes = masks::<3>(c, cols.end);
                let from = (i + ii) * n + c;
                let to = packed.as_mut_ptr().add((b * CHUNK + ii) * COLS);
                for (v, l) in lanes.iter().enumerate() {
                    let mut x = _mm512_maskz_loadu_ps(*l, q.add(from + 16 * v));
                    if let Some(k) = mask {
                        x = _mm512_mul_ps(x, _mm512_maskz_loadu_ps(*l, k.add(from + 16 * v)));
                    }
                    _mm512_storeu_ps(to.add(16 * v), x);
                }
            }
        }
        for (b, c) in cols.clone().step_by(COLS).enumerate() {
            let block = Block {
                q: packed.as_ptr().add(b * CHUNK * COLS),
                dst: dst.add(c),
                rows,
                r,
                n,
                lanes: masks::<3>(c, cols.end),
                first,
            };
            let mut j = 0;
            while j + 8 <= r {
                tile_m::<8>(&block, p.add(i * r + j), j);
                j += 8;
            }
            for j in j..r {
                tile_m::<1>(&block, p.add(i * r + j), j);
            }
        }
    }

    /// A column block of [`rank_m`] and a chunk of its rows: the block's packed rows of `q`
    /// (`rows × COLS`) and its first column of `dst`.
    struct Block {
        q: *const f32,
        dst: *mut f32,
        rows: usize,
        r: usize,
        /// Columns of `dst`.
        n: usize,
        lanes: [__mmask16; 3],
        /// The first chunk: `dst` holds nothing yet.
        first: bool,
    }

    /// Adds the chunk's share to rows `j..j + J` of the block's `dst`; `p` points at column
    /// j of the chunk's first row of `p`.
    #[inline(always)]
    unsafe fn tile_m<const J: usize>(b: &Block, p: *const f32, j: usize) {
        let out = |jj: usize, v: usize| b.dst.add((j + jj) * b.n + 16 * v);
        let mut acc: [[__m512; 3]; J] = std::array::from_fn(|jj| {
            std::array::from_fn(|v| match b.first {
                true => _mm512_setzero_ps(),
                false => _mm512_maskz_loadu_ps(b.lanes[v], out(jj, v)),
            })
        });
        for i in 0..b.rows {
            let qrow = b.q.add(i * COLS);
            let qv: [__m512; 3] = std::array::from_fn(|v| _mm512_loadu_ps(qrow.add(16 * v)));
            let prow = p.add(i * b.r);
            for (jj, acc) in acc.iter_mut().enumerate() {
                let s = _mm512_set1_ps(*prow.add(jj));
                for (a, q) in acc.iter_mut().zip(qv) {
                    *a = _mm512_fmadd_ps(s, q, *a);
                }
            }
        }
        for (jj, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                _mm512_mask_storeu_ps(out(jj, v), b.lanes[v], *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::model::test_values as seq;

    /// `a[m, k] · b[k, n]` by the textbook loop, in f64.
    fn plain(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut c = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    c[i * n + j] += a[i * k + l] as f64 * b[l * n + j] as f64;
                }
            }
        }
        c
    }

    fn close(got: &[f32], want: &[f64], k: usize, what: &str) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let tol = 1e-5 * (k as f64).sqrt() * 4.0;
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{what}: element {i}: {g} vs {w}"
            );
        }
    }

    /// The AVX-512 kernels where the CPU has them, and the gemm path always.
    fn paths() -> Vec<bool> {
        if avx512() {
            vec![true, false]
        } else {
            vec![false]
        }
    }

    /// (simd, accumulate, masked) for every path.
    fn cases3() -> Vec<(bool, bool, bool)> {
        let mut v = Vec::new();
        for simd in paths() {
            for accumulate in [false, true] {
                for masked in [false, true] {
                    v.push((simd, accumulate, masked));
                }
            }
        }
        v
    }

    /// Shapes around the tiles' edges: row counts not multiples of the tile, column counts
    /// not multiples of 16, ranks 8, 16 and 64 and odd ones; each also large enough to split
    /// over the threads.
    const SHAPES: [(usize, usize, usize); 7] = [
        (13, 24, 8),
        (37, 100, 16),
        (1, 5, 1),
        (25, 33, 64),
        (300, 517, 16),
        (61, 130, 21),
        (1030, 260, 16),
    ];

    #[test]
    fn rank_n_matches_the_plain_product() {
        for (m, k, r) in SHAPES {
            let (p, q) = (seq(m * k, 1), seq(k * r, 2));
            let want: Vec<f64> = plain(&p, &q, m, k, r).iter().map(|v| v * 0.5).collect();
            for simd in paths() {
                let mut got = vec![f32::NAN; m * r];
                rank_n_on(simd, &mut got, &p, &q, [m, k, r], 0.5);
                close(&got, &want, k, &format!("rank_n {m}×{k}×{r}, simd {simd}"));
            }
        }
    }

    #[test]
    fn rank_k_matches_the_plain_product() {
        for (m, n, r) in SHAPES {
            let (p, q, mask, d0) = (seq(m * r, 3), seq(r * n, 4), seq(m * n, 5), seq(m * n, 6));
            let prod = plain(&p, &q, m, r, n);
            for (simd, accumulate, masked) in cases3() {
                {
                    let mut got = if accumulate {
                        d0.clone()
                    } else {
                        vec![f32::NAN; m * n]
                    };
                    let mask = masked.then_some(mask.as_slice());
                    rank_k_on(simd, &mut got, &p, &q, [m, r, n], 1.5, accumulate, mask);
                    let want: Vec<f64> = (0..m * n)
                        .map(|i| {
                            let v = 1.5 * prod[i] * mask.map_or(1.0, |k| k[i] as f64);
                            v + if accumulate { d0[i] as f64 } else { 0.0 }
                        })
                        .collect();
                    let what = format!(
                        "rank_k {m}×{r}×{n}, simd {simd}, accumulate {accumulate}, mask {masked}"
                    );
                    close(&got, &want, r, &what);
                }
            }
        }
    }

    #[test]
    fn rank_m_matches_the_plain_product() {
        for (m, n, r) in SHAPES {
            let (p, q, mask) = (seq(m * r, 7), seq(m * n, 8), seq(m * n, 9));
            let pt = transpose(&p, m, r);
            for (simd, _, masked) in cases3().into_iter().filter(|c| !c.1) {
                let qm: Vec<f32> = match masked {
                    true => q.iter().zip(&mask).map(|(a, b)| a * b).collect(),
                    false => q.clone(),
                };
                let mut got = vec![f32::NAN; r * n];
                rank_m_on(
                    simd,
                    &mut got,
                    &p,
                    &q,
                    [m, r, n],
                    2.0,
                    masked.then_some(&mask),
                );
                let want: Vec<f64> = plain(&pt, &qm, r, m, n).iter().map(|v| v * 2.0).collect();
                let what = format!("rank_m {m}×{r}×{n}, simd {simd}, mask {masked}");
                close(&got, &want, m, &what);
            }
        }
    }

    #[test]
    fn transpose_swaps_rows_and_columns() {
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        assert_eq!(transpose(&a, 2, 3), [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }
}
