//! Differentiable building blocks with hand-written backward passes.
//!
//! candle's fast kernels for softmax, RMSNorm and RoPE have no backward, and its matmul
//! backward always computes the right operand's gradient (a full weight gradient for every
//! frozen weight). Each op here computes its forward with the fast no-grad kernels on detached
//! inputs and attaches its own backward through [`with_grad`], so gradients flow only where
//! they are needed.

use super::fused_attn::Fused;
use super::kernels::{self, Kernels};
use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};

fn copy_storage<S>(s: &S, l: &Layout) -> Result<(S, Shape)>
where
    S: BackendStorage,
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element of the fresh buffer is written by copy_strided_src just below.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok((dst, l.shape().clone()))
}

type Backward = Box<dyn Fn(&Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync>;

/// The forward value is `arg1` copied; the backward sends gradients to `arg2` and `arg3` only.
struct Inject {
    backward: Backward,
}

impl CustomOp3 for Inject {
    fn name(&self) -> &'static str {
        "inject-grad2"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        copy_storage(s1, l1)
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        copy_storage(s1, l1)
    }

    #[cfg(feature = "metal")]
    fn metal_fwd(
        &self,
        s1: &candle_core::MetalStorage,
        l1: &Layout,
        _: &candle_core::MetalStorage,
        _: &Layout,
        _: &candle_core::MetalStorage,
        _: &Layout,
    ) -> Result<(candle_core::MetalStorage, Shape)> {
        copy_storage(s1, l1)
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (a, b) = (self.backward)(grad)?;
        Ok((None, a, b))
    }
}

type Backward3 =
    Box<dyn Fn(&Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> + Send + Sync>;

/// The forward value is the held CPU tensor, copied; the backward sends gradients to all three
/// inputs (whose own values the op does not read).
struct Held {
    value: Tensor,
    backward: Backward3,
}

impl CustomOp3 for Held {
    fn name(&self) -> &'static str {
        "held-grad3"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, layout) = self.value.storage_and_layout();
        match &*storage {
            candle_core::Storage::Cpu(s) => copy_storage(s, layout),
            _ => candle_core::bail!("held-grad3: the value is not on the CPU"),
        }
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        (self.backward)(grad)
    }
}

/// [`with_grad`] for a CPU value computed from three inputs.
pub fn with_grad3(
    value: Tensor,
    inputs: [&Tensor; 3],
    backward: impl Fn(&Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)>
        + Send
        + Sync
        + 'static,
) -> Result<Tensor> {
    let [a, b, c] = inputs;
    if !a.track_op() && !b.track_op() && !c.track_op() {
        return Ok(value);
    }
    a.apply_op3(
        b,
        c,
        Held {
            value,
            backward: Box::new(backward),
        },
    )
}

/// [`with_grad`] for a value computed from two inputs.
pub fn with_grad2(
    value: Tensor,
    a: &Tensor,
    b: &Tensor,
    backward: impl Fn(&Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> + Send + Sync + 'static,
) -> Result<Tensor> {
    if !a.track_op() && !b.track_op() {
        return Ok(value);
    }
    value.detach().apply_op3(
        a,
        b,
        Inject {
            backward: Box::new(backward),
        },
    )
}

/// Returns `value` (computed without a graph) wired into the graph of `input`: the gradient
/// reaching the result is turned into `input`'s gradient by `backward`. When `input` is not
/// part of a graph this is free.
pub fn with_grad(
    value: Tensor,
    input: &Tensor,
    backward: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync + 'static,
) -> Result<Tensor> {
    with_grad2(value, input, input, move |g| Ok((Some(backward(g)?), None)))
}

/// `x · wᵀ` for a weight `w` `[out, in]`: the backward gives `x` its gradient, and `w` its
/// own only when `w` is a variable (full-parameter training); a frozen base costs nothing more.
pub fn linear_frozen(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = w.dims2()?;
    let dims = x.dims().to_vec();
    let n = x.elem_count() / in_dim;
    let x2 = x.detach().reshape((n, in_dim))?;
    let y = x2.matmul(&w.t()?)?;
    let mut out_dims = dims.clone();
    *out_dims.last_mut().expect("x has a last dim") = out_dim;
    let y = y.reshape(out_dims)?;
    let wd = w.detach();
    if !w.track_op() {
        return with_grad(y, x, move |g| {
            g.reshape((n, out_dim))?
                .matmul(&wd)?
                .reshape(dims.as_slice())
        });
    }
    let x_tracks = x.track_op();
    with_grad2(y, x, w, move |g| {
        let g2 = g.reshape((n, out_dim))?;
        let dw = g2.t()?.matmul(&x2)?;
        let dx = if x_tracks {
            Some(g2.matmul(&wd)?.reshape(dims.as_slice())?)
        } else {
            None
        };
        Ok((dx, Some(dw)))
    })
}

/// RMSNorm: `x / rms(x) * w1` computed in f32 (`w1` is the effective weight in f32: Gemma's
/// `1 + weight`, or the weight itself), returned in `x`'s dtype. `w1` gets a gradient when it
/// is in a graph (full-parameter training).
pub fn rms_norm(x: &Tensor, w1: &Tensor, eps: f64, kern: Kernels) -> Result<Tensor> {
    let (x32, y) = rms_norm_value(x, w1, eps)?;
    let (w1d, dtype) = (w1.detach(), x.dtype());
    if !w1.track_op() {
        return with_grad(y, x, move |g| {
            rms_norm_grad(&x32, &w1d, eps, g, dtype, kern)
        });
    }
    with_grad2(y, x, w1, move |g| {
        let dw = rms_norm_weight_grad(&x32, eps, g)?;
        Ok((
            Some(rms_norm_grad(&x32, &w1d, eps, g, dtype, kern)?),
            Some(dw),
        ))
    })
}

/// `d rms_norm(x, w1) / d w1 · g`: the normalised rows times `g`, summed over rows (f32).
fn rms_norm_weight_grad(x32: &Tensor, eps: f64, g: &Tensor) -> Result<Tensor> {
    let h = x32.dim(D::Minus1)?;
    let rstd = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xhat = x32.broadcast_mul(&rstd)?;
    (xhat * g.to_dtype(DType::F32)?)?.reshape(((), h))?.sum(0)
}

/// `h + rms_norm(x, w1)`: a Gemma post-norm and the residual add after it, as one graph node
/// (the add's node would zero-fill and add two full-size gradients for nothing: `dh = g`).
pub fn add_rms_norm(
    h: &Tensor,
    x: &Tensor,
    w1: &Tensor,
    eps: f64,
    kern: Kernels,
) -> Result<Tensor> {
    if w1.track_op() {
        // Full-parameter training: the norm's weight needs its gradient too.
        return h + rms_norm(x, w1, eps, kern)?;
    }
    let (x32, y) = rms_norm_value(x, w1, eps)?;
    let out = (h.detach() + y)?;
    let (w1, dtype) = (w1.clone(), x.dtype());
    with_grad2(out, h, x, move |g| {
        Ok((
            Some(g.clone()),
            Some(rms_norm_grad(&x32, &w1, eps, g, dtype, kern)?),
        ))
    })
}

/// `x` as contiguous f32 (kept for the backward) and its norm, without a graph.
fn rms_norm_value(x: &Tensor, w1: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let x32 = x.detach().to_dtype(DType::F32)?.contiguous()?;
    let y = candle_nn::ops::rms_norm(&x32, w1, eps as f32)?.to_dtype(x.dtype())?;
    Ok((x32, y))
}

/// `d rms_norm(x) / dx · g`, in `dtype`.
fn rms_norm_grad(
    x32: &Tensor,
    w1: &Tensor,
    eps: f64,
    g: &Tensor,
    dtype: DType,
    kern: Kernels,
) -> Result<Tensor> {
    if dtype == DType::F32 && kern.fuse(x32) && kern.fuse(g) {
        if let Some(dx) = kernels::rms_norm_backward(x32, w1, g, eps)? {
            return Ok(dx);
        }
    }
    rms_norm_grad_composed(x32, w1, eps, g)?.to_dtype(dtype)
}

/// [`rms_norm_grad`] as candle ops (the reference path), in f32.
fn rms_norm_grad_composed(x32: &Tensor, w1: &Tensor, eps: f64, g: &Tensor) -> Result<Tensor> {
    let rstd = (x32.sqr()?.mean_keepdim(D::Minus1)? + eps)?
        .sqrt()?
        .recip()?;
    let xhat = x32.broadcast_mul(&rstd)?;
    let gw = g.to_dtype(DType::F32)?.broadcast_mul(w1)?;
    let dot = (&gw * &xhat)?.mean_keepdim(D::Minus1)?;
    (gw - xhat.broadcast_mul(&dot)?)?.broadcast_mul(&rstd)
}

/// Rotary embedding (rotate-half layout) of `x` `[B, H, T, D]` with `cos`/`sin` `[T, D/2]`;
/// the backward rotates the gradient back (`sin` → `-sin`).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, neg_sin: &Tensor) -> Result<Tensor> {
    let y = candle_nn::rotary_emb::rope(&x.detach().contiguous()?, cos, sin)?;
    let (cos, neg_sin) = (cos.clone(), neg_sin.clone());
    with_grad(y, x, move |g| {
        candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &neg_sin)
    })
}

/// The shape of one attention call: batch, time, query and key/value heads, head size.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    pub b: usize,
    pub t: usize,
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
}

impl Heads {
    /// `[B·T, n·D]` → `[B, n, T, D]`, contiguous.
    pub(super) fn split(self, y: &Tensor, n: usize) -> Result<Tensor> {
        y.reshape((self.b, self.t, n, self.d))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// `[B, n, T, D]` → `[B·T, n·D]`.
    pub(super) fn merge(self, y: &Tensor, n: usize) -> Result<Tensor> {
        y.reshape((self.b, n, self.t, self.d))?
            .transpose(1, 2)?
            .reshape((self.b * self.t, n * self.d))
    }
}

/// The rotary tables of the positions attended, `[T, D/2]` each: cos, sin and −sin.
pub struct RopeTables<'a> {
    pub cos: &'a Tensor,
    pub sin: &'a Tensor,
    pub neg_sin: &'a Tensor,
}

/// Scaled, soft-capped, masked attention over `qh` `[B, nh, T, D]`, `kh` and `vh`
/// `[B, nkv, S, D]` (already rotated): `[B, nh, T, D]`. The `nh / nkv` query heads that share
/// a key/value head are stacked along the time axis, so keys are never copied.
pub fn attend(
    qh: &Tensor,
    kh: &Tensor,
    vh: &Tensor,
    bias: &Tensor,
    scale: f64,
    cap: Option<f64>,
    kern: Kernels,
) -> Result<Tensor> {
    let (b, nh, t, d) = qh.dims4()?;
    let nkv = kh.dim(1)?;
    let qg = qh.reshape((b, nkv, nh / nkv * t, d))?;
    let scores = (qg.matmul(&kh.t()?)? * scale)?;
    let p = capped_masked_softmax(&scores.to_dtype(DType::F32)?, cap, bias, kern)?;
    p.to_dtype(vh.dtype())?.matmul(vh)?.reshape((b, nh, t, d))
}

/// Everything an [`attention`] pass takes besides `q`, `k` and `v`: the head shape, the RoPE
/// tables, the additive bias (0 allowed, large negative masked), the score scale, the
/// optional soft-cap and the kernels.
#[derive(Clone, Copy)]
pub struct Attention<'a> {
    pub shape: Heads,
    pub rope_tables: &'a RopeTables<'a>,
    pub bias: &'a Tensor,
    pub scale: f64,
    pub cap: Option<f64>,
    /// The caller's promise that query `i` never sees a key past position `i` (the bias masks
    /// them): the fused kernels then skip those keys instead of computing and masking them.
    /// None: the bias alone says what is masked.
    pub causal: Option<Causal>,
    pub kern: Kernels,
}

/// Causal attention: query `i` sees keys `j ≤ i` at most, and with a sliding window only those
/// with `j + window > i` (positions within the call; the bias masks the same keys and more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Causal {
    pub window: Option<usize>,
}

/// Self-attention of a whole sequence from the projections `q` `[B·T, nh·D]`, `k` and `v`
/// `[B·T, nkv·D]`: heads split, RoPE, [`attend`], heads merged, `[B·T, nh·D]`.
///
/// With the fused kernels (CPU, f32) all of it is one graph node with the backward written out (two dozen
/// candle nodes otherwise, each zero-filling and adding its inputs' gradients: at the `tiny`
/// shape that bookkeeping costs more than the arithmetic).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, a: &Attention) -> Result<Tensor> {
    if !fusable(q, a) {
        return attention_composed(q, k, v, a);
    }
    let (out, f) = Fused::forward(&q.detach(), &k.detach(), &v.detach(), a)?;
    with_grad3(out, [q, k, v], move |dout| {
        let (dq, dk, dv) = f.backward(dout)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    })
}

fn fusable(q: &Tensor, a: &Attention) -> bool {
    a.kern.fuse(q) && a.bias.rank() == 4 && a.kern.fuse(a.bias)
}

/// Attention of sequences gathered out of packed rows (several examples a row), in groups:
/// each group is `b` sequences of `t` positions, with its own [`Attention`] and the packed row
/// each of its `b·t` positions reads (`[b·t]` u32).
pub struct Gathered<'a> {
    pub groups: Vec<(&'a Tensor, Attention<'a>)>,
    /// For each packed row, its place in the groups' positions laid end to end, or their
    /// total: a row of zeros (padding).
    pub back: &'a Tensor,
}

/// [`attention`] of the groups of `g` on packed rows `q` `[N, nh·D]`, `k` and `v` `[N, nkv·D]`:
/// `[N, nh·D]`, zeros at the rows no group puts back.
///
/// With the fused kernels the gathers are inside the one graph node: the backward puts each
/// group's gradients back with one indexed add a tensor (taking the rows out with candle's
/// index_select instead costs a full copy of the packed gradient per group and tensor).
pub fn attention_gathered(q: &Tensor, k: &Tensor, v: &Tensor, g: &Gathered) -> Result<Tensor> {
    let width = q.dim(1)?;
    let zero_row = |w: usize| Tensor::zeros((1, w), q.dtype(), q.device());
    if !g.groups.iter().all(|(_, a)| fusable(q, a)) {
        let mut outs = Vec::with_capacity(g.groups.len() + 1);
        for (take, a) in &g.groups {
            let pick = |x: &Tensor| x.index_select(take, 0);
            outs.push(attention_composed(&pick(q)?, &pick(k)?, &pick(v)?, a)?);
        }
        outs.push(zero_row(width)?);
        return Tensor::cat(&outs, 0)?.index_select(g.back, 0);
    }
    let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
    let mut outs = Vec::with_capacity(g.groups.len() + 1);
    let mut fused = Vec::with_capacity(g.groups.len());
    for (take, a) in &g.groups {
        let pick = |x: &Tensor| x.index_select(take, 0);
        let (out, f) = Fused::forward(&pick(&qd)?, &pick(&kd)?, &pick(&vd)?, a)?;
        outs.push(out);
        fused.push(f);
    }
    let rows: Vec<usize> = outs.iter().map(|o| o.dim(0)).collect::<Result<_>>()?;
    outs.push(zero_row(width)?);
    let out = Tensor::cat(&outs, 0)?.index_select(g.back, 0)?;
    let takes: Vec<&Tensor> = g.groups.iter().map(|(t, _)| *t).collect();
    let take = Tensor::cat(&takes, 0)?;
    let back = g.back.clone();
    let packed = q.dim(0)?;
    let (kw, vw) = (k.dim(1)?, v.dim(1)?);
    let total: usize = rows.iter().sum();
    with_grad3(out, [q, k, v], move |dout| {
        // Each group position's output gradient; the padding's goes to the extra row.
        let d_all = Tensor::zeros((total + 1, width), dout.dtype(), dout.device())?
            .index_add(&back, dout, 0)?;
        let (mut dq, mut dk, mut dv) = (Vec::new(), Vec::new(), Vec::new());
        let mut at = 0;
        for (f, &n) in fused.iter().zip(&rows) {
            let (a, b, c) = f.backward(&d_all.narrow(0, at, n)?)?;
            dq.push(a);
            dk.push(b);
            dv.push(c);
            at += n;
        }
        // Positions past an example's end read its last token: their gradients are zeros
        // (no output read, keys masked), so adding them changes nothing.
        let put = |parts: Vec<Tensor>, w: usize| -> Result<Tensor> {
            Tensor::zeros((packed, w), dout.dtype(), dout.device())?.index_add(
                &take,
                &Tensor::cat(&parts, 0)?,
                0,
            )
        };
        Ok((
            Some(put(dq, width)?),
            Some(put(dk, kw)?),
            Some(put(dv, vw)?),
        ))
    })
}

/// [`attention`] as a composition of candle ops and the ops above (the reference path; the
/// softmax inside may still be fused when `kern` allows).
fn attention_composed(q: &Tensor, k: &Tensor, v: &Tensor, a: &Attention) -> Result<Tensor> {
    let Heads { nh, nkv, .. } = a.shape;
    let RopeTables { cos, sin, neg_sin } = a.rope_tables;
    let qh = rope(&a.shape.split(q, nh)?, cos, sin, neg_sin)?;
    let kh = rope(&a.shape.split(k, nkv)?, cos, sin, neg_sin)?;
    let v = a.shape.split(v, nkv)?;
    a.shape
        .merge(&attend(&qh, &kh, &v, a.bias, a.scale, a.cap, a.kern)?, nh)
}

/// Attention probabilities: `softmax(cap · tanh(s / cap) + bias)` over the last dim, in f32.
/// `bias` holds 0 for allowed and a large negative number for masked positions; it takes no
/// gradient.
pub fn capped_masked_softmax(
    s: &Tensor,
    cap: Option<f64>,
    bias: &Tensor,
    kern: Kernels,
) -> Result<Tensor> {
    if s.rank() == 4 && kern.fuse(s) && kern.fuse(bias) {
        let s_in = s.detach();
        if let Some(y) = kernels::capped_softmax_forward(&s_in, cap, bias)? {
            let y_saved = y.clone();
            return with_grad(y, s, move |g| {
                kernels::capped_softmax_backward(&s_in, &y_saved, g, cap)?.ok_or_else(|| {
                    candle_core::Error::Msg("capped softmax backward: not CPU f32".into())
                })
            });
        }
    }
    let s_in = s.detach();
    let capped = match cap {
        Some(c) => ((&s_in / c)?.tanh()? * c)?,
        None => s_in.clone(),
    };
    let y = candle_nn::ops::softmax_last_dim(&capped.broadcast_add(bias)?)?;
    let y_saved = y.clone();
    with_grad(y, s, move |g| {
        let gy = (g * &y_saved)?;
        let mut ds = (&gy - y_saved.broadcast_mul(&gy.sum_keepdim(D::Minus1)?)?)?;
        if let Some(c) = cap {
            let t = (&s_in / c)?.tanh()?;
            ds = (ds * (1.0 - t.sqr()?)?)?;
        }
        Ok(ds)
    })
}

/// GeGLU: `gelu_tanh(gate) · up` (or exact GELU), with one fused backward for both inputs.
pub fn geglu(gate: &Tensor, up: &Tensor, exact: bool, kern: Kernels) -> Result<Tensor> {
    let (g, u) = (gate.detach(), up.detach());
    if !exact && kern.fuse(&g) {
        if let Some(y) = kernels::geglu_forward(&g, &u)? {
            return with_grad2(y, gate, up, move |dy| {
                let (dg, du) = kernels::geglu_backward(&g, &u, dy)?
                    .ok_or_else(|| candle_core::Error::Msg("geglu backward: not CPU f32".into()))?;
                Ok((Some(dg), Some(du)))
            });
        }
    }
    let act = if exact { g.gelu_erf()? } else { g.gelu()? };
    let y = (&act * &u)?;
    with_grad2(y, gate, up, move |dy| {
        let dact = if exact {
            gelu_erf_grad(&g)?
        } else {
            gelu_tanh_grad(&g)?
        };
        Ok((Some((dy * &u)?.mul(&dact)?), Some(dy.mul(&act)?)))
    })
}

/// SwiGLU: `silu(gate) · up`, one backward for both inputs (candle ops on every device).
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let (g, u) = (gate.detach(), up.detach());
    let act = g.silu()?;
    let y = (&act * &u)?;
    with_grad2(y, gate, up, move |dy| {
        // d silu(x)/dx = σ(x) (1 + x (1 − σ(x))).
        let sig = candle_nn::ops::sigmoid(&g)?;
        let dact = (&sig * (&g * (1.0 - &sig)?)?.affine(1.0, 1.0)?)?;
        Ok((Some((dy * &u)?.mul(&dact)?), Some(dy.mul(&act)?)))
    })
}

/// d/dx of `0.5 x (1 + tanh(k0 (x + k1 x³)))`.
fn gelu_tanh_grad(x: &Tensor) -> Result<Tensor> {
    let (k0, k1) = ((2.0 / std::f64::consts::PI).sqrt(), 0.044715);
    let x2 = x.sqr()?;
    let t = ((x * (x2.affine(k1, 1.0)?))? * k0)?.tanh()?;
    let left = ((&t + 1.0)? * 0.5)?;
    let right = ((x * 0.5)? * (1.0 - t.sqr()?)?)?.mul(&(x2.affine(3.0 * k1, 1.0)? * k0)?)?;
    left + right
}

/// d/dx of `x Φ(x)`: `Φ(x) + x φ(x)`.
fn gelu_erf_grad(x: &Tensor) -> Result<Tensor> {
    let cdf = ((x / std::f64::consts::SQRT_2)?.erf()? + 1.0)? * 0.5;
    let pdf = ((x.sqr()? * -0.5)?.exp()? * (1.0 / (2.0 * std::f64::consts::PI).sqrt()))?;
    cdf? + (x * pdf)?
}

/// Soft-capping `cap · tanh(x / cap)` without a graph (used where no gradient is needed).
pub fn softcap(x: &Tensor, cap: Option<f64>) -> Result<Tensor> {
    match cap {
        Some(c) => (x / c)?.tanh()? * c,
        None => Ok(x.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// Central finite differences of `f` (a scalar function of `x`) against autograd, in f32
    /// (the fused CPU kernels) and in f64 (the candle-op path other devices take).
    fn check_grad(x0: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) {
        check_grad_in(x0, &f, DType::F32, 2e-3);
        check_grad_in(&x0.to_dtype(DType::F64).unwrap(), &f, DType::F64, 1e-6);
    }

    fn check_grad_in(x0: &Tensor, f: &impl Fn(&Tensor) -> Result<Tensor>, dtype: DType, tol: f64) {
        let x = Var::from_tensor(x0).unwrap();
        let y = f(x.as_tensor()).unwrap();
        let grads = y.backward().unwrap();
        let g = grads.get(&x).expect("x has a gradient");
        let g = g
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let flat = x0
            .flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let eps = if dtype == DType::F64 { 1e-5 } else { 1e-3 };
        for i in 0..flat.len() {
            let eval = |d: f64| {
                let mut v = flat.clone();
                v[i] += d;
                let t = Tensor::from_vec(v, x0.shape(), x0.device())
                    .unwrap()
                    .to_dtype(dtype)
                    .unwrap();
                f(&t)
                    .unwrap()
                    .to_dtype(DType::F64)
                    .unwrap()
                    .to_scalar::<f64>()
                    .unwrap()
            };
            let num = (eval(eps) - eval(-eps)) / (2.0 * eps);
            assert!(
                (num - g[i]).abs() < tol * (1.0 + num.abs()),
                "{dtype:?} elem {i}: numeric {num} vs autograd {}",
                g[i]
            );
        }
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// A fixed random projection so that every output element matters to the scalar.
    fn weigh(y: &Tensor, seed: u64) -> Result<Tensor> {
        y.mul(&randn(y.dims(), seed).to_dtype(y.dtype())?)?
            .sum_all()
    }

    #[test]
    fn geglu_gradient_matches_finite_differences() {
        let up = (randn(&[3, 5], 21) * 2.0).unwrap();
        for exact in [false, true] {
            check_grad(&(randn(&[3, 5], 20) * 3.0).unwrap(), |g| {
                weigh(
                    &geglu(g, &up.to_dtype(g.dtype())?, exact, Kernels::Fused)?,
                    22,
                )
            });
            check_grad(&up, |u| {
                let g = (randn(&[3, 5], 20) * 3.0)?.to_dtype(u.dtype())?;
                weigh(&geglu(&g, u, exact, Kernels::Fused)?, 22)
            });
        }
    }

    #[test]
    fn swiglu_gradient_matches_finite_differences() {
        let up = (randn(&[3, 5], 24) * 2.0).unwrap();
        check_grad(&(randn(&[3, 5], 25) * 3.0).unwrap(), |g| {
            weigh(&swiglu(g, &up.to_dtype(g.dtype())?)?, 26)
        });
        check_grad(&up, |u| {
            let g = (randn(&[3, 5], 25) * 3.0)?.to_dtype(u.dtype())?;
            weigh(&swiglu(&g, u)?, 26)
        });
    }

    #[test]
    fn fused_kernels_match_candle_ops() {
        let g = (randn(&[4, 300], 30) * 4.0).unwrap();
        let u = randn(&[4, 300], 31);
        let fused = geglu(&g, &u, false, Kernels::Fused).unwrap();
        let plain = (g.gelu().unwrap() * &u).unwrap();
        let d = crate::model::max_abs_diff(&fused, &plain);
        assert!(d < 1e-5, "geglu differs by {d}");
        let s = (randn(&[2, 2, 3, 7], 32) * 40.0).unwrap();
        let bias = Tensor::new(&[0f32, 0., -1e30, 0., 0., 0., -1e30], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 7))
            .unwrap()
            .broadcast_as((1, 1, 3, 7))
            .unwrap()
            .contiguous()
            .unwrap();
        let fused = capped_masked_softmax(&s, Some(50.0), &bias, Kernels::Fused).unwrap();
        let capped = ((&s / 50.0).unwrap().tanh().unwrap() * 50.0).unwrap();
        let plain =
            candle_nn::ops::softmax_last_dim(&capped.broadcast_add(&bias).unwrap()).unwrap();
        let d = crate::model::max_abs_diff(&fused, &plain);
        assert!(d < 1e-6, "softmax differs by {d}");
        let (x, g) = (
            (randn(&[5, 3000], 33) * 3.0).unwrap(),
            randn(&[5, 3000], 34),
        );
        let w1 = (randn(&[3000], 35) + 1.0).unwrap();
        let fused = rms_norm_grad(&x, &w1, 1e-6, &g, DType::F32, Kernels::Fused).unwrap();
        let plain = rms_norm_grad_composed(&x, &w1, 1e-6, &g).unwrap();
        let d = crate::model::max_abs_diff(&fused, &plain);
        assert!(d < 1e-5, "RMSNorm backward differs by {d}");
    }

    #[test]
    fn linear_frozen_gradient_matches_finite_differences() {
        let w = randn(&[5, 3], 1);
        check_grad(&randn(&[2, 4, 3], 2), |x| {
            weigh(&linear_frozen(x, &w.to_dtype(x.dtype())?)?, 3)
        });
    }

    #[test]
    fn rms_norm_gradient_matches_finite_differences() {
        let w1 = (randn(&[6], 4) + 1.0).unwrap();
        // Gemma's norm computes in f32 whatever the input dtype: checked in f32 only.
        check_grad_in(
            &randn(&[3, 6], 5),
            &|x: &Tensor| weigh(&rms_norm(x, &w1, 1e-6, Kernels::Fused)?, 6),
            DType::F32,
            2e-3,
        );
    }

    #[test]
    fn add_rms_norm_gradient_matches_finite_differences() {
        let w1 = (randn(&[6], 4) + 1.0).unwrap();
        let h = randn(&[3, 6], 40);
        let x = randn(&[3, 6], 41);
        check_grad_in(
            &x,
            &|x: &Tensor| weigh(&add_rms_norm(&h, x, &w1, 1e-6, Kernels::Fused)?, 6),
            DType::F32,
            2e-3,
        );
        check_grad_in(
            &h,
            &|h: &Tensor| weigh(&add_rms_norm(h, &x, &w1, 1e-6, Kernels::Fused)?, 6),
            DType::F32,
            2e-3,
        );
    }

    /// The RoPE tables (cos, sin, −sin) and the causal bias `[b, 1, 2·t, t]` of a test
    /// attention with 2 query heads a key head: batch 1's key 3 and keys from `pad` on are
    /// padding, and keys out of the `window` are masked.
    fn case_inputs(
        (b, t, d): (usize, usize, usize),
        pad: usize,
        window: Option<usize>,
    ) -> Result<([Tensor; 3], Tensor)> {
        let ang = (Tensor::arange(0f32, (t * d / 2) as f32, &Device::Cpu)? * 0.37)?
            .reshape((t, d / 2))?;
        let (cos, sin) = (ang.cos()?, ang.sin()?);
        let neg_sin = sin.neg()?;
        let mut bias = vec![0f32; b * 2 * t * t];
        for (i, x) in bias.iter_mut().enumerate() {
            let (row, key) = ((i / t) % t, i % t);
            let padding = i / (2 * t * t) == 1 && (key == 3 || key >= pad);
            if key > row || window.is_some_and(|w| key + w <= row) || padding {
                *x = -1e30;
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, 2 * t, t), &Device::Cpu)?;
        Ok(([cos, sin, neg_sin], bias))
    }

    /// Attention of `q` `[B·T, nh·D]`, `k`, `v` `[B·T, nkv·D]` with GQA (4 query heads, 2
    /// key/value heads), a soft-cap and a causal bias with one padded key; fused or composed.
    fn attention_case(q: &Tensor, k: &Tensor, v: &Tensor, fused: bool) -> Result<Tensor> {
        let (b, t, d) = (2, 5, 4);
        let shape = Heads {
            b,
            t,
            nh: 4,
            nkv: 2,
            d,
        };
        let ([cos, sin, neg_sin], bias) = case_inputs((b, t, d), t, None)?;
        let tables = RopeTables {
            cos: &cos,
            sin: &sin,
            neg_sin: &neg_sin,
        };
        let a = Attention {
            shape,
            rope_tables: &tables,
            bias: &bias,
            scale: 0.5,
            cap: Some(3.0),
            causal: Some(Causal { window: None }),
            kern: Kernels::Reference,
        };
        if fused {
            attention(
                q,
                k,
                v,
                &Attention {
                    kern: Kernels::Fused,
                    ..a
                },
            )
        } else {
            attention_composed(q, k, v, &a)
        }
    }

    /// The fused attention computed in causal tiles (16 positions, so 37 makes a short last
    /// tile; with a window of 10 the last tile starts past the first keys) equals the one
    /// computed over the whole score square, value and the three gradients, and the composed
    /// ops' value; with and without a soft-cap, with padded keys.
    #[test]
    fn causal_tiles_equal_the_whole_square() {
        let (b, t, d) = (2, 37, 8);
        let shape = Heads {
            b,
            t,
            nh: 4,
            nkv: 2,
            d,
        };
        let q = (randn(&[b * t, 4 * d], 60) * 2.0).unwrap();
        let k = (randn(&[b * t, 2 * d], 61) * 2.0).unwrap();
        let v = randn(&[b * t, 2 * d], 62);
        let dout = randn(&[b * t, 4 * d], 63);
        for window in [None, Some(10)] {
            let ([cos, sin, neg_sin], bias) = case_inputs((b, t, d), 30, window).unwrap();
            let tables = RopeTables {
                cos: &cos,
                sin: &sin,
                neg_sin: &neg_sin,
            };
            for cap in [Some(2.0), None] {
                let whole = Attention {
                    shape,
                    rope_tables: &tables,
                    bias: &bias,
                    scale: 0.35,
                    cap,
                    causal: None,
                    kern: Kernels::Fused,
                };
                let tiled = Attention {
                    causal: Some(Causal { window }),
                    ..whole
                };
                let (o0, f0) = Fused::forward(&q, &k, &v, &whole).unwrap();
                let (o1, f1) = Fused::forward_tiled(&q, &k, &v, &tiled, 16).unwrap();
                let (g0, g1) = (f0.backward(&dout).unwrap(), f1.backward(&dout).unwrap());
                let composed = attention_composed(&q, &k, &v, &whole).unwrap();
                let pairs = [
                    ("value", &o0, &o1),
                    ("value (composed)", &composed, &o1),
                    ("dq", &g0.0, &g1.0),
                    ("dk", &g0.1, &g1.1),
                    ("dv", &g0.2, &g1.2),
                ];
                for (what, x, y) in pairs {
                    let diff = crate::model::max_abs_diff(x, y);
                    assert!(
                        diff < 2e-5,
                        "window {window:?}, cap {cap:?}: {what} by {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn fused_attention_matches_finite_differences_and_the_composition() {
        let qkv = [
            (randn(&[10, 16], 50) * 2.0).unwrap(),
            (randn(&[10, 8], 51) * 2.0).unwrap(),
            randn(&[10, 8], 52),
        ];
        let with = |i: usize, x: &Tensor, fused: bool| {
            let mut a = qkv.clone();
            a[i] = x.clone();
            weigh(&attention_case(&a[0], &a[1], &a[2], fused)?, 53)
        };
        for (i, x0) in qkv.iter().enumerate() {
            // candle's rope kernel has no f64: checked in f32.
            check_grad_in(x0, &|x: &Tensor| with(i, x, true), DType::F32, 2e-3);
            // Value and autograd gradient equal those of the composed ops.
            let grad = |fused: bool| {
                let x = Var::from_tensor(x0).unwrap();
                let y = with(i, x.as_tensor(), fused).unwrap();
                let g = y.backward().unwrap().get(&x).unwrap().clone();
                (y, g)
            };
            let ((y1, g1), (y2, g2)) = (grad(true), grad(false));
            let dy = crate::model::max_abs_diff(&y1, &y2);
            let dg = crate::model::max_abs_diff(&g1, &g2);
            assert!(
                dy < 1e-4 && dg < 1e-4,
                "input {i}: value by {dy}, gradient by {dg}"
            );
        }
    }

    #[test]
    fn rope_gradient_matches_finite_differences() {
        let cos = randn(&[3, 2], 7).cos().unwrap();
        let sin = randn(&[3, 2], 7).sin().unwrap();
        let neg = sin.neg().unwrap();
        // candle's rope kernel takes f32, f16 and bf16.
        check_grad_in(
            &randn(&[1, 2, 3, 4], 8),
            &|x: &Tensor| weigh(&rope(x, &cos, &sin, &neg)?, 9),
            DType::F32,
            2e-3,
        );
    }

    #[test]
    fn softmax_gradient_matches_finite_differences() {
        let bias = Tensor::new(&[[0f32, -1e30, 0.0, 0.0]], &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 1, 4))
            .unwrap();
        for cap in [None, Some(1.5)] {
            check_grad(&(randn(&[2, 1, 3, 4], 10) * 3.0).unwrap(), |x| {
                weigh(
                    &capped_masked_softmax(x, cap, &bias.to_dtype(x.dtype())?, Kernels::Fused)?,
                    11,
                )
            });
        }
    }

    #[test]
    fn rope_matches_the_slow_reference() {
        let cos = randn(&[3, 2], 7).cos().unwrap();
        let sin = randn(&[3, 2], 7).sin().unwrap();
        let x = randn(&[1, 2, 3, 4], 8);
        let neg = sin.neg().unwrap();
        let a = rope(&x, &cos, &sin, &neg).unwrap();
        let b = candle_nn::rotary_emb::rope_slow(&x, &cos, &sin).unwrap();
        let d = crate::model::max_abs_diff(&a, &b);
        assert!(d < 1e-6);
    }

    #[test]
    fn frozen_linear_leaves_no_weight_gradient() {
        let w = randn(&[5, 3], 1);
        let x = Var::from_tensor(&randn(&[4, 3], 2)).unwrap();
        let grads = weigh(&linear_frozen(x.as_tensor(), &w).unwrap(), 3)
            .unwrap()
            .backward()
            .unwrap();
        let shapes: Vec<Vec<usize>> = grads
            .get_ids()
            .map(|id| grads.get_id(*id).unwrap().dims().to_vec())
            .collect();
        assert!(
            !shapes.iter().any(|s| s == &[5, 3] || s == &[3, 5]),
            "{shapes:?}"
        );
        // The detector is real: plain autograd does store a weight-shaped gradient.
        let plain = weigh(&x.as_tensor().matmul(&w.t().unwrap()).unwrap(), 3)
            .unwrap()
            .backward()
            .unwrap();
        assert!(plain
            .get_ids()
            .any(|id| plain.get_id(*id).unwrap().dims() == [3, 5]));
    }
}
