//! Greedy decoding with the KV cache: socratune's `generate` against candle-transformers'
//! `gemma2` on the same random weights and shape, in one process, runs alternated. Fails when
//! the two greedy continuations differ; prints decode tokens/s of each and the ratio.
//!
//!   cargo bench --bench decode_vs_candle -- [--preset small] [--prompt-len 32] [--tokens 64]
//!                                           [--repeats 3]
//!
//! The embedding is drawn wider than transformers' 0.02 (std 1): with the default a random
//! model's logits are nearly flat and the argmax of the two implementations could part on a
//! rounding difference, which would say nothing about either.

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma2 as reference;
use socratune::model::generate::{generate, SamplingParams};
use socratune::model::{CausalLm, KvCache, ModelConfig};
use std::collections::HashMap;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

struct Args {
    preset: String,
    prompt_len: usize,
    tokens: usize,
    repeats: usize,
}

fn args() -> Args {
    let mut a = Args {
        preset: "small".into(),
        prompt_len: 32,
        tokens: 64,
        repeats: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        // `cargo bench` passes `--bench` to every harness-less bench.
        if flag == "--bench" {
            continue;
        }
        let value = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = || -> usize {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag}: `{value}` is not a number"))
        };
        match flag.as_str() {
            "--preset" => a.preset = value.clone(),
            "--prompt-len" => a.prompt_len = num(),
            "--tokens" => a.tokens = num(),
            "--repeats" => a.repeats = num(),
            _ => panic!("unknown option {flag}"),
        }
    }
    assert!(a.tokens >= 2 && a.prompt_len >= 1 && a.repeats >= 1);
    a
}

/// (first token's time, the time of the other tokens, the tokens).
type Run = (Duration, Duration, Vec<u32>);

fn ours(model: &CausalLm, prompt: &[u32], tokens: usize) -> Run {
    let start = Instant::now();
    let mut first = None;
    let (out, _) = generate(
        model,
        &mut KvCache::new(),
        prompt,
        &SamplingParams::greedy(tokens),
        &[],
        |_| {
            first.get_or_insert_with(|| start.elapsed());
            ControlFlow::Continue(())
        },
    )
    .unwrap();
    let total = start.elapsed();
    let first = first.unwrap();
    (first, total - first, out)
}

fn argmax(logits: &Tensor) -> u32 {
    logits
        .flatten_all()
        .unwrap()
        .argmax(0)
        .unwrap()
        .to_scalar::<u32>()
        .unwrap()
}

/// candle-transformers' model driven as its examples do: prompt, then one token at a time.
fn theirs(model: &mut reference::Model, prompt: &[u32], tokens: usize) -> Run {
    model.clear_kv_cache();
    let dev = Device::Cpu;
    let start = Instant::now();
    let input = Tensor::new(prompt, &dev).unwrap().unsqueeze(0).unwrap();
    let mut next = argmax(&model.forward(&input, 0).unwrap().i((0, 0)).unwrap());
    let first = start.elapsed();
    let mut out = vec![next];
    let mut pos = prompt.len();
    while out.len() < tokens {
        let input = Tensor::new(&[next], &dev).unwrap().unsqueeze(0).unwrap();
        next = argmax(&model.forward(&input, pos).unwrap());
        pos += 1;
        out.push(next);
    }
    (first, start.elapsed() - first, out)
}

fn main() {
    // As the binary does, for both models alike.
    socratune::fpenv::flush_subnormals_everywhere();
    let a = args();
    let cfg = ModelConfig::preset(&a.preset).expect("preset: tiny, small or gemma-2-2b");
    assert_eq!(
        cfg.family.model_type(),
        "gemma2",
        "the reference is candle-transformers' gemma2: use a Gemma-2 preset"
    );
    assert!(
        a.prompt_len + a.tokens <= cfg.sliding_window.unwrap_or(usize::MAX),
        "candle-transformers' gemma2 has no sliding window in its cached path: stay within it"
    );
    assert_eq!(
        cfg.query_pre_attn_scalar, cfg.head_dim as f64,
        "candle-transformers' gemma2 scales by head_dim^-0.5 whatever query_pre_attn_scalar says"
    );
    let dev = Device::Cpu;
    let model = CausalLm::random_with_embedding_std(&cfg, 0, 1.0, DType::F32, &dev).unwrap();
    let weights: HashMap<String, Tensor> = model.named_weights().unwrap().into_iter().collect();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
    // candle-transformers reads `query_pre_attn_scalar` as an integer (equal to head_dim here).
    let mut hub = cfg.to_hub_json();
    hub["query_pre_attn_scalar"] = cfg.head_dim.into();
    let ref_cfg: reference::Config = serde_json::from_value(hub).unwrap();
    let mut candle = reference::Model::new(false, &ref_cfg, vb).unwrap();
    let prompt: Vec<u32> = (0..a.prompt_len)
        .map(|i| 3 + ((i * 7919 + 17) % (cfg.vocab_size - 3)) as u32)
        .collect();

    // Warm-up (allocations, pools), then alternate so that drift hits both alike.
    ours(&model, &prompt, 4);
    theirs(&mut candle, &prompt, 4);
    let (mut best_ours, mut best_theirs) = (Duration::MAX, Duration::MAX);
    let (mut first_ours, mut first_theirs) = (Duration::MAX, Duration::MAX);
    for r in 0..a.repeats {
        let (f1, d1, t1) = ours(&model, &prompt, a.tokens);
        let (f2, d2, t2) = theirs(&mut candle, &prompt, a.tokens);
        assert_eq!(t1, t2, "greedy tokens differ (repeat {r})");
        best_ours = best_ours.min(d1);
        best_theirs = best_theirs.min(d2);
        first_ours = first_ours.min(f1);
        first_theirs = first_theirs.min(f2);
        eprintln!(
            "repeat {r}: decode {:.2} ms/token (socratune) vs {:.2} (candle-transformers)",
            d1.as_secs_f64() * 1e3 / (a.tokens - 1) as f64,
            d2.as_secs_f64() * 1e3 / (a.tokens - 1) as f64
        );
    }
    let tps = |d: Duration| (a.tokens - 1) as f64 / d.as_secs_f64();
    println!(
        "preset {}, prompt {}, {} tokens, {} threads: greedy tokens identical",
        a.preset,
        a.prompt_len,
        a.tokens,
        rayon::current_num_threads()
    );
    println!(
        "prefill (to first token): {:.1} ms vs {:.1} ms",
        first_ours.as_secs_f64() * 1e3,
        first_theirs.as_secs_f64() * 1e3
    );
    println!(
        "decode tokens/s ratio (socratune / candle-transformers): {:.2}x  ({:.1} vs {:.1}, best of {})",
        tps(best_ours) / tps(best_theirs),
        tps(best_ours),
        tps(best_theirs),
        a.repeats
    );
}
