//! No subnormal float anywhere in a training step: every activation of the graph, every
//! gradient, the LoRA gradients, the optimizer's moments and the updated parameters, for the
//! `tiny` and `small` shapes with padding, sliding windows and LoRA dropout. A subnormal costs
//! a microcode assist per FMA on Intel cores (see `model::kernels`), so one in a matmul operand
//! is a speed bug; this test runs without flush-to-zero, so it sees what the kernels write.

use super::adamw::{AdamW, AdamWParams};
use crate::model::lora::{LoraConfig, Mode, Target};
use crate::model::loss::{loss_sum, Batch};
use crate::model::{CausalLm, ModelConfig};
use candle_core::{DType, Device, Tensor};

/// Subnormal values in `t` (any float dtype), as (count, first one).
fn subnormals(t: &Tensor) -> (usize, Option<f32>) {
    let v = t
        .flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .expect("tensor to f32");
    let mut it = v.iter().filter(|x| x.is_subnormal());
    let first = it.next().copied();
    (first.map_or(0, |_| 1) + it.count(), first)
}

fn assert_none(what: &str, t: &Tensor) {
    let (n, first) = subnormals(t);
    assert_eq!(
        n,
        0,
        "{what} {:?}: {n} subnormal values, e.g. {first:?}",
        t.dims()
    );
}

fn check_preset(preset: &str) {
    let mut cfg = ModelConfig::preset(preset).unwrap();
    // A window shorter than the sequence, so that sliding layers mask old keys too.
    cfg.sliding_window = Some(24);
    assert!(cfg.sliding_layers.iter().any(|s| *s) && cfg.sliding_layers.iter().any(|s| !*s));
    let dev = Device::Cpu;
    let mut model = CausalLm::random(&cfg, 11, DType::F32, &dev).unwrap();
    let lora = LoraConfig {
        r: 8,
        alpha: 16.0,
        dropout: 0.1,
        targets: Target::ALL.to_vec(),
        use_rslora: false,
    };
    model.attach_lora(&lora, 12).unwrap();
    // Three sequences of different lengths: two are padded.
    let rows = crate::model::test_rows(&[64usize, 41, 17], cfg.vocab_size);
    let batch = Batch::masked_prefix(&rows, 1.0 / 3.0, cfg.vocab_size, &dev).unwrap();
    let hp = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    };
    let mut opt = AdamW::new(model.lora_vars(), hp).unwrap();
    // Two steps: at the first, B = 0 gives A no gradient; the second has both.
    for step in 0..2 {
        let loss = loss_sum(&model, &batch, &mut Mode::train(step)).unwrap();
        let nodes = loss.sorted_nodes();
        assert!(nodes.len() > 10 * cfg.num_hidden_layers, "{}", nodes.len());
        for n in nodes {
            assert_none(&format!("{preset} step {step}: activation"), n);
        }
        let grads = loss.backward().unwrap();
        for id in grads.get_ids() {
            let g = grads.get_id(*id).unwrap();
            assert_none(&format!("{preset} step {step}: gradient"), g);
        }
        let lora_grads = model.take_lora_grads();
        for ((name, _), g) in model.lora_vars().iter().zip(&lora_grads) {
            assert_none(
                &format!("{preset} step {step}: {name} gradient"),
                g.as_ref().unwrap(),
            );
        }
        opt.step(&lora_grads, 1e-3, 1.0).unwrap();
        for (name, t) in opt.state_tensors().unwrap() {
            assert_none(&format!("{preset} step {step}: {name}"), &t);
        }
        for (name, v) in model.lora_vars() {
            assert_none(&format!("{preset} step {step}: {name}"), v.as_tensor());
        }
    }
}

#[test]
fn a_tiny_training_step_holds_no_subnormal() {
    check_preset("tiny");
}

#[test]
fn a_small_training_step_holds_no_subnormal() {
    check_preset("small");
}
