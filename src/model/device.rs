//! Device and dtype choice: `cpu`, `cuda[:N]`, `metal`, or the best available; bf16 on GPUs and
//! f32 on the CPU unless told otherwise.

use super::{ModelError, Result};
use candle_core::{DType, Device};

/// Parses `cpu`, `cuda`, `cuda:N`, `metal` or `auto`.
pub fn parse_device(spec: &str) -> Result<Device> {
    let spec = spec.trim();
    let fail = |e: candle_core::Error| {
        ModelError::Invalid(format!("device `{spec}` is not available: {e} (was socratune built with --features cuda/metal?)"))
    };
    match spec {
        "auto" | "" => Ok(best_device()),
        "cpu" => Ok(Device::Cpu),
        "metal" => Device::new_metal(0).map_err(fail),
        "cuda" => Device::new_cuda(0).map_err(fail),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Device::new_cuda(n).map_err(fail),
            _ => Err(ModelError::Invalid(format!(
                "unknown device `{s}`; use cpu, cuda, cuda:N, metal or auto"
            ))),
        },
    }
}

/// CUDA if built in and present, else Metal, else CPU.
pub(crate) fn best_device() -> Device {
    if candle_core::utils::cuda_is_available() {
        if let Ok(d) = Device::new_cuda(0) {
            return d;
        }
    }
    if candle_core::utils::metal_is_available() {
        if let Ok(d) = Device::new_metal(0) {
            return d;
        }
    }
    Device::Cpu
}

/// Parses `f32`, `bf16`, `f16` or `auto` (bf16 on GPUs, f32 on CPU).
pub fn parse_dtype(spec: &str, device: &Device) -> Result<DType> {
    match spec.trim() {
        "auto" | "" => Ok(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        }),
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        s => Err(ModelError::Invalid(format!(
            "unknown dtype `{s}`; use f32, bf16, f16 or auto"
        ))),
    }
}

/// A short name for messages (`cpu`, `cuda:0`, `metal`).
pub fn device_name(d: &Device) -> String {
    match d.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}
