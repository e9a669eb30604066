//! Micro-benchmarks of the training step's parts on the CPU, `small` preset shapes:
//! forward + backward of one decoder layer, the loss head (chunked cross-entropy with its
//! gradient), and the AdamW step over every LoRA tensor. `cargo bench --bench train_step`.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use socratune::model::lora::{LoraConfig, Mode};
use socratune::model::loss::{cross_entropy_sum, loss_sum, Batch};
use socratune::model::{CausalLm, Kernels, ModelConfig};
use socratune::train::adamw::{AdamW, AdamWParams};

fn batch(cfg: &ModelConfig, b: usize, t: usize) -> Batch {
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|r| {
            (0..t)
                .map(|i| 3 + ((r * 7919 + i * 104729) % (cfg.vocab_size - 3)) as u32)
                .collect()
        })
        .collect();
    Batch::masked_prefix(&rows, 0.4, cfg.vocab_size, &Device::Cpu).unwrap()
}

fn layer(c: &mut Criterion) {
    let mut cfg = ModelConfig::preset("small").unwrap();
    cfg.num_hidden_layers = 1;
    cfg.sliding_layers.truncate(1);
    let mut m = CausalLm::random(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
    m.attach_lora(
        &LoraConfig {
            dropout: 0.0,
            ..Default::default()
        },
        0,
    )
    .unwrap();
    let b = batch(&cfg, 4, 256);
    c.bench_function("one layer forward+backward (small, 4x256)", |bench| {
        bench.iter(|| {
            let h = m
                .hidden_states(&b.input_ids, Some(&b.key_mask), &mut Mode::grad_only())
                .unwrap();
            h.sum_all().unwrap().backward().unwrap();
            m.take_lora_grads();
        })
    });
}

fn loss_head(c: &mut Criterion) {
    let (n, hidden, vocab) = (614, 512, 32000);
    let h = candle_core::Var::from_tensor(
        &Tensor::randn(0f32, 1.0, (n, hidden), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let w = (Tensor::randn(0f32, 1.0, (vocab, hidden), &Device::Cpu).unwrap() * 0.02).unwrap();
    let targets: Vec<u32> = (0..n as u32).map(|i| (i * 7919) % vocab as u32).collect();
    c.bench_function(
        "loss head forward+backward (614 rows, vocab 32000)",
        |bench| {
            bench.iter(|| {
                let l = cross_entropy_sum(
                    h.as_tensor(),
                    &w,
                    &targets,
                    Some(30.0),
                    true,
                    Kernels::Fused,
                )
                .unwrap();
                l.backward().unwrap();
            })
        },
    );
}

fn optimizer(c: &mut Criterion) {
    let cfg = ModelConfig::preset("small").unwrap();
    let mut m = CausalLm::random(&cfg, 0, DType::F32, &Device::Cpu).unwrap();
    m.attach_lora(&LoraConfig::default(), 0).unwrap();
    let b = batch(&cfg, 1, 32);
    loss_sum(&m, &b, &mut Mode::grad_only())
        .unwrap()
        .backward()
        .unwrap();
    let grads = m.take_lora_grads();
    let hp = AdamWParams {
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    };
    let mut opt = AdamW::new(m.lora_vars(), hp).unwrap();
    c.bench_function("AdamW step (small, r=16, all seven projections)", |bench| {
        bench.iter(|| opt.step(&grads, 1e-4, 1.0).unwrap())
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10);
    targets = layer, loss_head, optimizer
}
criterion_main!(benches);
