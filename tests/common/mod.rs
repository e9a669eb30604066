//! Helpers shared by the integration tests.
#![allow(dead_code)]

use candle_core::Tensor;
use std::path::PathBuf;

/// The Gemma-2 fixture: `GEMMA2_FIXTURE`, or the repository's own `tests/fixtures/gemma2-tiny`
/// (made by `scripts/make_gemma2_fixture.py`).
pub fn fixture() -> PathBuf {
    match std::env::var("GEMMA2_FIXTURE") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma2-tiny"),
    }
}

/// max |a − b| over all elements.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}
