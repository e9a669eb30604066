//! The building blocks every family is made of, written once: RMSNorm with either weight
//! convention, RoPE with scaling, attention with optional soft-cap, sliding window and q/k
//! norms, and the gated MLP (GeGLU or SwiGLU). The LoRA projection they use is
//! [`super::lora::LoraLinear`].

use super::cache::{Keys, LayerCache};
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
    /// Packed rows: where each example's tokens are, and the RoPE tables and bias of each of
    /// the gather's groups; attention then runs per group (None: the rows attend as they are).
    pub gather: Option<(&'a Gather, &'a [GroupAttn<'a>])>,
}

/// The RoPE tables and the bias `[e, 1, groups·l, l]` of one group of a [`Gather`].
pub(super) struct GroupAttn<'a> {
    pub rope: &'a [Tensor; 3],
    pub bias: Tensor,
}

/// The fixed cost of one more attention group, in the unit of a group's cost (examples ×
/// positions², the scores computed per head): about what 20-odd candle ops a layer (forward
/// and backward, each a parallel dispatch and an allocation) cost against the score work of
/// an example of 128 tokens, on the CPU. Shorter examples are cheaper padded together than
/// attended one by one.
const GROUP_COST: usize = 128 * 128;

/// How the examples of packed rows are taken out into rows of their own for attention, and
/// put back. Attention is the only place where tokens of a row meet, so computing it per
/// example is the block-diagonal mask without the masked blocks: each example sees only
/// itself, from position 0 (RoPE and sliding windows as if it were alone).
///
/// Examples of similar length are laid out together: the examples sorted by length are cut
/// into groups (see [`length_groups`]), each group `[e, l]` (its `e` examples padded to its
/// longest, `l`), so the work is close to Σ len² rather than examples × longest².
pub(super) struct Gather {
    groups: Vec<Group>,
    /// For each packed token `[B·T]`, its place in the groups' layouts laid end to end, or
    /// their total (a row of zeros) for the padding after a row's last example.
    back: Tensor,
}

/// `e` examples of `l` positions.
pub(super) struct Group {
    pub e: usize,
    pub l: usize,
    /// Per example of the group, whether each of its `l` positions is a real token.
    pub masks: Vec<Vec<bool>>,
    /// For each (example, position), the packed token (`[e·l]` u32; past an example's end
    /// its last token, a key the mask hides and a query nobody reads).
    take: Tensor,
}

impl Gather {
    /// From the examples' (row, first token, tokens) in packed rows of `t` tokens, `rows` of
    /// them.
    pub fn new(
        examples: &[(usize, usize, usize)],
        rows: usize,
        t: usize,
        dev: &Device,
    ) -> Result<Self> {
        if examples.is_empty() {
            return Err(super::ModelError::Invalid(
                "packed rows without an example".into(),
            ));
        }
        for (e, &(row, start, len)) in examples.iter().enumerate() {
            if len == 0 || row >= rows || start + len > t {
                return Err(super::ModelError::Invalid(format!(
                    "packed example {e}: {len} tokens from {start} in row {row} of {rows} × {t}"
                )));
            }
        }
        let lengths: Vec<usize> = examples.iter().map(|e| e.2).collect();
        let mut groups = Vec::new();
        let mut back = vec![u32::MAX; rows * t];
        let mut placed = 0;
        for members in length_groups(&lengths, GROUP_COST) {
            let l = members.iter().map(|&e| lengths[e]).max().unwrap_or(0);
            let mut take = Vec::with_capacity(members.len() * l);
            let mut masks = Vec::with_capacity(members.len());
            for &e in &members {
                let (row, start, len) = examples[e];
                for i in 0..l {
                    let at = row * t + start + i.min(len - 1);
                    if i < len {
                        back[at] = (placed + take.len()) as u32;
                    }
                    take.push(at as u32);
                }
                masks.push((0..l).map(|i| i < len).collect());
            }
            placed += take.len();
            groups.push(Group {
                e: members.len(),
                l,
                masks,
                take: Tensor::from_vec(take, members.len() * l, dev)?,
            });
        }
        for b in &mut back {
            if *b == u32::MAX {
                *b = placed as u32;
            }
        }
        let back = Tensor::from_vec(back, rows * t, dev)?;
        Ok(Self { groups, back })
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Attention of `q` `[B·T, nh·D]`, `k`, `v` `[B·T, nkv·D]` in packed rows, group by
    /// group: `[B·T, nh·D]`, zeros at the padding.
    fn attention(
        &self,
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        groups: &[GroupAttn],
        s: &AttnShape,
        kern: Kernels,
    ) -> Result<Tensor> {
        let tables: Vec<ops::RopeTables> = groups
            .iter()
            .map(|a| {
                let [cos, sin, neg_sin] = a.rope;
                ops::RopeTables { cos, sin, neg_sin }
            })
            .collect();
        let gathered = ops::Gathered {
            groups: self
                .groups
                .iter()
                .zip(groups)
                .zip(&tables)
                .map(|((g, a), rope_tables)| {
                    let heads = (g.e, g.l, rope_tables, &a.bias);
                    (&g.take, call(heads, s, kern))
                })
                .collect(),
            back: &self.back,
        };
        Ok(ops::attention_gathered(q, k, v, &gathered)?)
    }
}

/// The examples (by index into `lengths`) cut into groups that minimise the attention work
/// Σ (examples × longest²) + `group_cost` a group: the examples sorted by length (longest
/// first, ties by index) and cut into runs, the best cut found by dynamic programming over
/// the sorted order (a best partition is always made of such runs).
fn length_groups(lengths: &[usize], group_cost: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
    let n = order.len();
    // best[j]: the least cost of the first j sorted examples, and where its last run starts.
    let mut best = vec![(0usize, 0usize); n + 1];
    for j in 1..=n {
        best[j] = (0..j)
            .map(|i| {
                let l = lengths[order[i]];
                (best[i].0 + (j - i) * l * l + group_cost, i)
            })
            .min()
            .expect("j ≥ 1");
    }
    let mut groups = Vec::new();
    let mut j = n;
    while j > 0 {
        let i = best[j].1;
        groups.push(order[i..j].to_vec());
        j = i;
    }
    groups.reverse();
    groups
}

/// The attention call of `b` rows of `t` positions each, with the rows' RoPE tables and bias.
fn call<'a>(
    (b, t, rope_tables, bias): (usize, usize, &'a ops::RopeTables<'a>, &'a Tensor),
    s: &AttnShape,
    kern: Kernels,
) -> ops::Attention<'a> {
    ops::Attention {
        shape: ops::Heads {
            b,
            t,
            nh: s.nh,
            nkv: s.nkv,
            d: s.d,
        },
        rope_tables,
        bias,
        scale: s.scale,
        cap: s.cap,
        // A whole sequence's own keys, masked causally by `CausalLm::attention_bias`.
        causal: Some(ops::Causal { window: s.window }),
        kern,
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
        let Some(cache) = cache else {
            // The whole sequence at once (training, evaluation): one fused op where allowed.
            let o = match c.gather {
                Some((g, groups)) => g.attention((&q, &k, &v), groups, s, c.kern)?,
                None => {
                    let bias = (c.bias)(c.offset, t)?;
                    let [cos, sin, neg_sin] = c.rope;
                    let tables = ops::RopeTables { cos, sin, neg_sin };
                    ops::attention(&q, &k, &v, &call((b, t, &tables, &bias), s, c.kern))?
                }
            };
            return self.o.forward(&o, c.kern, mode);
        };
        let [cos, sin, neg_sin] = c.rope;
        let heads = |y: Tensor, n: usize| -> Result<Tensor> {
            Ok(y.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?)
        };
        let (q, k, v) = (heads(q, nh)?, heads(k, nkv)?, heads(v, nkv)?);
        let q = ops::rope(&q, cos, sin, neg_sin)?;
        let k = ops::rope(&k, cos, sin, neg_sin)?;
        let Keys { k, v, start } = LayerCache::append(cache, &k, &v, c.offset, s.window)?;
        let bias = (c.bias)(start, k.dim(2)?)?;
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
        // A decoding step's few rows go through the layers' matrix-vector kernel instead
        // (gemm runs a one-row product on one thread).
        let rows = x.elem_count() / self.gate.in_dim();
        let matvec = mode.matvec && rows <= super::matvec::MAX_ROWS;
        if self.activation == Activation::GeluTanh
            && !matvec
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

    /// The groups are runs of the length-sorted examples, and the best ones: checked against
    /// every partition of the sorted order into runs.
    #[test]
    fn length_groups_are_the_cheapest_runs() {
        let cost = |lengths: &[usize], groups: &[Vec<usize>], k: usize| -> usize {
            let longest = |g: &Vec<usize>| g.iter().map(|&e| lengths[e]).max().unwrap();
            groups.iter().map(|g| g.len() * longest(g).pow(2) + k).sum()
        };
        let cases: [&[usize]; 4] = [
            &[23, 9, 17, 5, 30, 12, 8, 14, 200, 131, 140],
            &[535, 400, 300, 250, 220, 200, 150, 100, 60],
            &[60, 60, 61, 59],
            &[7],
        ];
        for lengths in cases {
            let groups = length_groups(lengths, GROUP_COST);
            let mut all: Vec<usize> = groups.concat();
            let mut sorted = all.clone();
            sorted.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
            assert_eq!(all, sorted, "{lengths:?}: runs of the sorted order");
            all.sort();
            assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
            // Every cut of the sorted order into runs (a bit per boundary).
            let n = sorted.len();
            let best = (0..1usize << (n - 1))
                .map(|cuts| {
                    let mut runs = vec![vec![sorted[0]]];
                    for (i, &e) in sorted.iter().enumerate().skip(1) {
                        if cuts >> (i - 1) & 1 == 1 {
                            runs.push(Vec::new());
                        }
                        runs.last_mut().unwrap().push(e);
                    }
                    cost(lengths, &runs, GROUP_COST)
                })
                .min()
                .unwrap();
            assert_eq!(cost(lengths, &groups, GROUP_COST), best, "{lengths:?}");
        }
        // tests/packing.rs relies on its lengths making several groups, one of several.
        let g = length_groups(cases[0], GROUP_COST);
        assert_eq!(g.len(), 3, "{g:?}");
        assert!(g.iter().any(|g| g.len() > 1));
        // Long examples alone, short ones together.
        assert_eq!(length_groups(&[500, 20, 480, 30], GROUP_COST).len(), 3);
        assert_eq!(length_groups(&[60, 61, 59], GROUP_COST).len(), 1);
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
