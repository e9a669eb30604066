//! f32 matrix products on the CPU straight through `gemm`, the library candle's own `matmul`
//! calls, for the fused kernels ([`super::Kernels::Fused`]). Three things candle's `matmul`
//! cannot do and the training step pays for on every product: its output is zero-filled
//! before the product overwrites it (a `memset` of every activation); a scale needs its own
//! pass; and a sum of two products (`x·Wᵀ + s·u·Bᵀ`, `g·W + du·A`) needs a third buffer and
//! an add pass. Here the output is written once, the scale is gemm's `beta`, and a second
//! product accumulates into the first (`read_dst`).

use candle_core::{CpuStorage, Result, Storage, Tensor};
use std::mem::MaybeUninit;
use std::ops::Deref;

/// A row-major f32 matrix, or the transpose of one (a strided view, no copy).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    /// Element strides between rows and between columns.
    rs: usize,
    cs: usize,
}

impl<'a> Mat<'a> {
    /// `data` as `rows × cols`, row-major.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "matrix data and shape");
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose, `cols × rows`, reading the same memory.
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst = [dst +] beta · lhs · rhs`, `dst` row-major `lhs.rows × rhs.cols`; with `accumulate`
/// the product is added to what `dst` holds.
pub(crate) fn gemm_into(dst: &mut [f32], lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    assert_eq!(dst.len(), lhs.rows * rhs.cols, "output shape");
    // SAFETY: the shapes and strides above keep every access inside the three slices.
    unsafe { gemm_raw(dst.as_mut_ptr(), lhs, rhs, beta, accumulate) }
}

/// `beta · lhs · rhs` in a fresh buffer, written once (no zero-fill).
pub(crate) fn gemm_new(lhs: Mat, rhs: Mat, beta: f32) -> Vec<f32> {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    let n = lhs.rows * rhs.cols;
    let mut dst = Vec::<f32>::with_capacity(n);
    // SAFETY: gemm writes all n elements without reading them (`read_dst` false), after which
    // they are initialised; the shapes keep the reads inside `lhs` and `rhs`.
    unsafe {
        gemm_raw(dst.as_mut_ptr(), lhs, rhs, beta, false);
        dst.set_len(n);
    }
    dst
}

/// `dst = [dst +] beta · lhs · rhs` on the calling thread only, for callers that spread
/// independent products over the threads themselves.
pub(crate) fn gemm_serial_into(dst: &mut [f32], lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    assert_eq!(dst.len(), lhs.rows * rhs.cols, "output shape");
    // SAFETY: the shapes and strides above keep every access inside the three slices.
    unsafe { gemm_with(dst.as_mut_ptr(), lhs, rhs, beta, accumulate, false) }
}

/// `beta · lhs · rhs` written into the uninitialised `dst` on the calling thread (no zero-fill):
/// `dst`, now initialised.
pub(crate) fn gemm_serial_uninit<'d>(
    dst: &'d mut [MaybeUninit<f32>],
    lhs: Mat,
    rhs: Mat,
    beta: f32,
) -> &'d mut [f32] {
    assert_eq!(lhs.cols, rhs.rows, "inner dimensions");
    assert_eq!(dst.len(), lhs.rows * rhs.cols, "output shape");
    // SAFETY: gemm writes every element of `dst` without reading it (`read_dst` false; an
    // empty product is zero-filled), so all of it is initialised after the call.
    unsafe {
        gemm_with(dst.as_mut_ptr().cast(), lhs, rhs, beta, false, false);
        &mut *(dst as *mut [MaybeUninit<f32>] as *mut [f32])
    }
}

unsafe fn gemm_raw(dst: *mut f32, lhs: Mat, rhs: Mat, beta: f32, accumulate: bool) {
    gemm_with(dst, lhs, rhs, beta, accumulate, true)
}

/// The gemm call; `threaded`: split the product over the compute threads.
unsafe fn gemm_with(
    dst: *mut f32,
    lhs: Mat,
    rhs: Mat,
    beta: f32,
    accumulate: bool,
    threaded: bool,
) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = if threads > 1 && threaded {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // An empty product is zero: leave an accumulated output as it is, zero a fresh one.
        if !accumulate {
            std::ptr::write_bytes(dst, 0, m * n);
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        n as isize,
        accumulate,
        lhs.data.as_ptr(),
        lhs.cs as isize,
        lhs.rs as isize,
        rhs.data.as_ptr(),
        rhs.cs as isize,
        rhs.rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        parallelism,
    );
}

/// The f32 data of a contiguous CPU tensor, borrowed for as long as the guard lives.
pub(crate) struct Data<G: Deref<Target = Storage>> {
    guard: G,
    start: usize,
    len: usize,
}

impl<G: Deref<Target = Storage>> Data<G> {
    pub fn slice(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.start..self.start + self.len],
            _ => unreachable!("checked in `data`"),
        }
    }
}

/// Borrows the data of `t`, which must be a contiguous f32 CPU tensor.
pub(crate) fn data(t: &Tensor) -> Result<Data<impl Deref<Target = Storage> + '_>> {
    if !t.is_contiguous() {
        candle_core::bail!("cpu_gemm: a strided tensor (make it contiguous first)");
    }
    let (guard, layout) = t.storage_and_layout();
    if !matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))) {
        candle_core::bail!("cpu_gemm: expected an f32 CPU tensor, got {:?}", t.dtype());
    }
    Ok(Data {
        start: layout.start_offset(),
        len: t.elem_count(),
        guard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn randn(rows: usize, cols: usize, seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-1.0..1.0))
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    #[test]
    fn products_match_candle_in_every_layout() {
        let (m, k, n) = (37, 19, 53);
        let a = randn(m, k, 1);
        let at = randn(k, m, 2);
        let b = randn(k, n, 3);
        let bt = randn(n, k, 4);
        let c0 = randn(m, n, 5);
        let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (va, vat, vb, vbt) = (vec(&a), vec(&at), vec(&b), vec(&bt));
        let cases = [
            (
                Mat::new(&va, m, k),
                Mat::new(&vb, k, n),
                a.clone(),
                b.clone(),
            ),
            (
                Mat::new(&vat, k, m).t(),
                Mat::new(&vb, k, n),
                at.t().unwrap(),
                b.clone(),
            ),
            (
                Mat::new(&va, m, k),
                Mat::new(&vbt, n, k).t(),
                a.clone(),
                bt.t().unwrap(),
            ),
            (
                Mat::new(&vat, k, m).t(),
                Mat::new(&vbt, n, k).t(),
                at.t().unwrap(),
                bt.t().unwrap(),
            ),
        ];
        for (i, (l, r, lt, rt)) in cases.into_iter().enumerate() {
            let want = (lt.matmul(&rt).unwrap() * 0.5).unwrap();
            let got = Tensor::from_vec(gemm_new(l, r, 0.5), (m, n), &Device::Cpu).unwrap();
            let d = crate::model::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "case {i}: {d}");
            // Accumulating adds to what the output held.
            let mut acc = vec(&c0);
            gemm_into(&mut acc, l, r, 0.5, true);
            let got = Tensor::from_vec(acc, (m, n), &Device::Cpu).unwrap();
            let d = crate::model::max_abs_diff(&got, &(&want + &c0).unwrap());
            assert!(d < 1e-5, "case {i} accumulated: {d}");
            // The one-thread versions compute the same.
            let mut fresh = vec![std::mem::MaybeUninit::uninit(); m * n];
            let got = gemm_serial_uninit(&mut fresh, l, r, 0.5).to_vec();
            let got = Tensor::from_vec(got, (m, n), &Device::Cpu).unwrap();
            let d = crate::model::max_abs_diff(&got, &want);
            assert!(d < 1e-5, "case {i} serial: {d}");
            let mut acc = vec(&c0);
            gemm_serial_into(&mut acc, l, r, 0.5, true);
            let got = Tensor::from_vec(acc, (m, n), &Device::Cpu).unwrap();
            let d = crate::model::max_abs_diff(&got, &(&want + &c0).unwrap());
            assert!(d < 1e-5, "case {i} serial accumulated: {d}");
        }
    }
}
