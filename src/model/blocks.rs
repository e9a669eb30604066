//! The building blocks every family is made of, written once: RMSNorm with either weight
//! convention, RoPE with scaling, attention with optional soft-cap, sliding window and q/k
//! norms, and the gated MLP (GeGLU or SwiGLU). The LoRA projection they use is
//! [`super::lora::LoraLinear`].

use super::config::{Activation, NormWeight, RopeSpec};
use super::cpu_gemm;
use super::kernels::Kernels;
use super::lora::{LoraLinear, Mode};
use super::ops;
use super::Result;
use candle_core::{DType, Device, Tensor};

/// An RMSNorm: the effective weight in f32 (`1 + w` for Gemma, `w` otherwise) and the
/// checkpoint's weight as loaded, so that exports write it back unchanged.
pub(super) struct Norm {
    w1: Tensor,
    stored: Tensor,
    convention: NormWeight,
}

impl Norm {
    /// `w` is the stored weight in f32.
    pub fn load(w: Tensor, convention: NormWeight) -> Result<Self> {
        let w1 = match convention {
            NormWeight::OnePlus => (&w + 1.0)?,
            NormWeight::Plain => w.clone(),
        };
        Ok(Norm {
            w1,
            stored: w,
            convention,
        })
    }

    pub fn forward(&self, x: &Tensor, eps: f64, kern: Kernels) -> Result<Tensor> {
        Ok(ops::rms_norm(x, &self.effective()?, eps, kern)?)
    }

    /// `h + norm(x)`: a post-norm and the residual add after it.
    pub fn add_forward(&self, h: &Tensor, x: &Tensor, eps: f64, kern: Kernels) -> Result<Tensor> {
        Ok(ops::add_rms_norm(h, x, &self.effective()?, eps, kern)?)
    }

    /// The effective weight; formed anew from a trainable stored weight, so that its gradient
    /// reaches the variable (and weight decay acts on the stored weight, as in torch).
    fn effective(&self) -> Result<Tensor> {
        if !self.stored.is_variable() {
            return Ok(self.w1.clone());
        }
        Ok(match self.convention {
            NormWeight::OnePlus => (&self.stored + 1.0)?,
            NormWeight::Plain => self.stored.clone(),
        })
    }

    /// Makes the stored weight a variable (full-parameter training) and returns it.
    pub fn make_trainable(&mut self) -> Result<candle_core::Var> {
        let v = candle_core::Var::from_tensor(&self.stored)?;
        self.stored = v.as_tensor().clone();
        Ok(v)
    }

    /// The weight as the checkpoint stores it (f32).
    pub fn stored(&self) -> &Tensor {
        &self.stored
    }
}

/// Rotary position embedding: inverse frequencies, tables made for the positions a pass needs
/// (a 128k context would otherwise keep hundreds of MB of tables per RoPE kind).
pub(super) struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    pub fn new(spec: &RopeSpec, head_dim: usize) -> Self {
        // As transformers: inverse frequencies and angles in f32, then cast to the model dtype.
        let inv_freq = spec
            .base_inv_freq(head_dim)
            .iter()
            .zip(spec.divisors(head_dim))
            .map(|(f, d)| f / d)
            .collect();
        Self { inv_freq }
    }

    /// cos, sin and −sin of positions `offset..offset + t`, `[t, head_dim / 2]` each.
    pub fn tables(
        &self,
        offset: usize,
        t: usize,
        dtype: DType,
        dev: &Device,
    ) -> Result<[Tensor; 3]> {
        self.make(offset..offset + t, &[t], dtype, dev)
    }

    /// cos, sin and −sin of each row's own positions (`positions[r][i]`: the position of row
    /// r's i-th query), `[B, T, head_dim / 2]` each; every row has the same length.
    pub fn tables_for(
        &self,
        positions: &[Vec<u32>],
        dtype: DType,
        dev: &Device,
    ) -> Result<[Tensor; 3]> {
        let t = positions.first().map_or(0, Vec::len);
        if let Some(r) = positions.iter().find(|r| r.len() != t) {
            return Err(super::ModelError::Invalid(format!(
                "RoPE positions: rows of {t} and {} positions",
                r.len()
            )));
        }
        let flat = positions.iter().flatten().map(|&p| p as usize);
        self.make(flat, &[positions.len(), t], dtype, dev)
    }

    fn make(
        &self,
        positions: impl Iterator<Item = usize>,
        lead: &[usize],
        dtype: DType,
        dev: &Device,
    ) -> Result<[Tensor; 3]> {
        let half = self.inv_freq.len();
        let n: usize = lead.iter().product();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in positions {
            for f in &self.inv_freq {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        let shape = [lead, &[half]].concat();
        let cos = Tensor::from_vec(cos, shape.as_slice(), dev)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, shape.as_slice(), dev)?.to_dtype(dtype)?;
        let neg_sin = sin.neg()?;
        Ok([cos, sin, neg_sin])
    }
}

/// The keys and values an attention layer has seen, for generation.
#[derive(Clone)]
pub(super) struct LayerCache {
    k: Tensor,
    v: Tensor,
    /// Absolute position of the first cached key (sliding layers drop old keys).
    start: usize,
}

impl LayerCache {
    /// The cache of the rows `rows` (a batch's sequences that are still decoding), without
    /// the keys before `first` (the slots no remaining row has a real token in).
    pub fn select(&self, rows: &Tensor, first: usize) -> Result<Self> {
        let drop = first.saturating_sub(self.start).min(self.k.dim(2)?);
        let keep = self.k.dim(2)? - drop;
        let pick = |x: &Tensor| -> Result<Tensor> {
            Ok(x.narrow(2, drop, keep)?
                .contiguous()?
                .index_select(rows, 0)?)
        };
        Ok(Self {
            k: pick(&self.k)?,
            v: pick(&self.v)?,
            start: self.start + drop,
        })
    }

    /// One-row caches as the cache of a batch: row r's keys sit `shifts[r]` slots to the right
    /// of its own positions (its left padding) and every row ends at the same slot; the slots
    /// before a row's first key are zeros (the batch masks them).
    pub fn stack(rows: &[&LayerCache], shifts: &[usize]) -> Result<Self> {
        let span = |c: &LayerCache, s: usize| -> Result<(usize, usize)> {
            Ok((c.start + s, c.start + s + c.k.dim(2)?))
        };
        let spans = rows
            .iter()
            .zip(shifts)
            .map(|(c, &s)| span(c, s))
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
        for (c, s) in rows.iter().zip(&spans) {
            k.push(pad(&c.k, s.0 - first)?);
            v.push(pad(&c.v, s.0 - first)?);
        }
        Ok(Self {
            k: Tensor::cat(&k, 0)?,
            v: Tensor::cat(&v, 0)?,
            start: first,
        })
    }

    pub fn device(&self) -> Device {
        self.k.device().clone()
    }
}

/// What an attention layer is, besides its weights.
pub(super) struct AttnShape {
    pub nh: usize,
    pub nkv: usize,
    pub d: usize,
    /// Multiplies the scores (`query_pre_attn_scalar^-1/2` for Gemma).
    pub scale: f64,
    /// Soft-cap of the scores.
    pub cap: Option<f64>,
    /// The window of a sliding layer.
    pub window: Option<usize>,
    pub eps: f64,
}

/// What an attention call needs from its pass.
pub(super) struct AttnCall<'a> {
    pub b: usize,
    pub t: usize,
    /// Absolute position of the first query.
    pub offset: usize,
    /// cos, sin, −sin of the queries' positions, for this layer's RoPE.
    pub rope: &'a [Tensor; 3],
    /// The additive bias for keys from `key_start`, `s` of them (causal, window, padding).
    pub bias: &'a dyn Fn(usize, usize) -> Result<Tensor>,
    pub kern: Kernels,
    /// Packed rows: where each example's tokens are; attention then runs on `b` rows of `t`,
    /// one example each (None: the rows attend as they are).
    pub gather: Option<&'a Gather>,
}

/// How the examples of packed rows are taken out into rows of their own for attention, and
/// put back. Attention is the only place where tokens of a row meet, so computing it per
/// example is the block-diagonal mask without the masked blocks: each example sees only
/// itself, from position 0 (RoPE and sliding windows as if it were alone), and the work is
/// Σ len² instead of rows × row².
pub(super) struct Gather {
    /// For each (example, position) of the `[E, L]` layout, the packed token (`[E·L]` u32;
    /// past an example's end its last token, a key the mask hides and a query nobody reads).
    take: Tensor,
    /// For each packed token `[B·T]`, its place in the `[E·L]` layout, or `E·L` (a row of
    /// zeros) for the padding after a row's last example.
    back: Tensor,
}

impl Gather {
    /// From the examples' (row, first token, tokens) in packed rows of `t` tokens, `rows` of
    /// them: the gather and the per-example key masks of the `[E, L]` layout.
    pub fn new(
        examples: &[(usize, usize, usize)],
        rows: usize,
        t: usize,
        dev: &Device,
    ) -> Result<(Self, Vec<Vec<bool>>)> {
        if examples.is_empty() {
            return Err(super::ModelError::Invalid(
                "packed rows without an example".into(),
            ));
        }
        let l = examples.iter().map(|e| e.2).max().unwrap_or(0);
        let n = examples.len() * l;
        let mut take = Vec::with_capacity(n);
        let mut back = vec![n as u32; rows * t];
        let mut masks = Vec::with_capacity(examples.len());
        for (e, &(row, start, len)) in examples.iter().enumerate() {
            if len == 0 || row >= rows || start + len > t {
                return Err(super::ModelError::Invalid(format!(
                    "packed example {e}: {len} tokens from {start} in row {row} of {rows} × {t}"
                )));
            }
            for i in 0..l {
                let at = row * t + start + i.min(len - 1);
                take.push(at as u32);
                if i < len {
                    back[at] = (e * l + i) as u32;
                }
            }
            masks.push((0..l).map(|i| i < len).collect());
        }
        let take = Tensor::from_vec(take, n, dev)?;
        let back = Tensor::from_vec(back, rows * t, dev)?;
        Ok((Self { take, back }, masks))
    }

    /// `[B·T, ·]` → `[E·L, ·]`.
    fn take(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.index_select(&self.take, 0)?)
    }

    /// `[E·L, ·]` → `[B·T, ·]`, zeros at the padding.
    fn put_back(&self, y: &Tensor) -> Result<Tensor> {
        let zero = Tensor::zeros((1, y.dim(1)?), y.dtype(), y.device())?;
        Ok(Tensor::cat(&[y, &zero], 0)?.index_select(&self.back, 0)?)
    }
}

pub(super) struct Attention {
    pub q: LoraLinear,
    pub k: LoraLinear,
    pub v: LoraLinear,
    pub o: LoraLinear,
    /// RMSNorm of each query and key head before RoPE (Gemma-3).
    pub q_norm: Option<Norm>,
    pub k_norm: Option<Norm>,
}

impl Attention {
    /// `x` `[B·T, hidden]` → `[B·T, hidden]`; with a cache, keys and values are appended to it.
    pub fn forward(
        &self,
        x: &Tensor,
        s: &AttnShape,
        c: &AttnCall,
        cache: Option<&mut Option<LayerCache>>,
        mode: &mut Mode,
    ) -> Result<Tensor> {
        let (b, t, d) = (c.b, c.t, s.d);
        let (nh, nkv) = (s.nh, s.nkv);
        let q = head_norm(
            self.q.forward(x, c.kern, mode)?,
            nh,
            d,
            self.q_norm.as_ref(),
            s,
            c,
        )?;
        let k = head_norm(
            self.k.forward(x, c.kern, mode)?,
            nkv,
            d,
            self.k_norm.as_ref(),
            s,
            c,
        )?;
        let v = self.v.forward(x, c.kern, mode)?;
        let [cos, sin, neg_sin] = c.rope;
        let tables = ops::RopeTables { cos, sin, neg_sin };
        let Some(cache) = cache else {
            // The whole sequence at once (training, evaluation): one fused op where allowed.
            let (q, k, v) = match c.gather {
                Some(g) => (g.take(&q)?, g.take(&k)?, g.take(&v)?),
                None => (q, k, v),
            };
            let bias = (c.bias)(c.offset, t)?;
            let a = ops::Attention {
                shape: ops::Heads { b, t, nh, nkv, d },
                rope_tables: &tables,
                bias: &bias,
                scale: s.scale,
                cap: s.cap,
                kern: c.kern,
            };
            let o = ops::attention(&q, &k, &v, &a)?;
            let o = match c.gather {
                Some(g) => g.put_back(&o)?,
                None => o,
            };
            return self.o.forward(&o, c.kern, mode);
        };
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        let q = ops::rope(&q, cos, sin, neg_sin)?;
        let k = ops::rope(&k, cos, sin, neg_sin)?;
        let (k, v, key_start) = match cache.take() {
            Some(lc) => (
                Tensor::cat(&[&lc.k, &k], 2)?,
                Tensor::cat(&[&lc.v, &v], 2)?,
                lc.start,
            ),
            None => (k, v, c.offset),
        };
        // A sliding layer never looks further back than the window: drop older keys.
        let keep = match s.window {
            Some(w) => w.min(k.dim(2)?),
            None => k.dim(2)?,
        };
        let drop = k.dim(2)? - keep;
        *cache = Some(LayerCache {
            k: k.narrow(2, drop, keep)?,
            v: v.narrow(2, drop, keep)?,
            start: key_start + drop,
        });
        let bias = (c.bias)(key_start, k.dim(2)?)?;
        let o = ops::attend(&q, &k, &v, &bias, s.scale, s.cap, c.kern)?;
        let o = o.transpose(1, 2)?.reshape((b * t, nh * d))?;
        self.o.forward(&o, c.kern, mode)
    }
}

/// RMSNorm of each head of a projection `[B·T, n·D]` (rows of D), or the projection as is.
fn head_norm(
    y: Tensor,
    n: usize,
    d: usize,
    norm: Option<&Norm>,
    s: &AttnShape,
    c: &AttnCall,
) -> Result<Tensor> {
    let Some(norm) = norm else {
        return Ok(y);
    };
    let rows = y.dim(0)?;
    norm.forward(&y.reshape((rows * n, d))?, s.eps, c.kern)?
        .reshape((rows, n * d))
        .map_err(Into::into)
}

/// The gated feed-forward block: `down(act(gate(x)) · up(x))`.
pub(super) struct Mlp {
    pub gate: LoraLinear,
    pub up: LoraLinear,
    pub down: LoraLinear,
    pub activation: Activation,
}

impl Mlp {
    pub fn forward(&self, x: &Tensor, kern: Kernels, mode: &mut Mode) -> Result<Tensor> {
        let linears = [&self.gate, &self.up, &self.down];
        if self.activation == Activation::GeluTanh
            && kern.fuse(x)
            && linears
                .iter()
                .all(|l| kern.fuse(&l.weight) && !l.weight.track_op())
        {
            return self.forward_fused(x, mode);
        }
        let gate = self.gate.forward(x, kern, mode)?;
        let up = self.up.forward(x, kern, mode)?;
        let act = match self.activation {
            Activation::GeluTanh => ops::geglu(&gate, &up, false, kern)?,
            Activation::GeluErf => ops::geglu(&gate, &up, true, kern)?,
            Activation::Silu => ops::swiglu(&gate, &up)?,
        };
        self.down.forward(&act, kern, mode)
    }
}

impl Mlp {
    /// The GeGLU block as one graph node (f32 on the CPU), its backward written out: the
    /// three projections through gemm ([`LoraLinear::fused_forward`]), the fused GeGLU
    /// kernels between them, and `dx = dgate·W_gate + dup·W_up` accumulated by gemm. As
    /// separate nodes, every edge costs candle's gradient store a zero-filled buffer and an add
    /// (for the `[tokens, intermediate]` activations, 8 MB each at the `small` shape), and
    /// every node's output a copy.
    fn forward_fused(&self, x: &Tensor, mode: &mut Mode) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let (hidden, inter) = (self.gate.in_dim(), self.gate.out_dim());
        let n = x.elem_count() / hidden;
        let dev = x.device().clone();
        let x2 = x.detach().reshape((n, hidden))?.contiguous()?;
        // Dropout masks are drawn in the order of the separate layers: gate, up, down.
        let (g, gate) = self.gate.fused_forward(&x2, mode)?;
        let (u, up) = self.up.fused_forward(&x2, mode)?;
        let g = Tensor::from_vec(g, (n, inter), &dev)?;
        let u = Tensor::from_vec(u, (n, inter), &dev)?;
        let not_f32 = || candle_core::Error::Msg("GeGLU: not CPU f32".into());
        let act = super::kernels::geglu_forward(&g, &u)?.ok_or_else(not_f32)?;
        let (y, down) = self.down.fused_forward(&act, mode)?;
        let y = Tensor::from_vec(y, dims.as_slice(), &dev)?;
        if !mode.grad {
            return Ok(y);
        }
        // The adapters' `A` are inputs too, so that the backward runs even where `x` has no
        // graph (the first layer); their gradients stay in the layers' accumulators.
        let mut anchors = [&self.gate, &self.up, &self.down]
            .into_iter()
            .filter_map(|l| l.lora.as_ref().map(|l| l.a.as_tensor()))
            .chain(std::iter::repeat(x));
        let (a1, a2) = (anchors.next().unwrap_or(x), anchors.next().unwrap_or(x));
        let x_tracks = x.track_op();
        Ok(ops::with_grad3(y, [x, a1, a2], move |dy| {
            let dy = dy.contiguous()?;
            let mut dact = None;
            down.backward(&act, cpu_gemm::data(&dy)?.slice(), Some(&mut dact))?;
            let dact = dact.ok_or_else(|| candle_core::Error::Msg("MLP: no dact".into()))?;
            let dact = Tensor::from_vec(dact, (n, inter), &dev)?;
            let (dg, du) = super::kernels::geglu_backward(&g, &u, &dact)?.ok_or_else(not_f32)?;
            drop(dact);
            let mut dx = None;
            gate.backward(
                &x2,
                cpu_gemm::data(&dg)?.slice(),
                x_tracks.then_some(&mut dx),
            )?;
            up.backward(
                &x2,
                cpu_gemm::data(&du)?.slice(),
                x_tracks.then_some(&mut dx),
            )?;
            let dx = dx
                .map(|d| Tensor::from_vec(d, dims.as_slice(), &dev))
                .transpose()?;
            Ok((dx, None, None))
        })?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RopeScaling;

    #[test]
    fn linear_scaling_divides_the_frequencies() {
        let plain = Rope::new(
            &RopeSpec {
                theta: 100.0,
                scaling: RopeScaling::None,
            },
            8,
        );
        let scaled = Rope::new(
            &RopeSpec {
                theta: 100.0,
                scaling: RopeScaling::Linear { factor: 4.0 },
            },
            8,
        );
        // Position 8 with scaling is position 2 without.
        let dev = Device::Cpu;
        let a = scaled.tables(8, 1, DType::F32, &dev).unwrap();
        let b = plain.tables(2, 1, DType::F32, &dev).unwrap();
        for (x, y) in a.iter().zip(&b) {
            assert!(crate::model::max_abs_diff(x, y) < 1e-6);
        }
    }

    #[test]
    fn llama3_scaling_keeps_high_divides_low_and_blends_between() {
        let spec = |scaling| RopeSpec {
            theta: 10000.0,
            scaling,
        };
        let d = 16;
        let plain = spec(RopeScaling::None).base_inv_freq(d);
        let scaled = Rope::new(
            &spec(RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_max_position_embeddings: 64,
            }),
            d,
        )
        .inv_freq;
        // Wavelengths below 64 / 4 = 16 keep their frequency, above 64 / 1 are divided by 8.
        let mut kinds = [0; 3];
        for (p, s) in plain.iter().zip(&scaled) {
            let wavelen = 2.0 * std::f32::consts::PI / p;
            if wavelen < 16.0 {
                assert_eq!(s, p);
                kinds[0] += 1;
            } else if wavelen > 64.0 {
                assert_eq!(*s, p / 8.0);
                kinds[2] += 1;
            } else {
                assert!(*s < *p && *s > p / 8.0, "{s} vs {p}");
                kinds[1] += 1;
            }
        }
        assert!(kinds.iter().all(|&k| k > 0), "{kinds:?}");
    }

    /// The GeGLU block as one fused node against the separate nodes with candle's ops: value,
    /// `dx` and every adapter gradient, with and without dropout.
    #[test]
    fn fused_mlp_matches_the_reference() {
        use crate::model::lora::LoraConfig;
        use rand::{Rng, SeedableRng};
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let mut rand = |shape: &[usize], scale: f32| {
            let n = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-scale..scale)).collect();
            Tensor::from_vec(v, shape, &dev).unwrap()
        };
        let (n, hidden, inter) = (7, 12, 20);
        let weights = [
            rand(&[inter, hidden], 0.5),
            rand(&[inter, hidden], 0.5),
            rand(&[hidden, inter], 0.5),
        ];
        let (x0, gy) = (rand(&[n, hidden], 2.0), rand(&[n, hidden], 1.0));
        for dropout in [0.0, 0.2] {
            let run = |kern: Kernels| {
                let lin = |w: &Tensor, seed| {
                    let mut l = LoraLinear::new(w.clone());
                    let cfg = LoraConfig {
                        dropout,
                        ..Default::default()
                    };
                    l.attach(&cfg, &mut rand_chacha::ChaCha8Rng::seed_from_u64(seed))
                        .unwrap();
                    // A non-zero B, so that the adapters change the value and dx.
                    let lora = l.lora.as_ref().unwrap();
                    let b = (Tensor::ones(lora.b.dims(), DType::F32, &dev).unwrap() * 0.1).unwrap();
                    lora.b.set(&b).unwrap();
                    l
                };
                let mlp = Mlp {
                    gate: lin(&weights[0], 1),
                    up: lin(&weights[1], 2),
                    down: lin(&weights[2], 3),
                    activation: Activation::GeluTanh,
                };
                let x = candle_core::Var::from_tensor(&x0).unwrap();
                let y = mlp
                    .forward(x.as_tensor(), kern, &mut Mode::train(11))
                    .unwrap();
                let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
                let mut out = vec![y, grads.get(&x).unwrap().clone()];
                for l in [&mlp.gate, &mlp.up, &mlp.down] {
                    let (da, db) = l.take_grads().unwrap();
                    out.extend([da.unwrap(), db.unwrap()]);
                }
                out
            };
            let (fused, reference) = (run(Kernels::Fused), run(Kernels::Reference));
            for (i, (f, r)) in fused.iter().zip(&reference).enumerate() {
                let d = crate::model::max_abs_diff(f, r);
                assert!(d < 1e-4, "dropout {dropout}, output {i}: differs by {d}");
            }
        }
    }

    #[test]
    fn norm_conventions() {
        let w = Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap();
        let x = Tensor::new(&[[3f32, 4.0]], &Device::Cpu).unwrap();
        let rms = (12.5f32 + 1e-6).sqrt();
        for (conv, want) in [
            (NormWeight::OnePlus, [1.5 * 3.0 / rms, 0.5 * 4.0 / rms]),
            (NormWeight::Plain, [0.5 * 3.0 / rms, -0.5 * 4.0 / rms]),
        ] {
            let n = Norm::load(w.clone(), conv).unwrap();
            let y = n
                .forward(&x, 1e-6, Kernels::Fused)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            assert!((y[0][0] - want[0]).abs() < 1e-5 && (y[0][1] - want[1]).abs() < 1e-5);
            assert_eq!(n.stored().to_vec1::<f32>().unwrap(), vec![0.5, -0.5]);
        }
    }
}
