//! Which GGML type each tensor gets for a quantization choice, following llama.cpp's
//! `llama-quant.cpp` (the q4_k_m mixture and its fallbacks for rows that do not fit a block),
//! and the encoding itself with candle's quantizers.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;
use std::str::FromStr;

/// `--quant`: the file's overall type, as llama.cpp names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4KM,
}

impl FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f16" => Quant::F16,
            "bf16" => Quant::Bf16,
            "q8_0" => Quant::Q8_0,
            "q4_0" => Quant::Q4_0,
            "q4_k_m" => Quant::Q4KM,
            _ => {
                return Err(format!(
                    "unknown quantization `{s}`; choose f16, bf16, q8_0, q4_0 or q4_k_m"
                ))
            }
        })
    }
}

impl Quant {
    pub const ALL: [Quant; 5] = [
        Quant::F16,
        Quant::Bf16,
        Quant::Q8_0,
        Quant::Q4_0,
        Quant::Q4KM,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Quant::F16 => "f16",
            Quant::Bf16 => "bf16",
            Quant::Q8_0 => "q8_0",
            Quant::Q4_0 => "q4_0",
            Quant::Q4KM => "q4_k_m",
        }
    }

    /// `general.file_type` (llama.cpp's `llama_ftype`).
    pub fn file_type(self) -> u32 {
        match self {
            Quant::F16 => 1,
            Quant::Q4_0 => 2,
            Quant::Q8_0 => 7,
            Quant::Q4KM => 15,
            Quant::Bf16 => 32,
        }
    }

    /// The type of most 2-D weights.
    fn base(self) -> GgmlDType {
        match self {
            Quant::F16 => GgmlDType::F16,
            Quant::Bf16 => GgmlDType::BF16,
            Quant::Q8_0 => GgmlDType::Q8_0,
            Quant::Q4_0 => GgmlDType::Q4_0,
            Quant::Q4KM => GgmlDType::Q4K,
        }
    }

    fn is_quantized(self) -> bool {
        !matches!(self, Quant::F16 | Quant::Bf16)
    }
}

/// What a tensor is, as far as the type choice cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// 1-D (norms): always F32, as llama.cpp's converter writes them.
    Vector,
    /// The output projection: `output.weight`, or the token embedding when tied to it.
    Output,
    /// `attn_v` of layer `i`.
    AttnV(usize),
    /// `ffn_down` of layer `i`.
    FfnDown(usize),
    /// Any other matrix.
    Matrix,
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third
/// one between.
fn use_more_bits(i: usize, n: usize) -> bool {
    let (i, n) = (i as i64, n as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The type llama.cpp gives a tensor of `role` with rows of `ncols` in a `quant` file of a
/// model with `n_layers` layers.
pub fn tensor_type(quant: Quant, role: Role, ncols: usize, n_layers: usize) -> GgmlDType {
    if role == Role::Vector {
        return GgmlDType::F32;
    }
    let base = quant.base();
    if !quant.is_quantized() {
        return base;
    }
    let chosen = match role {
        // The output projection (tied embedding or not): Q6_K unless the file is Q8_0.
        Role::Output if !ncols.is_multiple_of(base.block_size()) => GgmlDType::Q8_0,
        Role::Output if base != GgmlDType::Q8_0 => GgmlDType::Q6K,
        Role::AttnV(i) | Role::FfnDown(i) if quant == Quant::Q4KM && use_more_bits(i, n_layers) => {
            GgmlDType::Q6K
        }
        _ => base,
    };
    fallback(chosen, ncols)
}

/// Rows that do not split into whole blocks: the 256-wide k-quants fall back to a 32-wide
/// type of similar size, and what still does not fit becomes F16.
fn fallback(t: GgmlDType, ncols: usize) -> GgmlDType {
    if ncols.is_multiple_of(t.block_size()) {
        return t;
    }
    let smaller = match t {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        other => other,
    };
    if ncols.is_multiple_of(smaller.block_size()) {
        smaller
    } else {
        GgmlDType::F16
    }
}

/// GGML's name of a type, for messages and reports.
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_k",
        GgmlDType::Q3K => "q3_k",
        GgmlDType::Q4K => "q4_k",
        GgmlDType::Q5K => "q5_k",
        GgmlDType::Q6K => "q6_k",
        GgmlDType::Q8K => "q8_k",
    }
}

/// Encodes an f32 tensor (rows along the last dimension) as `t`.
pub fn encode(tensor: &Tensor, t: GgmlDType) -> candle_core::Result<QTensor> {
    QTensor::quantize(&tensor.to_dtype(candle_core::DType::F32)?, t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn q4_k_m_follows_llama_cpp_mixture() {
        // Gemma-2 2B: 26 layers, rows of 2304 and 9216 (multiples of 256).
        let t = |role, ncols| tensor_type(Quant::Q4KM, role, ncols, 26);
        assert_eq!(t(Role::Output, 2304), GgmlDType::Q6K);
        assert_eq!(t(Role::Matrix, 2304), GgmlDType::Q4K);
        assert_eq!(t(Role::Vector, 2304), GgmlDType::F32);
        // use_more_bits(26): layers 0–2, 22–25 and every third from 3 (5, 8, …, 20).
        let more: Vec<usize> = (0..26).filter(|&i| use_more_bits(i, 26)).collect();
        assert_eq!(more, [0, 1, 2, 5, 8, 11, 14, 17, 20, 22, 23, 24, 25]);
        for i in 0..26 {
            let want = if more.contains(&i) {
                GgmlDType::Q6K
            } else {
                GgmlDType::Q4K
            };
            assert_eq!(t(Role::AttnV(i), 2304), want);
            assert_eq!(t(Role::FfnDown(i), 9216), want);
        }
    }

    #[test]
    fn rows_that_do_not_fit_a_block_fall_back_as_llama_cpp_does() {
        // The tiny model: rows of 64 and 160.
        let t = |q, role, ncols| tensor_type(q, role, ncols, 4);
        assert_eq!(t(Quant::Q4KM, Role::Matrix, 64), GgmlDType::Q5_0);
        assert_eq!(t(Quant::Q4KM, Role::AttnV(0), 64), GgmlDType::Q5_0);
        assert_eq!(t(Quant::Q4KM, Role::AttnV(3), 64), GgmlDType::Q8_0);
        assert_eq!(t(Quant::Q4KM, Role::Output, 64), GgmlDType::Q8_0);
        assert_eq!(t(Quant::Q4_0, Role::Output, 64), GgmlDType::Q8_0);
        assert_eq!(t(Quant::Q4_0, Role::Output, 512), GgmlDType::Q6K);
        assert_eq!(t(Quant::Q4_0, Role::Matrix, 48), GgmlDType::F16);
        assert_eq!(t(Quant::Q8_0, Role::Output, 512), GgmlDType::Q8_0);
        assert_eq!(t(Quant::F16, Role::Output, 50), GgmlDType::F16);
        assert_eq!(t(Quant::Bf16, Role::Matrix, 64), GgmlDType::BF16);
    }

    #[test]
    fn quant_names_parse_and_refuse_clearly() {
        for q in Quant::ALL {
            assert_eq!(q.name().parse::<Quant>().unwrap(), q);
        }
        let e = "q3_k".parse::<Quant>().unwrap_err();
        assert!(e.contains("q3_k") && e.contains("q4_k_m"), "{e}");
    }

    /// Every type the exporter can pick round-trips through candle's dequantizer within the
    /// error its block format allows (relative to the row's largest value).
    #[test]
    fn encoding_matches_candles_dequantize() {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (8, 512), &dev).unwrap();
        let amax = crate::model::max_abs(&x);
        for (t, tol) in [
            (GgmlDType::F32, 0.0),
            (GgmlDType::F16, 1e-3),
            (GgmlDType::BF16, 8e-3),
            (GgmlDType::Q8_0, 1.0 / 127.0),
            (GgmlDType::Q6K, 1.0 / 31.0),
            (GgmlDType::Q5_0, 1.0 / 15.0),
            (GgmlDType::Q4K, 1.0 / 7.0),
            (GgmlDType::Q4_0, 1.0 / 7.0),
        ] {
            let q = encode(&x, t).unwrap();
            assert_eq!(q.dtype(), t);
            assert_eq!(q.shape().dims(), [8, 512]);
            let n = 8 * 512 / t.block_size();
            assert_eq!(q.storage_size_in_bytes(), n * t.type_size(), "{t:?}");
            let back = q.dequantize(&dev).unwrap();
            let d = crate::model::max_abs_diff(&back, &x);
            assert!(d <= tol * amax, "{t:?}: max error {d} > {}", tol * amax);
            // Quantization is lossy but not random: the error is far below the signal.
            let rel = ((&back - &x).unwrap().sqr().unwrap().sum_all().unwrap())
                .to_scalar::<f32>()
                .unwrap()
                / x.sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
            assert!(rel < 0.02, "{t:?}: relative squared error {rel}");
        }
    }
}
