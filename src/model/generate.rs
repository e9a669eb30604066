//! Decoding with the KV cache: greedy or sampled (temperature, top-p, top-k, repetition
//! penalty, seed), stopping at `<end_of_turn>` / EOS, streaming each token to a callback; or
//! several prompts at once, each with its own sampling ([`generate_batch`]).

use super::causal_lm::{BatchCache, CausalLm, KvCache};
use super::{ModelError, Result};
use candle_core::{DType, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Deserialize;
use std::ops::ControlFlow;

/// Sampling as asked — by `chat`'s flags, a config's `[sampling]` table (chat.toml,
/// eval.toml) or an API request — each field unset until [`SamplingRequest::resolve`] takes it
/// from the caller's defaults. `seed` is no `[sampling]` key: chat takes it from `--seed`,
/// eval from the config's own `seed`, serve from the request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingRequest {
    /// 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling; 1 turns it off.
    pub top_p: Option<f64>,
    /// The k most likely tokens; 0 turns it off.
    pub top_k: Option<usize>,
    /// 1 is none.
    pub repetition_penalty: Option<f32>,
    pub max_new_tokens: Option<usize>,
    #[serde(skip)]
    pub seed: Option<u64>,
}

impl SamplingRequest {
    /// `self`, each unset field taken from `fallback` (flags over a config file).
    pub fn or(&self, fallback: &Self) -> Self {
        Self {
            temperature: self.temperature.or(fallback.temperature),
            top_p: self.top_p.or(fallback.top_p),
            top_k: self.top_k.or(fallback.top_k),
            repetition_penalty: self.repetition_penalty.or(fallback.repetition_penalty),
            max_new_tokens: self.max_new_tokens.or(fallback.max_new_tokens),
            seed: self.seed.or(fallback.seed),
        }
    }

    /// The parameters: each unset field from `defaults` (which also give `repeat_last_n` and
    /// `min_new_tokens`), top-p 1 and top-k 0 as "off" (as in most tools), then validated.
    pub fn resolve(&self, defaults: &SamplingParams) -> Result<SamplingParams> {
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(defaults.temperature),
            top_p: self.top_p.or(defaults.top_p).filter(|&p| p != 1.0),
            top_k: self.top_k.or(defaults.top_k).filter(|&k| k != 0),
            repetition_penalty: self
                .repetition_penalty
                .unwrap_or(defaults.repetition_penalty),
            seed: self.seed.unwrap_or(defaults.seed),
            max_new_tokens: self.max_new_tokens.unwrap_or(defaults.max_new_tokens),
            ..defaults.clone()
        };
        p.validate()?;
        Ok(p)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy.
    pub temperature: f64,
    pub top_p: Option<f64>,
    pub top_k: Option<usize>,
    /// 1.0 means none.
    pub repetition_penalty: f32,
    /// How many recent tokens the repetition penalty looks at.
    pub repeat_last_n: usize,
    pub seed: u64,
    pub max_new_tokens: usize,
    /// Stop tokens are suppressed until this many tokens were generated (as transformers'
    /// `min_new_tokens`).
    pub min_new_tokens: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 0.7,
            top_p: Some(0.95),
            top_k: Some(64),
            repetition_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
            max_new_tokens: 256,
            min_new_tokens: 0,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            max_new_tokens,
            ..Default::default()
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(ModelError::Invalid(m));
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return bad(format!("temperature must be ≥ 0, got {}", self.temperature));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return bad(format!("top_p must be in (0, 1], got {p}"));
            }
        }
        if self.top_k == Some(0) {
            return bad("top_k must be at least 1".into());
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return bad(format!(
                "repetition penalty must be > 0, got {}",
                self.repetition_penalty
            ));
        }
        Ok(())
    }

    fn processor(&self) -> LogitsProcessor {
        let temperature = self.temperature;
        let sampling = if temperature <= 0.0 {
            Sampling::ArgMax
        } else {
            match (self.top_k, self.top_p) {
                (None, None) => Sampling::All { temperature },
                (Some(k), None) => Sampling::TopK { k, temperature },
                (None, Some(p)) => Sampling::TopP { p, temperature },
                (Some(k), Some(p)) => Sampling::TopKThenTopP { k, p, temperature },
            }
        };
        LogitsProcessor::from_sampling(self.seed, sampling)
    }
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// A stop token was produced (it is not part of the output).
    StopToken(u32),
    MaxTokens,
    /// The callback asked to stop.
    Callback,
}

/// One sequence's sampling: its own seeded sampler, the tokens the repetition penalty looks
/// at, what it generated. A row's tokens depend on its logits and its own seed only, so it
/// samples the same alone or in a batch.
struct Row<'p> {
    params: &'p SamplingParams,
    processor: LogitsProcessor,
    history: Vec<u32>,
    out: Vec<u32>,
}

/// What a row did with its logits.
enum Step {
    Token(u32),
    Done(Stop),
}

impl<'p> Row<'p> {
    fn new(prompt: &[u32], params: &'p SamplingParams) -> Result<Self> {
        params.validate()?;
        Ok(Self {
            params,
            processor: params.processor(),
            history: prompt.to_vec(),
            out: Vec::new(),
        })
    }

    /// Samples the next token from the f32 logits `[vocab]`.
    fn step(&mut self, logits: &Tensor, stop_tokens: &[u32]) -> Result<Step> {
        let params = self.params;
        if self.full() {
            return Ok(Step::Done(Stop::MaxTokens));
        }
        let mut l = logits.to_dtype(DType::F32)?;
        if params.repetition_penalty != 1.0 {
            let start = self.history.len().saturating_sub(params.repeat_last_n);
            l = candle_transformers::utils::apply_repeat_penalty(
                &l,
                params.repetition_penalty,
                &self.history[start..],
            )?;
        }
        if self.out.len() < params.min_new_tokens && !stop_tokens.is_empty() {
            l = suppress(&l, stop_tokens)?;
        }
        let next = self.processor.sample(&l)?;
        if stop_tokens.contains(&next) {
            return Ok(Step::Done(Stop::StopToken(next)));
        }
        self.out.push(next);
        self.history.push(next);
        Ok(Step::Token(next))
    }

    /// Whether it generated `max_new_tokens` already.
    fn full(&self) -> bool {
        self.out.len() >= self.params.max_new_tokens
    }
}

/// Continues `prompt` (appended to whatever `cache` holds) and calls `on_token` with each new
/// token. Returns the new tokens (without the stop token) and why it stopped. On return the
/// cache holds the prompt and every generated token except the last one produced.
pub fn generate(
    model: &CausalLm,
    cache: &mut KvCache,
    prompt: &[u32],
    params: &SamplingParams,
    stop_tokens: &[u32],
    mut on_token: impl FnMut(u32) -> ControlFlow<()>,
) -> Result<(Vec<u32>, Stop)> {
    let mut row = Row::new(prompt, params)?;
    let mut logits = model.forward_cached(prompt, cache)?;
    loop {
        let next = match row.step(&logits, stop_tokens)? {
            Step::Token(t) => t,
            Step::Done(why) => return Ok((row.out, why)),
        };
        if on_token(next).is_break() {
            return Ok((row.out, Stop::Callback));
        }
        if row.full() {
            return Ok((row.out, Stop::MaxTokens));
        }
        logits = model.forward_cached(&[next], cache)?;
    }
}

/// Continues every prompt at once (one KV cache with a row per prompt, see
/// [`crate::model::BatchCache`]), each with its own sampling and seed; a row leaves the batch
/// when it stops. Returns, per prompt, what [`generate`] would: the new tokens and why it
/// stopped.
pub fn generate_batch(
    model: &CausalLm,
    prompts: &[&[u32]],
    params: &[SamplingParams],
    stop_tokens: &[u32],
) -> Result<Vec<(Vec<u32>, Stop)>> {
    if prompts.len() != params.len() {
        return Err(ModelError::Invalid(format!(
            "{} prompts with {} sampling settings",
            prompts.len(),
            params.len()
        )));
    }
    let mut rows = prompts
        .iter()
        .zip(params)
        .map(|(p, s)| Row::new(p, s))
        .collect::<Result<Vec<_>>>()?;
    let mut done: Vec<Option<Stop>> = vec![None; rows.len()];
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    // The prompt of each row still in the batch, by its place in the cache.
    let mut live: Vec<usize> = (0..rows.len()).collect();
    let mut cache = BatchCache::new();
    let mut logits = model.forward_batch(prompts, &mut cache)?;
    loop {
        let mut keep = Vec::with_capacity(live.len());
        let mut next = Vec::with_capacity(live.len());
        for (i, &r) in live.iter().enumerate() {
            let row = &mut rows[r];
            let why = match row.step(&logits.get(i)?, stop_tokens)? {
                Step::Token(t) if !row.full() => {
                    next.push([t]);
                    None
                }
                Step::Token(_) => Some(Stop::MaxTokens),
                Step::Done(why) => Some(why),
            };
            keep.push(why.is_none());
            done[r] = why;
        }
        if next.is_empty() {
            break;
        }
        if keep.contains(&false) {
            cache.retain(&keep)?;
            let mut k = keep.iter();
            live.retain(|_| *k.next().unwrap_or(&false));
        }
        let feed: Vec<&[u32]> = next.iter().map(|t| t.as_slice()).collect();
        logits = model.forward_batch(&feed, &mut cache)?;
    }
    Ok(rows
        .into_iter()
        .zip(done)
        .map(|(row, why)| (row.out, why.unwrap_or(Stop::MaxTokens)))
        .collect())
}

fn suppress(logits: &Tensor, tokens: &[u32]) -> Result<Tensor> {
    let mut v = logits.to_vec1::<f32>()?;
    for &t in tokens {
        if let Some(x) = v.get_mut(t as usize) {
            *x = f32::NEG_INFINITY;
        }
    }
    Ok(Tensor::from_vec(v, logits.shape(), logits.device())?)
}

/// The text of `tokens`, special tokens skipped.
pub fn decode(tokenizer: &tokenizers::Tokenizer, tokens: &[u32]) -> Result<String> {
    tokenizer
        .decode(tokens, true)
        .map_err(|e| ModelError::Invalid(format!("cannot decode tokens: {e}")))
}

/// Turns a token stream into text pieces, holding back incomplete UTF-8 (byte-fallback tokens)
/// until a whole character is there.
pub(crate) struct TextStream<'a> {
    tokenizer: &'a tokenizers::Tokenizer,
    tokens: Vec<u32>,
    printed: usize,
}

impl<'a> TextStream<'a> {
    pub fn new(tokenizer: &'a tokenizers::Tokenizer) -> Self {
        Self {
            tokenizer,
            tokens: Vec::new(),
            printed: 0,
        }
    }

    /// Adds a token; returns the newly completed text, if any.
    pub fn push(&mut self, token: u32) -> Result<Option<String>> {
        self.tokens.push(token);
        let text = self.decode()?;
        if text.len() > self.printed && !text.ends_with('\u{FFFD}') {
            let piece = text[self.printed..].to_string();
            self.printed = text.len();
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// All text so far.
    pub fn text(&self) -> Result<String> {
        self.decode()
    }

    fn decode(&self) -> Result<String> {
        decode(self.tokenizer, &self.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CausalLm, ModelConfig};
    use candle_core::Device;

    fn model() -> CausalLm {
        let cfg = ModelConfig::preset("tiny").unwrap();
        CausalLm::random(&cfg, 1, DType::F32, &Device::Cpu).unwrap()
    }

    fn run(m: &CausalLm, p: &SamplingParams, stop: &[u32]) -> (Vec<u32>, Stop) {
        generate(m, &mut KvCache::new(), &[2, 10, 11, 12], p, stop, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
    }

    #[test]
    fn a_request_falls_back_field_by_field_and_one_and_zero_mean_off() {
        let flags = SamplingRequest {
            temperature: Some(0.2),
            top_k: Some(0),
            seed: Some(9),
            ..Default::default()
        };
        let config: SamplingRequest =
            toml::from_str("temperature = 1.1\ntop_p = 1\nmax_new_tokens = 12\n").unwrap();
        let p = flags
            .or(&config)
            .resolve(&SamplingParams::default())
            .unwrap();
        assert_eq!(
            (p.temperature, p.top_p, p.top_k, p.seed, p.max_new_tokens),
            (0.2, None, None, 9, 12)
        );
        let d = SamplingParams::default();
        assert_eq!(SamplingRequest::default().resolve(&d).unwrap(), d);
        let bad = SamplingRequest {
            top_p: Some(1.5),
            ..Default::default()
        };
        let e = bad.resolve(&d).unwrap_err().to_string();
        assert!(e.contains("top_p must be in (0, 1], got 1.5"), "{e}");
        // `seed` is no `[sampling]` key.
        assert!(toml::from_str::<SamplingRequest>("seed = 1").is_err());
    }

    #[test]
    fn sampling_is_seeded_and_top_k_1_is_greedy() {
        let m = model();
        let sampled = SamplingParams {
            temperature: 1.5,
            top_p: None,
            top_k: None,
            max_new_tokens: 16,
            ..Default::default()
        };
        assert_eq!(run(&m, &sampled, &[]), run(&m, &sampled, &[]));
        let other = SamplingParams {
            seed: 99,
            ..sampled.clone()
        };
        assert_ne!(run(&m, &sampled, &[]).0, run(&m, &other, &[]).0);
        let greedy = run(&m, &SamplingParams::greedy(8), &[]);
        let k1 = SamplingParams {
            temperature: 0.9,
            top_k: Some(1),
            top_p: Some(0.9),
            max_new_tokens: 8,
            ..Default::default()
        };
        assert_eq!(run(&m, &k1, &[]), greedy);
        assert_eq!(greedy.1, Stop::MaxTokens);
    }

    #[test]
    fn stops_at_stop_tokens_unless_suppressed_and_when_the_callback_says() {
        let m = model();
        let greedy = run(&m, &SamplingParams::greedy(8), &[]).0;
        // The first token that did not occur before it.
        let k = (1..greedy.len())
            .find(|&k| !greedy[..k].contains(&greedy[k]))
            .unwrap_or(0);
        let stop = [greedy[k]];
        let (out, why) = run(&m, &SamplingParams::greedy(8), &stop);
        assert_eq!(why, Stop::StopToken(greedy[k]));
        assert_eq!(out, greedy[..k]);
        let forced = SamplingParams {
            min_new_tokens: 8,
            ..SamplingParams::greedy(8)
        };
        assert!(!run(&m, &forced, &stop).0.contains(&greedy[k]));
        let mut seen = Vec::new();
        let (out, why) = generate(
            &m,
            &mut KvCache::new(),
            &[2, 10, 11, 12],
            &SamplingParams::greedy(8),
            &[],
            |t| {
                seen.push(t);
                if seen.len() == 3 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        )
        .unwrap();
        assert_eq!(
            (out.len(), why, seen),
            (3, Stop::Callback, greedy[..3].to_vec())
        );
    }

    /// Batched generation gives each prompt exactly what one-at-a-time generation gives it:
    /// prompts of different lengths (padded), rows stopping at different times (stop token,
    /// their own max), greedy and sampled with each row's own seed and penalty, both kernel
    /// sets, and a sliding window shorter than the sequences.
    #[test]
    fn batched_generation_equals_one_at_a_time() {
        let mut cfg = ModelConfig::preset("tiny").unwrap();
        cfg.sliding_window = Some(6);
        let prompts: [&[u32]; 4] = [
            &[2, 10, 11],
            &[2, 40, 41, 42, 43, 44, 45, 46, 47],
            &[2],
            &[2, 90, 91, 92, 93],
        ];
        for kernels in [
            crate::model::Kernels::Fused,
            crate::model::Kernels::Reference,
        ] {
            let mut m = CausalLm::random_with_embedding_std(&cfg, 3, 0.5, DType::F32, &Device::Cpu)
                .unwrap();
            m.set_kernels(kernels).unwrap();
            let sampled = |seed, max| SamplingParams {
                temperature: 1.2,
                top_p: Some(0.9),
                top_k: None,
                seed,
                max_new_tokens: max,
                ..Default::default()
            };
            let settings = [
                vec![SamplingParams::greedy(12); 4],
                vec![
                    sampled(1, 12),
                    sampled(2, 5),
                    SamplingParams {
                        repetition_penalty: 3.0,
                        ..sampled(3, 9)
                    },
                    SamplingParams {
                        min_new_tokens: 4,
                        ..sampled(1, 12)
                    },
                ],
            ];
            for params in settings {
                let alone = |stop: &[u32]| -> Vec<(Vec<u32>, Stop)> {
                    prompts
                        .iter()
                        .zip(&params)
                        .map(|(p, s)| {
                            generate(&m, &mut KvCache::new(), p, s, stop, |_| {
                                ControlFlow::Continue(())
                            })
                            .unwrap()
                        })
                        .collect()
                };
                // A stop token that ends one row early: the third token of the first row.
                let stop = [alone(&[])[0].0[2]];
                let want = alone(&stop);
                assert!(
                    want.iter().any(|(_, w)| *w == Stop::StopToken(stop[0])),
                    "{want:?}"
                );
                let got = generate_batch(&m, &prompts, &params, &stop).unwrap();
                assert_eq!(got, want, "{kernels:?}");
            }
        }
    }

    #[test]
    fn repetition_penalty_changes_a_repetitive_greedy_output() {
        let m = model();
        let plain = run(&m, &SamplingParams::greedy(12), &[]).0;
        let penalised = run(
            &m,
            &SamplingParams {
                repetition_penalty: 5.0,
                ..SamplingParams::greedy(12)
            },
            &[],
        )
        .0;
        let distinct = |v: &[u32]| v.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(
            distinct(&penalised) >= distinct(&plain),
            "{plain:?} vs {penalised:?}"
        );
        assert!(SamplingParams {
            top_p: Some(1.5),
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
