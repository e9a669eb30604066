//! `socratune bench train`: the work of `benches/hf_peft_reference.py` (a random model
//! of a preset shape, LoRA r=16/alpha=32 on all seven projections, AdamW lr 1e-4, B×T tokens a
//! step with the first 40% of each sequence masked; f32 on CPU, bf16 base + f32 LoRA on GPUs),
//! done through the trainer's own step, reported with the reference's JSON keys.

use super::adamw::{AdamW, AdamWParams};
use super::trainer::optimizer_step;
use super::TrainError;
use crate::model::device::{device_name, parse_device};
use crate::model::lora::{LoraConfig, Target};
use crate::model::loss::Batch;
use crate::model::{CausalLm, ModelConfig};
use candle_core::{DType, Device};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub preset: String,
    pub steps: usize,
    pub warmup: usize,
    pub device: String,
    pub batch: Option<usize>,
    pub seq: Option<usize>,
    /// LoRA dropout (the reference runs none; training's default is 0.05).
    pub lora_dropout: f32,
}

/// The reference's batch and sequence length per preset.
pub fn preset_batch(preset: &str) -> (usize, usize) {
    match preset {
        // tiny, tiny-gemma3, tiny-qwen3, tiny-llama.
        p if p.starts_with("tiny") => (2, 64),
        "small" => (4, 256),
        _ => (8, 512),
    }
}

/// The benchmarks' model: a random model of a preset shape with the reference's LoRA
/// (r=16, alpha=32, all seven projections; no dropout unless asked) and AdamW; f32 on the CPU, bf16 base
/// and f32 LoRA elsewhere.
pub(crate) struct BenchModel {
    pub cfg: ModelConfig,
    pub model: CausalLm,
    pub opt: AdamW,
    pub device: Device,
    pub dtype: DType,
}

impl BenchModel {
    /// The shape of a preset, or an error naming the presets.
    pub(crate) fn config(preset: &str) -> Result<ModelConfig, TrainError> {
        ModelConfig::preset_or_list(preset).map_err(TrainError::Config)
    }

    pub(crate) fn new(
        cfg: ModelConfig,
        device: &str,
        lora_dropout: f32,
    ) -> Result<Self, TrainError> {
        let device = parse_device(device)?;
        let dtype = if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        };
        let mut model = CausalLm::random(&cfg, 0, dtype, &device)?;
        let lora = LoraConfig {
            r: 16,
            alpha: 32.0,
            dropout: lora_dropout,
            targets: Target::ALL.to_vec(),
            use_rslora: false,
        };
        lora.validate()
            .map_err(|e| TrainError::Config(format!("--lora-dropout: {e}")))?;
        model.attach_lora(&lora, 0)?;
        let hp = AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        };
        let opt = AdamW::new(model.lora_vars(), hp)?;
        Ok(Self {
            cfg,
            model,
            opt,
            device,
            dtype,
        })
    }
}

pub fn bench_train(o: &BenchOptions) -> Result<Value, TrainError> {
    let cfg = BenchModel::config(&o.preset)?;
    if o.steps == 0 {
        return Err(TrainError::Config("--steps must be at least 1".into()));
    }
    let BenchModel {
        cfg,
        model,
        mut opt,
        device,
        dtype,
    } = BenchModel::new(cfg, &o.device, o.lora_dropout)?;
    let (b0, t0) = preset_batch(&o.preset);
    let (b, t) = (o.batch.unwrap_or(b0), o.seq.unwrap_or(t0));

    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // The reference's work: random ids, the first 40 % of each row's labels masked.
    let rows: Vec<Vec<u32>> = (0..b)
        .map(|_| {
            (0..t)
                .map(|_| rng.random_range(3..cfg.vocab_size as u32))
                .collect()
        })
        .collect();
    let batch = [Batch::masked_prefix(&rows, 0.4, cfg.vocab_size, &device)?];

    let memory = MemoryWatch::start(&device);
    let mut loss = f64::NAN;
    for _ in 0..o.warmup {
        loss = optimizer_step(&model, &mut opt, &batch, |_| 0, 1e-4, 0.0)?.loss;
    }
    device.synchronize()?;
    let start = Instant::now();
    for _ in 0..o.steps {
        loss = optimizer_step(&model, &mut opt, &batch, |_| 0, 1e-4, 0.0)?.loss;
    }
    device.synchronize()?;
    let dt = start.elapsed().as_secs_f64();
    let peak = memory.peak();
    Ok(json!({
        "impl": "socratune",
        "candle": "0.11",
        "preset": o.preset,
        "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "batch": b,
        "seq": t,
        "steps": o.steps,
        "lora_dropout": o.lora_dropout,
        "tokens_per_s": ((b * t * o.steps) as f64 / dt * 10.0).round() / 10.0,
        "s_per_step": (dt / o.steps as f64 * 1e4).round() / 1e4,
        "peak_mem_bytes": peak,
        "loss": (loss * 1e4).round() / 1e4,
        "threads": rayon::current_num_threads(),
        // Per compute pool: whether its threads flush subnormals to zero (`fpenv`).
        "flush_to_zero": crate::fpenv::flush_status()
            .iter()
            .map(|(pool, on)| (pool.to_string(), json!(on)))
            .collect::<serde_json::Map<_, _>>(),
    }))
}

/// Peak memory: the process's resident high-water mark on the CPU; on CUDA, the device memory
/// in use (sampled), which unlike torch's allocator statistics includes the CUDA context.
struct MemoryWatch {
    #[cfg(feature = "cuda")]
    gpu: Option<(
        std::sync::Arc<std::sync::atomic::AtomicU64>,
        std::sync::Arc<std::sync::atomic::AtomicBool>,
    )>,
}

impl MemoryWatch {
    fn start(device: &Device) -> Self {
        #[cfg(feature = "cuda")]
        {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
            use std::sync::Arc;
            if let Device::Cuda(d) = device {
                let peak = Arc::new(AtomicU64::new(0));
                let stop = Arc::new(AtomicBool::new(false));
                let (p, s) = (peak.clone(), stop.clone());
                let stream = d.cuda_stream();
                std::thread::spawn(move || {
                    let _ = stream.context().bind_to_thread();
                    while !s.load(Ordering::Relaxed) {
                        if let Ok((free, total)) =
                            candle_core::cuda_backend::cudarc::driver::result::mem_get_info()
                        {
                            p.fetch_max((total - free) as u64, Ordering::Relaxed);
                        }
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                });
                return Self {
                    gpu: Some((peak, stop)),
                };
            }
            Self { gpu: None }
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = device;
            Self {}
        }
    }

    fn peak(&self) -> u64 {
        #[cfg(feature = "cuda")]
        if let Some((peak, stop)) = &self.gpu {
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(20));
            return peak.load(std::sync::atomic::Ordering::Relaxed);
        }
        resident_high_water_mark().unwrap_or(0)
    }
}

/// `VmHWM` from /proc (Linux), in bytes.
fn resident_high_water_mark() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
