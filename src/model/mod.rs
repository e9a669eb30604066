//! Causal language models with LoRA: config, loading (local folder or Hub), the training
//! forward pass, the cached generation path, PEFT adapter IO and merging.
//!
//! Every family is the one decoder [`CausalLm`] built from the shared [`blocks`]; a family is
//! a config reader (`gemma2`, `gemma3`, `qwen3`, `llama`) that fills the family-agnostic [`ModelConfig`].
//! `model::load` picks the reader from `config.json`'s `model_type`; nothing outside this
//! module needs to know which family it runs.

pub mod adapter;
mod blocks;
mod cache;
mod causal_lm;
pub(crate) mod config;
pub(crate) mod cpu_gemm;
pub mod device;
pub mod export;
mod fused_attn;
mod gemma2;
mod gemma3;
pub mod generate;
pub mod hub;
pub(crate) mod kernels;
mod llama;
pub mod lora;
pub mod loss;
pub mod lowrank;
mod matvec;
pub(crate) mod ops;
mod qwen3;
pub(crate) mod simd;
pub(crate) mod weights;

pub use causal_lm::{BatchCache, CausalLm, KvCache};
pub use config::{Activation, Family, ModelConfig, NormWeight, RopeScaling, RopeSpec};
pub use fused_attn::causal_tile_shapes;
pub use hub::Source;
pub use kernels::Kernels;
pub use lora::{LoraConfig, Target};

use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// Something wrong with a file: missing, malformed, a tensor of the wrong shape…
    #[error("{}: {message}", path.display())]
    File { path: PathBuf, message: String },
    #[error("{repo}: {message}")]
    Hub { repo: String, message: String },
    /// A request that does not fit the model (adapter rank, targets, options).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl ModelError {
    pub fn file(path: &Path, message: impl Into<String>) -> Self {
        ModelError::File {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

impl From<crate::fsutil::FileError> for ModelError {
    fn from(e: crate::fsutil::FileError) -> Self {
        ModelError::file(&e.path, e.source.to_string())
    }
}

/// max |a − b| over all elements (unit tests).
#[cfg(test)]
pub(crate) fn max_abs_diff(a: &candle_core::Tensor, b: &candle_core::Tensor) -> f32 {
    max_abs(&(a - b).unwrap())
}

/// max |a| over all elements (unit tests).
#[cfg(test)]
pub(crate) fn max_abs(a: &candle_core::Tensor) -> f32 {
    a.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Token rows of the given lengths, deterministic, ids ≥ 3 (clear of the special tokens) and
/// below `vocab` (unit tests).
#[cfg(test)]
pub(crate) fn test_rows(lens: &[usize], vocab: usize) -> Vec<Vec<u32>> {
    lens.iter()
        .enumerate()
        .map(|(r, &len)| {
            (0..len)
                .map(|i| 3 + ((i * 37 + r * 101) % (vocab - 3)) as u32)
                .collect()
        })
        .collect()
}

/// `n` deterministic values in [−1, 1] (unit tests of the CPU kernels).
#[cfg(test)]
pub(crate) fn test_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
        .collect()
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Loads a base model (config + weights) from a folder or the Hub, its family from
/// `config.json`'s `model_type`; the kernels are the device's unless `SOCRATUNE_KERNELS`
/// (`fused` or `reference`) says otherwise.
pub fn load(src: &Source, dtype: DType, device: &Device) -> Result<CausalLm> {
    let cfg = ModelConfig::from_file(&src.file("config.json")?)?;
    let weights = weights::Weights::open(src)?;
    CausalLm::from_weights(&cfg, &weights, dtype, device)
}

/// [`load`] with the kernels chosen by the caller.
pub fn load_with_kernels(
    src: &Source,
    dtype: DType,
    device: &Device,
    kernels: Kernels,
) -> Result<CausalLm> {
    let mut m = load(src, dtype, device)?;
    m.set_kernels(kernels)?;
    Ok(m)
}
