//! `socratune bench generate`: greedy decoding speed with the KV cache on a random model of
//! a preset shape, through the same `generate` the chat and the server use. The prompt's
//! forward pass (up to the first token) and the token-by-token decoding are timed apart.

use super::{ChatError, Result};
use crate::model::device::{device_name, parse_device, parse_dtype};
use crate::model::generate::{generate, SamplingParams};
use crate::model::{CausalLm, KvCache, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct GenerateBench {
    pub preset: String,
    /// Tokens to generate.
    pub tokens: usize,
    /// Tokens in the prompt.
    pub prompt_len: usize,
    pub device: String,
    pub dtype: String,
}

/// Rounds to `places` decimals (for a readable JSON line).
fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

pub fn bench_generate(o: &GenerateBench) -> Result<Value> {
    let cfg = ModelConfig::preset_or_list(&o.preset).map_err(ChatError::Invalid)?;
    if o.tokens < 2 || o.prompt_len == 0 {
        return Err(ChatError::Invalid(
            "--tokens must be at least 2 and --prompt-len at least 1".into(),
        ));
    }
    if o.prompt_len + o.tokens > cfg.max_position_embeddings {
        return Err(ChatError::Invalid(format!(
            "--prompt-len + --tokens = {} exceeds the preset's context of {}",
            o.prompt_len + o.tokens,
            cfg.max_position_embeddings
        )));
    }
    let device = parse_device(&o.device)?;
    let dtype = parse_dtype(&o.dtype, &device)?;
    let model = CausalLm::random(&cfg, 0, dtype, &device)?;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let prompt: Vec<u32> = (0..o.prompt_len)
        .map(|_| rng.random_range(3..cfg.vocab_size as u32))
        .collect();
    // No stop tokens: every run decodes exactly `tokens` tokens.
    let run = |prompt: &[u32], tokens: usize| -> Result<(Duration, Duration, usize)> {
        let params = SamplingParams::greedy(tokens);
        let start = Instant::now();
        let mut first = None;
        let (out, _) = generate(&model, &mut KvCache::new(), prompt, &params, &[], |_| {
            first.get_or_insert_with(|| start.elapsed());
            ControlFlow::Continue(())
        })?;
        device
            .synchronize()
            .map_err(crate::model::ModelError::from)?;
        let total = start.elapsed();
        let first = first.unwrap_or(total);
        Ok((first, total - first, out.len()))
    };
    // Untimed: kernels, allocations and caches warm up.
    run(&prompt[..prompt.len().min(8)], 2)?;
    let (prefill, decode, generated) = run(&prompt, o.tokens)?;
    let (prefill_s, decode_s) = (prefill.as_secs_f64(), decode.as_secs_f64());
    let decoded = generated.saturating_sub(1);
    Ok(json!({
        "bench": "generate",
        "impl": "socratune",
        "preset": o.preset,
        "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "parameters": cfg.parameter_count(),
        "prompt_len": o.prompt_len,
        "tokens": generated,
        "prefill_s": round(prefill_s, 4),
        "prefill_tokens_per_s": round(o.prompt_len as f64 / prefill_s, 1),
        "decode_s": round(decode_s, 4),
        "decode_tokens_per_s": round(decoded as f64 / decode_s, 1),
        "ms_per_token": round(decode_s * 1e3 / decoded.max(1) as f64, 3),
        "threads": rayon::current_num_threads(),
    }))
}
