//! Causal-LM loss at supervised positions only: hidden states are gathered where a label is
//! trained, and the logits over the vocabulary are formed chunk by chunk, never as one
//! `[tokens × vocab]` tensor. The gradient with respect to the hidden states is computed in the
//! same pass, so no logits are kept for the backward.

use super::causal_lm::CausalLm;
use super::cpu_gemm::{self, gemm_new, Mat};
use super::kernels::{self, Kernels};
use super::lora::Mode;
use super::ops::{self, with_grad};
use super::{ModelError, Result};
use candle_core::{DType, Device, Tensor, D};

/// A right-padded batch with its supervised positions.
pub struct Batch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// Per sequence, whether each position is a real token.
    pub key_mask: Vec<Vec<bool>>,
    /// Flat positions `b·T + i` whose logits are trained, u32 `[N]`.
    pub positions: Tensor,
    /// The token each of those positions must predict.
    pub targets: Vec<u32>,
    /// Real (non-padding) tokens in the batch.
    pub real_tokens: usize,
    /// Rows holding several examples each (packing): where each example sits.
    pub packed: Option<Packed>,
}

/// Where the examples of a packed batch are: (row, first token, tokens) each, in order.
pub struct Packed {
    pub examples: Vec<(usize, usize, usize)>,
}

/// The label value that marks an untrained position (as in Hugging Face).
pub const IGNORE: i64 = -100;

/// One example: input ids and labels aligned as in Hugging Face.
pub type Seq<'a> = (&'a [u32], &'a [i64]);

impl Batch {
    /// Builds a batch from `(input_ids, labels)` pairs aligned as in Hugging Face (`labels[i]`
    /// is `input_ids[i]` or -100; position i's logits predict `labels[i + 1]`).
    pub fn new(seqs: &[Seq], pad_id: u32, vocab: usize, device: &Device) -> Result<Self> {
        let rows: Vec<Vec<Seq>> = seqs.iter().map(|&s| vec![s]).collect();
        Self::build(&rows, false, pad_id, vocab, device)
    }

    /// A batch whose rows each hold the examples listed, one after the other: every example
    /// keeps its own tokens (its BOS too), positions restart at 0 for it, it attends only to
    /// itself, and its labels stay inside it (its last token predicts nothing). Its loss and
    /// gradients are those of the same examples in a [`Batch::new`] batch.
    pub fn packed(rows: &[Vec<Seq>], pad_id: u32, vocab: usize, device: &Device) -> Result<Self> {
        Self::build(rows, true, pad_id, vocab, device)
    }

    fn build(
        rows: &[Vec<Seq>],
        pack: bool,
        pad_id: u32,
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        let row_len = |r: &Vec<Seq>| r.iter().map(|(ids, _)| ids.len()).sum::<usize>();
        let t = rows.iter().map(row_len).max().unwrap_or(0);
        if t == 0 {
            return Err(ModelError::Invalid("empty batch".into()));
        }
        let b = rows.len();
        let mut ids = Vec::with_capacity(b * t);
        let mut key_mask = Vec::with_capacity(b);
        let mut positions = Vec::new();
        let mut targets = Vec::new();
        let mut real_tokens = 0;
        let mut layout = Packed {
            examples: Vec::new(),
        };
        // Examples are named by their running index in the batch (rows in order).
        let mut index = 0;
        for (row, seqs) in rows.iter().enumerate() {
            for (seq, labels) in seqs.iter() {
                if seq.len() != labels.len() {
                    return Err(ModelError::Invalid(format!(
                        "sequence {index}: {} input ids but {} labels",
                        seq.len(),
                        labels.len()
                    )));
                }
                for &id in seq.iter() {
                    if id as usize >= vocab {
                        return Err(ModelError::Invalid(format!(
                            "token id {id} is outside the model's vocabulary of {vocab} (data tokenized with another tokenizer?)"
                        )));
                    }
                }
                let start = ids.len() - row * t;
                // Within the example only: its last token predicts nothing.
                for i in 0..seq.len().saturating_sub(1) {
                    let l = labels[i + 1];
                    if l == IGNORE {
                        continue;
                    }
                    if l < 0 || l as usize >= vocab {
                        return Err(ModelError::Invalid(format!(
                            "sequence {index}: label {l} at position {} is neither -100 nor a token id below {vocab}",
                            i + 1
                        )));
                    }
                    positions.push((row * t + start + i) as u32);
                    targets.push(l as u32);
                }
                ids.extend_from_slice(seq);
                layout.examples.push((row, start, seq.len()));
                real_tokens += seq.len();
                index += 1;
            }
            let len = row_len(seqs);
            ids.extend(std::iter::repeat_n(pad_id, t - len));
            key_mask.push((0..t).map(|i| i < len).collect());
        }
        let n = positions.len();
        Ok(Self {
            input_ids: Tensor::from_vec(ids, (b, t), device)?,
            key_mask,
            positions: Tensor::from_vec(positions, n, device)?,
            targets,
            real_tokens,
            packed: pack.then_some(layout),
        })
    }

    /// A batch of `rows` whose first `masked_fraction` of each row's labels are ignored and the
    /// rest equal the ids: the synthetic work of benchmarks and speed tests.
    pub fn masked_prefix(
        rows: &[Vec<u32>],
        masked_fraction: f64,
        vocab: usize,
        device: &Device,
    ) -> Result<Self> {
        let labels: Vec<Vec<i64>> = rows
            .iter()
            .map(|ids| {
                let masked = (ids.len() as f64 * masked_fraction) as usize;
                let label = |(i, &x): (usize, &u32)| if i < masked { IGNORE } else { x as i64 };
                ids.iter().enumerate().map(label).collect()
            })
            .collect();
        let seqs: Vec<(&[u32], &[i64])> = rows
            .iter()
            .zip(&labels)
            .map(|(i, l)| (i.as_slice(), l.as_slice()))
            .collect();
        Self::new(&seqs, 0, vocab, device)
    }

    /// Supervised tokens (the loss's denominator).
    pub fn supervised(&self) -> usize {
        self.targets.len()
    }
}

/// Rows of logits formed at once: bounds the loss's memory whatever the vocabulary.
const CHUNK_ELEMENTS: usize = 1 << 26;

/// Sum over the batch's supervised positions of the token cross-entropy, as a scalar f32 tensor
/// (in the graph of the LoRA parameters when `mode.grad`).
pub fn loss_sum(model: &CausalLm, batch: &Batch, mode: &mut Mode) -> Result<Tensor> {
    if batch.supervised() == 0 {
        return Ok(Tensor::zeros((), DType::F32, model.device())?);
    }
    let packed = batch.packed.as_ref().map(|p| p.examples.as_slice());
    let h = model.hidden_states_packed(&batch.input_ids, Some(&batch.key_mask), packed, mode)?;
    let h = model.final_norm(&h.index_select(&batch.positions, 0)?)?;
    cross_entropy_sum(
        &h,
        model.output_weight(),
        &batch.targets,
        model.cfg.final_logit_softcapping,
        mode.grad,
        model.kernels(),
    )
}

/// `Σ_n [logsumexp(z_n) − z_n[target_n]]` with `z = cap · tanh(h wᵀ / cap)`, in f32, chunked.
/// With `need_grad`, `d/dh` is formed chunk by chunk here and handed to the backward.
pub fn cross_entropy_sum(
    h: &Tensor,
    w: &Tensor,
    targets: &[u32],
    cap: Option<f64>,
    need_grad: bool,
    kern: Kernels,
) -> Result<Tensor> {
    let (n, hidden) = h.dims2()?;
    let vocab = w.dim(0)?;
    let dev = h.device();
    let rows = (CHUNK_ELEMENTS / vocab).max(1);
    let hd = h.detach();
    let wt = w.t()?;
    let mut sums = Vec::new();
    let mut grads = Vec::new();
    // The output weight's own gradient, only when it is trained (full-parameter training).
    let w_grad = need_grad && w.track_op();
    let mut dw: Option<Tensor> = None;
    let mut add_dw = |dz: &Tensor, start: usize, len: usize| -> Result<()> {
        if w_grad {
            let part = dz
                .t()?
                .matmul(&hd.narrow(0, start, len)?.to_dtype(DType::F32)?)?;
            dw = Some(match dw.take() {
                Some(s) => (s + part)?,
                None => part,
            });
        }
        Ok(())
    };
    let fused_head = kern.fuse(&hd) && kern.fuse(w) && !w_grad;
    let wc = if fused_head {
        w.contiguous()?
    } else {
        w.clone()
    };
    let mut start = 0;
    while start < n {
        let len = rows.min(n - start);
        if fused_head {
            // The logits written once by gemm, turned into their gradient in place, and
            // `dh = dz·W` formed from that same buffer.
            let hc = hd.narrow(0, start, len)?.contiguous()?;
            let (hs, ws) = (cpu_gemm::data(&hc)?, cpu_gemm::data(&wc)?);
            let wm = Mat::new(ws.slice(), vocab, hidden);
            let mut z = gemm_new(Mat::new(hs.slice(), len, hidden), wm.t(), 1.0);
            let tg = &targets[start..start + len];
            if need_grad {
                let sum = kernels::cross_entropy_in_place(&mut z, vocab, tg, cap);
                sums.push(Tensor::new(sum as f32, dev)?);
                let dh = gemm_new(Mat::new(&z, len, vocab), wm, 1.0);
                grads.push(Tensor::from_vec(dh, (len, hidden), dev)?);
            } else {
                let sum = kernels::cross_entropy_loss(&z, vocab, tg, cap);
                sums.push(Tensor::new(sum as f32, dev)?);
            }
            start += len;
            continue;
        }
        let z = hd
            .narrow(0, start, len)?
            .matmul(&wt)?
            .to_dtype(DType::F32)?;
        let fused = if kern.fuse(&z) {
            kernels::cross_entropy_rows(&z, &targets[start..start + len], cap, need_grad)?
        } else {
            None
        };
        if let Some((sum, dz)) = fused {
            sums.push(Tensor::new(sum as f32, dev)?);
            if let Some(dz) = dz {
                add_dw(&dz, start, len)?;
                grads.push(dz.to_dtype(w.dtype())?.matmul(&w.detach())?);
            }
            start += len;
            continue;
        }
        let (z, t) = match cap {
            Some(c) => {
                let t = (z / c)?.tanh()?;
                ((&t * c)?, Some(t))
            }
            None => (z, None),
        };
        let max = z.max_keepdim(D::Minus1)?;
        let e = z.broadcast_sub(&max)?.exp()?;
        let se = e.sum_keepdim(D::Minus1)?;
        let lse = (max + se.log()?)?;
        let tgt = Tensor::from_slice(&targets[start..start + len], (len, 1), dev)?;
        let picked = z.gather(&tgt, 1)?;
        sums.push((lse - picked)?.sum_all()?);
        if need_grad {
            let mut p = e.broadcast_div(&se)?;
            p = p.scatter_add(&tgt, &Tensor::full(-1f32, (len, 1), dev)?, 1)?;
            if let Some(t) = t {
                p = (p * (1.0 - t.sqr()?)?)?;
            }
            add_dw(&p, start, len)?;
            grads.push(p.to_dtype(w.dtype())?.matmul(&w.detach())?);
        }
        start += len;
    }
    let total = Tensor::stack(&sums, 0)?.sum_all()?;
    if !need_grad {
        return Ok(total);
    }
    let dh = Tensor::cat(&grads, 0)?.to_dtype(h.dtype())?;
    if let Some(dw) = dw {
        let dw = dw.to_dtype(w.dtype())?;
        return Ok(ops::with_grad2(total, h, w, move |g| {
            Ok((
                Some(dh.broadcast_mul(&g.to_dtype(dh.dtype())?)?),
                Some(dw.broadcast_mul(&g.to_dtype(dw.dtype())?)?),
            ))
        })?);
    }
    Ok(with_grad(total, h, move |g| {
        dh.broadcast_mul(&g.to_dtype(dh.dtype())?)
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;

    #[test]
    fn batch_finds_supervised_positions_and_pads() {
        let a: (&[u32], &[i64]) = (&[2, 5, 6, 7], &[-100, -100, 6, 7]);
        let b: (&[u32], &[i64]) = (&[2, 9], &[-100, 9]);
        let batch = Batch::new(&[a, b], 0, 10, &Device::Cpu).unwrap();
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![2, 5, 6, 7], vec![2, 9, 0, 0]]
        );
        assert_eq!(batch.positions.to_vec1::<u32>().unwrap(), vec![1, 2, 4]);
        assert_eq!(batch.targets, vec![6, 7, 9]);
        assert_eq!(batch.real_tokens, 6);
        let e = Batch::new(&[(&[2, 11], &[-100, 11])], 0, 10, &Device::Cpu)
            .err()
            .unwrap();
        assert!(e.to_string().contains("token id 11 is outside"), "{e}");
    }

    #[test]
    fn chunked_loss_and_gradient_match_the_plain_formula() {
        let dev = Device::Cpu;
        let h0 = Tensor::new(
            &[[0.3f32, -1.0, 0.5], [1.2, 0.1, -0.4], [-0.7, 0.9, 0.2]],
            &dev,
        )
        .unwrap();
        let w = Tensor::new(
            &[
                [0.5f32, -0.2, 0.1],
                [0.3, 0.8, -0.6],
                [-1.0, 0.4, 0.9],
                [0.2, 0.2, 0.2],
            ],
            &dev,
        )
        .unwrap();
        let targets = [1u32, 3, 0];
        for cap in [None, Some(2.0)] {
            let h = Var::from_tensor(&h0).unwrap();
            let ours =
                cross_entropy_sum(h.as_tensor(), &w, &targets, cap, true, Kernels::Fused).unwrap();
            let g_ours = ours.backward().unwrap().get(&h).unwrap().clone();
            let reference =
                cross_entropy_sum(&h0, &w, &targets, cap, false, Kernels::Reference).unwrap();
            let d =
                (ours.to_scalar::<f32>().unwrap() - reference.to_scalar::<f32>().unwrap()).abs();
            assert!(d < 1e-5, "fused and reference losses differ by {d}");
            // Plain autograd through candle's own ops.
            let h2 = Var::from_tensor(&h0).unwrap();
            let z = h2.as_tensor().matmul(&w.t().unwrap()).unwrap();
            let z = match cap {
                Some(c) => ((z / c).unwrap().tanh().unwrap() * c).unwrap(),
                None => z,
            };
            let lsm = candle_nn::ops::log_softmax(&z, 1).unwrap();
            let tgt = Tensor::new(&targets, &dev).unwrap().unsqueeze(1).unwrap();
            let plain = lsm
                .gather(&tgt, 1)
                .unwrap()
                .sum_all()
                .unwrap()
                .neg()
                .unwrap();
            let g_plain = plain.backward().unwrap().get(&h2).unwrap().clone();
            let d = (ours.to_scalar::<f32>().unwrap() - plain.to_scalar::<f32>().unwrap()).abs();
            assert!(d < 1e-5, "loss differs by {d}");
            let dg = crate::model::max_abs_diff(&g_ours, &g_plain);
            assert!(dg < 1e-5, "gradient differs by {dg}");
        }
    }
}
