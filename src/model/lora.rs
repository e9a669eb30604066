//! LoRA: low-rank adapters on frozen linear layers, initialised and scaled as PEFT does.

use super::cpu_gemm::{self, gemm_into, gemm_new, Mat};
use super::kernels::Kernels;
use super::lowrank;
use super::ops;
use super::{ModelError, Result};
use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

/// A projection LoRA can adapt, named as PEFT names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    QProj,
    KProj,
    VProj,
    OProj,
    GateProj,
    UpProj,
    DownProj,
}

impl Target {
    pub const ALL: [Target; 7] = [
        Target::QProj,
        Target::KProj,
        Target::VProj,
        Target::OProj,
        Target::GateProj,
        Target::UpProj,
        Target::DownProj,
    ];

    /// The module name in Hugging Face checkpoints (`q_proj`, …).
    pub fn module(self) -> &'static str {
        match self {
            Target::QProj => "q_proj",
            Target::KProj => "k_proj",
            Target::VProj => "v_proj",
            Target::OProj => "o_proj",
            Target::GateProj => "gate_proj",
            Target::UpProj => "up_proj",
            Target::DownProj => "down_proj",
        }
    }

    /// `self_attn` or `mlp`.
    pub(crate) fn block(self) -> &'static str {
        match self {
            Target::QProj | Target::KProj | Target::VProj | Target::OProj => "self_attn",
            _ => "mlp",
        }
    }

    /// Accepts `q_proj` or the short `q`.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        Target::ALL
            .into_iter()
            .find(|t| t.module() == s || t.module().trim_end_matches("_proj") == s)
            .ok_or_else(|| {
                ModelError::Invalid(format!(
                    "unknown LoRA target `{s}`; expected any of q,k,v,o,gate,up,down (or q_proj, …)"
                ))
            })
    }
}

/// LoRA hyper-parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    pub dropout: f32,
    pub targets: Vec<Target>,
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            targets: Target::ALL.to_vec(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    /// `alpha / r`, or `alpha / sqrt(r)` with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn validate(&self) -> Result<()> {
        if self.r == 0 {
            return Err(ModelError::Invalid("LoRA rank r must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(ModelError::Invalid(format!(
                "LoRA dropout {} must be in [0, 1)",
                self.dropout
            )));
        }
        if self.targets.is_empty() {
            return Err(ModelError::Invalid(
                "LoRA needs at least one target module".into(),
            ));
        }
        Ok(())
    }
}

/// The trainable pair: `A` `[r, in]` and `B` `[out, r]`, always f32.
pub(crate) struct Lora {
    pub a: Var,
    pub b: Var,
    pub scale: f64,
    pub dropout: f32,
    /// Gradients of `A` and `B` summed over the backward passes since the last
    /// [`LoraLinear::take_grads`]: the layer computes them itself (see `forward`).
    grads: Arc<Mutex<(Option<Tensor>, Option<Tensor>)>>,
}

/// Seeded dropout masks, so that a resumed run draws the same masks as an uninterrupted one.
pub struct DropoutRng {
    seed: u64,
    counter: u64,
}

impl DropoutRng {
    /// A stream for one micro-step; `key` identifies it (e.g. from the run seed and step).
    pub fn new(key: u64) -> Self {
        Self {
            seed: key,
            counter: 0,
        }
    }

    fn next_seed(&mut self) -> u64 {
        self.counter += 1;
        // SplitMix64 of (seed, counter): independent seeds for successive masks.
        let mut z = self.seed ^ self.counter.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A mask of `keep / (1 - p)` and zeros, f32.
    pub fn mask(&mut self, dims: &[usize], p: f32, device: &Device) -> Result<Tensor> {
        let seed = self.next_seed();
        let n: usize = dims.iter().product();
        let keep = 1.0 / (1.0 - p);
        if device.is_cpu() {
            return Ok(Tensor::from_vec(cpu_mask(seed, n, p, keep), dims, device)?);
        }
        // On accelerators the device generator, seeded per mask, avoids a host upload.
        device.set_seed(seed)?;
        let u = Tensor::rand(0f32, 1f32, dims, device)?;
        Ok((u.ge(p as f64)?.to_dtype(DType::F32)? * keep as f64)?)
    }
}

/// The CPU mask of `n` elements from ChaCha8 stream `seed`, one 32-bit word an element, in
/// chunks spread over the threads: each chunk seeks to its first word, so the mask is the one a
/// single sequential pass draws, whatever the thread count (a `small` training step draws ~30 M
/// of these).
fn cpu_mask(seed: u64, n: usize, p: f32, keep: f32) -> Vec<f32> {
    const CHUNK: usize = 1 << 15;
    let mut v = vec![0f32; n];
    v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_word_pos((c * CHUNK) as u128);
        for x in out {
            *x = if rng.random::<f32>() < p { 0.0 } else { keep };
        }
    });
    v
}

/// How a forward pass runs: whether it builds the graph for gradients, and the dropout masks
/// (training only).
pub struct Mode {
    pub grad: bool,
    pub dropout: Option<DropoutRng>,
    /// Projections of a few rows (a decoding step) may take [`super::matvec`] (CPU, f32; inference
    /// with the fused kernels).
    pub matvec: bool,
}

impl Mode {
    /// Inference and evaluation: no graph, no dropout.
    pub fn eval() -> Self {
        Self {
            grad: false,
            dropout: None,
            matvec: false,
        }
    }

    /// A decoding step with the kernels `kern`: [`Mode::eval`], and the projections take the
    /// matrix-vector kernel where the fused kernels run.
    pub fn decode(kern: super::Kernels) -> Self {
        Self {
            matvec: kern == super::Kernels::Fused,
            ..Self::eval()
        }
    }

    /// Training: gradients, and dropout masks drawn from the stream `dropout_key`.
    pub fn train(dropout_key: u64) -> Self {
        Self {
            grad: true,
            dropout: Some(DropoutRng::new(dropout_key)),
            matvec: false,
        }
    }

    /// Gradients without dropout (gradient checks).
    pub fn grad_only() -> Self {
        Self {
            grad: true,
            dropout: None,
            matvec: false,
        }
    }
}

/// What the fused backward of a [`LoraLinear`] keeps from its forward.
pub(crate) struct Saved {
    weight: Tensor,
    adapter: Option<SavedAdapter>,
}

struct SavedAdapter {
    /// `A` and `B` as the forward used them.
    a: Tensor,
    b: Tensor,
    /// `x̃·Aᵀ` `[n, r]`.
    u: Vec<f32>,
    mask: Option<Tensor>,
    scale: f32,
    grads: Arc<Mutex<(Option<Tensor>, Option<Tensor>)>>,
}

impl Saved {
    /// The backward of [`LoraLinear::fused_forward`] for the output gradient `g` `[n, out]`:
    /// adds the gradients of `A` and `B` to the layer's accumulators and, when `dx` is given,
    /// `g·W` plus the adapter's share to it (a fresh buffer when it is `None`; accumulated
    /// into by gemm otherwise, so two layers reading the same input need no add pass). The
    /// scale is folded into `du` and `dB`.
    pub(crate) fn backward(
        &self,
        x2: &Tensor,
        g: &[f32],
        dx: Option<&mut Option<Vec<f32>>>,
    ) -> candle_core::Result<()> {
        let (out_dim, in_dim) = self.weight.dims2()?;
        let n = x2.dim(0)?;
        let gm = Mat::new(g, n, out_dim);
        // The dropout mask on the adapter's input: dA and dx read it.
        let mask_data = (self.adapter.as_ref())
            .and_then(|s| s.mask.as_ref())
            .map(cpu_gemm::data)
            .transpose()?;
        let mask = mask_data.as_ref().map(|m| m.slice());
        let lora = match &self.adapter {
            Some(s) => {
                let r = s.a.dim(0)?;
                let mut du = vec![0f32; n * r];
                let b = cpu_gemm::data(&s.b)?;
                lowrank::rank_n(&mut du, g, b.slice(), [n, out_dim, r], s.scale);
                let mut dbt = vec![0f32; r * out_dim];
                lowrank::rank_m(&mut dbt, &s.u, g, [n, r, out_dim], s.scale, None);
                // dA = duᵀ·x̃, the dropout mask applied to x on the way.
                let mut da = vec![0f32; r * in_dim];
                let x = cpu_gemm::data(x2)?;
                lowrank::rank_m(&mut da, &du, x.slice(), [n, r, in_dim], 1.0, mask);
                let dev = x2.device();
                let (da, db) = (
                    Tensor::from_vec(da, (r, in_dim), dev)?,
                    Tensor::from_vec(lowrank::transpose(&dbt, r, out_dim), (out_dim, r), dev)?,
                );
                accumulate(&s.grads, da, db)?;
                Some((s, du, r))
            }
            None => None,
        };
        let Some(dx) = dx else {
            return Ok(());
        };
        let wd = cpu_gemm::data(&self.weight)?;
        let wm = Mat::new(wd.slice(), out_dim, in_dim);
        let dx = match dx {
            Some(d) => {
                gemm_into(d, gm, wm, 1.0, true);
                d
            }
            None => dx.insert(gemm_new(gm, wm, 1.0)),
        };
        let Some((s, du, r)) = lora else {
            return Ok(());
        };
        let a = cpu_gemm::data(&s.a)?;
        lowrank::rank_k(dx, &du, a.slice(), [n, r, in_dim], 1.0, true, mask);
        Ok(())
    }
}

/// A frozen linear layer `y = x Wᵀ`, optionally with a LoRA adapter `+ scale · x Aᵀ Bᵀ`.
pub(crate) struct LoraLinear {
    pub weight: Tensor,
    pub lora: Option<Lora>,
}

impl LoraLinear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight, lora: None }
    }

    pub(crate) fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub(crate) fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Attaches a fresh adapter: `A` Kaiming-uniform (PEFT's `a = sqrt(5)`, i.e. bound
    /// `1/sqrt(in)`), `B` zero.
    pub(crate) fn attach(&mut self, cfg: &LoraConfig, rng: &mut ChaCha8Rng) -> Result<()> {
        let (out_dim, in_dim) = (self.out_dim(), self.in_dim());
        let bound = 1.0 / (in_dim as f32).sqrt();
        let a: Vec<f32> = (0..cfg.r * in_dim)
            .map(|_| rng.random_range(-bound..bound))
            .collect();
        let dev = self.weight.device();
        let a = Tensor::from_vec(a, (cfg.r, in_dim), dev)?;
        let b = Tensor::zeros((out_dim, cfg.r), DType::F32, dev)?;
        self.set_lora(a, b, cfg.scale(), cfg.dropout)
    }

    /// Installs given `A`/`B` (e.g. from an adapter file), checking their shapes.
    pub(crate) fn set_lora(
        &mut self,
        a: Tensor,
        b: Tensor,
        scale: f64,
        dropout: f32,
    ) -> Result<()> {
        let (out_dim, in_dim) = (self.out_dim(), self.in_dim());
        let (r, a_in) = a.dims2()?;
        let (b_out, b_r) = b.dims2()?;
        if a_in != in_dim || b_out != out_dim || b_r != r {
            return Err(ModelError::Invalid(format!(
                "LoRA A {:?} / B {:?} do not fit a [{out_dim}, {in_dim}] weight (expected A [r, {in_dim}], B [{out_dim}, r])",
                a.dims(),
                b.dims()
            )));
        }
        let dev = self.weight.device();
        let a = Var::from_tensor(&a.to_dtype(DType::F32)?.to_device(dev)?)?;
        let b = Var::from_tensor(&b.to_dtype(DType::F32)?.to_device(dev)?)?;
        self.lora = Some(Lora {
            a,
            b,
            scale,
            dropout,
            grads: Arc::default(),
        });
        Ok(())
    }

    /// `x` `[…, in]` → `[…, out]`.
    ///
    /// The whole layer is one node of the gradient graph: its forward runs without a graph and
    /// its backward, written out below, gives `x` its gradient and adds those of `A` and `B` to
    /// the layer's own accumulators ([`LoraLinear::take_grads`]). candle's autograd would
    /// instead make a dozen nodes of it, each zero-filling and adding a full-size gradient.
    pub fn forward(&self, x: &Tensor, kern: Kernels, mode: &mut Mode) -> Result<Tensor> {
        let (out_dim, in_dim) = (self.out_dim(), self.in_dim());
        let dims = x.dims().to_vec();
        let n = x.elem_count() / in_dim;
        let mut out_dims = dims.clone();
        *out_dims.last_mut().expect("x has a last dim") = out_dim;
        let few = match mode.matvec && !mode.grad {
            true => super::matvec::matvec(&x.reshape((n, in_dim))?, &[&self.weight])?,
            false => None,
        };
        let Some(l) = &self.lora else {
            return match few {
                Some(mut y) => Ok(y.remove(0).reshape(out_dims)?),
                None => Ok(ops::linear_frozen(x, &self.weight)?),
            };
        };
        // The fused layer gives the frozen weight no gradient (full-parameter training has
        // no adapter anyway).
        if few.is_none() && kern.fuse(x) && kern.fuse(&self.weight) && !self.weight.track_op() {
            return self.forward_fused(x, l, mode);
        }
        let dtype = x.dtype();
        let x2 = x.detach().reshape((n, in_dim))?;
        let base = match few {
            Some(mut y) => y.remove(0),
            None => x2.matmul(&self.weight.t()?)?,
        };
        let mask = match (mode.dropout.as_mut(), l.dropout > 0.0 && mode.grad) {
            (Some(rng), true) => Some(rng.mask(&[n, in_dim], l.dropout, x.device())?),
            _ => None,
        };
        let (a, b) = (l.a.as_tensor().detach(), l.b.as_tensor().detach());
        let u = adapter_input(&x2, mask.as_ref())?.matmul(&a.t()?)?;
        let delta = (u.matmul(&b.t()?)? * l.scale)?;
        // As PEFT: the sum is formed in f32 and rounded once to the base dtype.
        let y = if dtype == DType::F32 {
            (base + delta)?
        } else {
            (base.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?
        };
        let y = y.reshape(out_dims)?;
        if !mode.grad {
            return Ok(y);
        }
        let (w, scale, grads, x_tracks) =
            (self.weight.clone(), l.scale, l.grads.clone(), x.track_op());
        // `A` (a variable) is the op's second input so that the backward always runs, even for
        // a first layer whose input has no graph; its gradient is kept here, not in candle's store.
        Ok(ops::with_grad2(y, x, l.a.as_tensor(), move |g| {
            let g2 = g.reshape((n, out_dim))?;
            let g32 = g2.to_dtype(DType::F32)?;
            let db = (g32.t()?.matmul(&u)? * scale)?;
            let du = (g32.matmul(&b)? * scale)?;
            let da = du.t()?.matmul(&adapter_input(&x2, mask.as_ref())?)?;
            accumulate(&grads, da, db)?;
            if !x_tracks {
                return Ok((None, None));
            }
            let mut dl = du.matmul(&a)?;
            if let Some(m) = &mask {
                dl = dl.mul(m)?;
            }
            let dx = (g2.matmul(&w)? + dl.to_dtype(dtype)?)?;
            Ok((Some(dx.reshape(dims.as_slice())?), None))
        })?)
    }

    /// [`LoraLinear::forward`] with the products written straight by `gemm` (f32 on the CPU,
    /// see [`LoraLinear::fused_forward`]), one graph node.
    fn forward_fused(&self, x: &Tensor, l: &Lora, mode: &mut Mode) -> Result<Tensor> {
        let (out_dim, in_dim) = (self.out_dim(), self.in_dim());
        let dims = x.dims().to_vec();
        let n = x.elem_count() / in_dim;
        let x2 = x.detach().reshape((n, in_dim))?.contiguous()?;
        let (y, saved) = self.fused_forward(&x2, mode)?;
        let mut out_dims = dims.clone();
        *out_dims.last_mut().expect("x has a last dim") = out_dim;
        let y = Tensor::from_vec(y, out_dims, x.device())?;
        if !mode.grad {
            return Ok(y);
        }
        let x_tracks = x.track_op();
        Ok(ops::with_grad2(y, x, l.a.as_tensor(), move |g| {
            let g = g.contiguous()?;
            let mut dx = None;
            let gs = cpu_gemm::data(&g)?;
            saved.backward(&x2, gs.slice(), x_tracks.then_some(&mut dx))?;
            Ok((
                dx.map(|d| Tensor::from_vec(d, dims.as_slice(), g.device()))
                    .transpose()?,
                None,
            ))
        })?)
    }

    /// The layer on rows `x2` `[n, in]` (contiguous f32 on the CPU), products straight through
    /// `gemm`: `y = x·Wᵀ`, then `scale · (x̃·Aᵀ)·Bᵀ` added into `y` by the call that forms it
    /// (x̃: `x` dropped out). Returns `y` `[n, out]` and what the backward needs.
    pub(crate) fn fused_forward(&self, x2: &Tensor, mode: &mut Mode) -> Result<(Vec<f32>, Saved)> {
        let (out_dim, in_dim) = (self.out_dim(), self.in_dim());
        let n = x2.dim(0)?;
        let w = self.weight.contiguous()?;
        let mut y = gemm_new(
            Mat::new(cpu_gemm::data(x2)?.slice(), n, in_dim),
            Mat::new(cpu_gemm::data(&w)?.slice(), out_dim, in_dim).t(),
            1.0,
        );
        let Some(l) = &self.lora else {
            return Ok((
                y,
                Saved {
                    weight: w,
                    adapter: None,
                },
            ));
        };
        let mask = match (mode.dropout.as_mut(), l.dropout > 0.0 && mode.grad) {
            (Some(rng), true) => Some(rng.mask(&[n, in_dim], l.dropout, x2.device())?),
            _ => None,
        };
        let (a, b) = (l.a.as_tensor().detach(), l.b.as_tensor().detach());
        let r = a.dim(0)?;
        let xin = adapter_input(x2, mask.as_ref())?.contiguous()?;
        // The rank-r kernels take `Aᵀ` and `Bᵀ` row-major: copies of r × in and out × r.
        let at = lowrank::transpose(cpu_gemm::data(&a)?.slice(), r, in_dim);
        let mut u = vec![0f32; n * r];
        let xs = cpu_gemm::data(&xin)?;
        lowrank::rank_n(&mut u, xs.slice(), &at, [n, in_dim, r], 1.0);
        let bt = lowrank::transpose(cpu_gemm::data(&b)?.slice(), out_dim, r);
        lowrank::rank_k(&mut y, &u, &bt, [n, r, out_dim], l.scale as f32, true, None);
        let adapter = Some(SavedAdapter {
            a,
            b,
            u,
            mask,
            scale: l.scale as f32,
            grads: l.grads.clone(),
        });
        Ok((y, Saved { weight: w, adapter }))
    }

    /// The gradients of `A` and `B` accumulated since the last call (None where no backward
    /// pass reached the layer), resetting the accumulators.
    pub(crate) fn take_grads(&self) -> Option<(Option<Tensor>, Option<Tensor>)> {
        self.lora
            .as_ref()
            .map(|l| std::mem::take(&mut *l.grads.lock().expect("LoRA gradients")))
    }

    /// Folds the adapter into the weight (`W + scale · B A`, in f32) and removes it.
    pub fn merge(&mut self) -> Result<()> {
        if let Some(l) = self.lora.take() {
            let dtype = self.weight.dtype();
            let delta = (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?;
            self.weight = (self.weight.to_dtype(DType::F32)? + delta)?.to_dtype(dtype)?;
        }
        Ok(())
    }
}

/// Adds one backward pass's `dA` and `dB` to a layer's accumulators.
fn accumulate(
    grads: &Mutex<(Option<Tensor>, Option<Tensor>)>,
    da: Tensor,
    db: Tensor,
) -> candle_core::Result<()> {
    let mut acc = grads.lock().expect("LoRA gradients");
    acc.0 = Some(match acc.0.take() {
        Some(s) => (s + da)?,
        None => da,
    });
    acc.1 = Some(match acc.1.take() {
        Some(s) => (s + db)?,
        None => db,
    });
    Ok(())
}

/// The adapters' input: `x` in f32, dropped out. Not kept for the backward but rebuilt there
/// from `x`, which the graph holds anyway, so a bf16 model keeps no f32 copies of its
/// activations (casting bf16 to f32 is exact).
fn adapter_input(x: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let t = x.to_dtype(DType::F32)?;
    match mask {
        Some(m) => t.mul(m),
        None => Ok(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_short_and_long_names() {
        assert_eq!(Target::parse("q").unwrap(), Target::QProj);
        assert_eq!(Target::parse("v_proj").unwrap(), Target::VProj);
        assert!(Target::parse("lm_head")
            .unwrap_err()
            .to_string()
            .contains("`lm_head`"));
    }

    #[test]
    fn scale_follows_rslora() {
        let mut c = LoraConfig {
            r: 16,
            alpha: 32.0,
            ..Default::default()
        };
        assert_eq!(c.scale(), 2.0);
        c.use_rslora = true;
        assert_eq!(c.scale(), 8.0);
    }

    #[test]
    fn init_is_peft_like_and_merge_equals_adapter() {
        let dev = Device::Cpu;
        let w = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((3, 4))
            .unwrap();
        let mut l = LoraLinear::new(w);
        let cfg = LoraConfig {
            r: 2,
            alpha: 4.0,
            dropout: 0.0,
            ..Default::default()
        };
        l.attach(&cfg, &mut ChaCha8Rng::seed_from_u64(0)).unwrap();
        let lora = l.lora.as_ref().unwrap();
        let a = lora
            .a
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(a.iter().all(|v| v.abs() <= 0.5) && a.iter().any(|v| *v != 0.0));
        assert_eq!(
            lora.b
                .as_tensor()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap(),
            0.0
        );
        lora.b
            .set(&Tensor::new(&[[1f32, 2.0], [0.5, -1.0], [3.0, 0.0]], &dev).unwrap())
            .unwrap();
        let x = Tensor::new(&[[1f32, -2.0, 0.5, 3.0]], &dev).unwrap();
        let with_adapter = l.forward(&x, Kernels::Fused, &mut Mode::eval()).unwrap();
        l.merge().unwrap();
        assert!(l.lora.is_none());
        let merged = l.forward(&x, Kernels::Fused, &mut Mode::eval()).unwrap();
        let d = crate::model::max_abs_diff(&with_adapter, &merged);
        assert!(d < 1e-5, "{d}");
    }

    /// The fused layer (gemm straight, CPU f32) against candle's ops: value, `dx`, `dA` and
    /// `dB`, with and without dropout (the same seeded masks in both).
    #[test]
    fn fused_layer_matches_the_reference_ops() {
        let dev = Device::Cpu;
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut rand = |shape: (usize, usize)| {
            let v: Vec<f32> = (0..shape.0 * shape.1)
                .map(|_| rng.random_range(-1.0..1.0))
                .collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        // Small, and large enough for the rank-r kernels to split over the threads.
        for ((n, fan_in, out, r), dropout) in [(13, 24, 17, 4), (300, 130, 70, 16)]
            .into_iter()
            .flat_map(|s| [(s, 0.0), (s, 0.3)])
        {
            let (w, x0, a, b, gy) = (
                rand((out, fan_in)),
                rand((n, fan_in)),
                rand((r, fan_in)),
                rand((out, r)),
                rand((n, out)),
            );
            let run = |kern: Kernels| {
                let mut l = LoraLinear::new(w.clone());
                l.set_lora(a.clone(), b.clone(), 1.5, dropout).unwrap();
                let x = Var::from_tensor(&x0).unwrap();
                let mut mode = Mode::train(9);
                let y = l.forward(x.as_tensor(), kern, &mut mode).unwrap();
                let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                let dx = grads.get(&x).unwrap().clone();
                let (da, db) = l.take_grads().unwrap();
                [y, dx, da.unwrap(), db.unwrap()]
            };
            let (fused, reference) = (run(Kernels::Fused), run(Kernels::Reference));
            for (i, (f, want)) in fused.iter().zip(&reference).enumerate() {
                let d = crate::model::max_abs_diff(f, want);
                let scale = crate::model::max_abs(want);
                assert!(
                    d < 1e-6 * scale.max(10.0),
                    "{n}×{fan_in}→{out}, r {r}, dropout {dropout}, output {i}: {d} (of {scale})"
                );
            }
        }
    }

    #[test]
    fn the_parallel_mask_is_the_sequential_stream() {
        let (n, p, keep) = (3 * (1 << 15) + 123, 0.3f32, 1.0 / 0.7f32);
        let mut rng = ChaCha8Rng::seed_from_u64(99);
        let want: Vec<f32> = (0..n)
            .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
            .collect();
        assert_eq!(cpu_mask(99, n, p, keep), want);
    }

    #[test]
    fn dropout_masks_are_seeded() {
        let m = |k| {
            DropoutRng::new(k)
                .mask(&[4, 8], 0.5, &Device::Cpu)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
        };
        assert_eq!(m(7), m(7));
        assert_ne!(m(7), m(8));
        assert!(m(7).iter().flatten().all(|v| *v == 0.0 || *v == 2.0));
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let dev = Device::Cpu;
        let mut l = LoraLinear::new(Tensor::zeros((3, 4), DType::F32, &dev).unwrap());
        let e = l
            .set_lora(
                Tensor::zeros((2, 5), DType::F32, &dev).unwrap(),
                Tensor::zeros((3, 2), DType::F32, &dev).unwrap(),
                1.0,
                0.0,
            )
            .unwrap_err();
        assert!(e.to_string().contains("do not fit a [3, 4] weight"), "{e}");
    }
}
