//! AdamW with f32 state that can be saved and restored exactly (candle's keeps its moments
//! private and in the parameter dtype).

use super::TrainError;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Optimizer state for named parameters.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// Updates applied so far (for bias correction).
    pub t: usize,
    hp: AdamWParams,
}

impl AdamW {
    pub fn new(params: Vec<(String, Var)>, hp: AdamWParams) -> Result<Self, TrainError> {
        let m = params
            .iter()
            .map(|(_, p)| p.as_tensor().zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        let v = m.clone();
        Ok(Self {
            params,
            m,
            v,
            t: 0,
            hp,
        })
    }

    pub fn params(&self) -> &[(String, Var)] {
        &self.params
    }

    /// Global L2 norm of the gradients (parameters without a gradient count as zero).
    pub fn grad_norm(&self, grads: &[Option<Tensor>]) -> Result<f64, TrainError> {
        let mut sq = Vec::new();
        for g in grads.iter().flatten() {
            sq.push(g.sqr()?.sum_all()?);
        }
        if sq.is_empty() {
            return Ok(0.0);
        }
        Ok(Tensor::stack(&sq, 0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            .sqrt())
    }

    /// One update with learning rate `lr`, gradients multiplied by `grad_scale` (clipping).
    pub fn step(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
    ) -> Result<(), TrainError> {
        self.t += 1;
        let AdamWParams {
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, (_, p)) in self.params.iter().enumerate() {
            let Some(g) = grads.get(i).and_then(Option::as_ref) else {
                continue;
            };
            let g = (g * grad_scale)?;
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            // As torch.optim.AdamW: decoupled decay first, then the Adam step.
            let decayed = (p.as_tensor() * (1.0 - lr * weight_decay))?;
            let denom = ((&v / bc2)?.sqrt()? + eps)?;
            let update = ((&m / bc1)? / denom)?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// The moments by parameter name (`<name>.exp_avg`, `<name>.exp_avg_sq`), on the CPU.
    pub fn state_tensors(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.insert(
                format!("{name}.exp_avg"),
                self.m[i].to_device(&Device::Cpu)?,
            );
            out.insert(
                format!("{name}.exp_avg_sq"),
                self.v[i].to_device(&Device::Cpu)?,
            );
        }
        Ok(out)
    }

    /// Restores moments saved by [`AdamW::state_tensors`]; every parameter must be present.
    pub fn load_state(
        &mut self,
        mut saved: HashMap<String, Tensor>,
        t: usize,
    ) -> Result<(), TrainError> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (suffix, slot) in [("exp_avg", &mut self.m[i]), ("exp_avg_sq", &mut self.v[i])] {
                let key = format!("{name}.{suffix}");
                let t = saved.remove(&key).ok_or_else(|| {
                    TrainError::Checkpoint(format!("optimizer state has no `{key}`"))
                })?;
                if t.dims() != p.dims() {
                    return Err(TrainError::Checkpoint(format!(
                        "optimizer state `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        p.dims()
                    )));
                }
                *slot = t.to_dtype(DType::F32)?.to_device(p.device())?;
            }
        }
        self.t = t;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two steps against values computed by hand from torch.optim.AdamW's update rule.
    #[test]
    fn matches_the_torch_update_rule() {
        let p = Var::new(&[1.0f32, -2.0], &Device::Cpu).unwrap();
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        };
        let mut opt = AdamW::new(vec![("p".into(), p.clone())], hp).unwrap();
        let mut expect = [1.0f64, -2.0];
        let (mut m, mut v) = ([0f64; 2], [0f64; 2]);
        for (t, g) in [[0.5f64, -1.0], [0.25, 2.0]].iter().enumerate() {
            let grad = Tensor::new(&[g[0] as f32, g[1] as f32], &Device::Cpu).unwrap();
            opt.step(&[Some(grad)], 0.01, 1.0).unwrap();
            let tt = (t + 1) as i32;
            for i in 0..2 {
                expect[i] *= 1.0 - 0.01 * 0.1;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.999 * v[i] + 0.001 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(tt));
                let vh = v[i] / (1.0 - 0.999f64.powi(tt));
                expect[i] -= 0.01 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = p.as_tensor().to_vec1::<f32>().unwrap();
        for i in 0..2 {
            assert!(
                (got[i] as f64 - expect[i]).abs() < 1e-6,
                "{got:?} vs {expect:?}"
            );
        }
        // Saving and restoring the state continues identically.
        let saved = opt.state_tensors().unwrap();
        let q = Var::new(got.as_slice(), &Device::Cpu).unwrap();
        let mut opt2 = AdamW::new(vec![("p".into(), q.clone())], hp).unwrap();
        opt2.load_state(saved, opt.t).unwrap();
        let g = Tensor::new(&[1f32, 1.0], &Device::Cpu).unwrap();
        opt.step(&[Some(g.clone())], 0.01, 1.0).unwrap();
        opt2.step(&[Some(g)], 0.01, 1.0).unwrap();
        assert_eq!(
            p.as_tensor().to_vec1::<f32>().unwrap(),
            q.as_tensor().to_vec1::<f32>().unwrap()
        );
    }
}
