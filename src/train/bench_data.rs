//! `socratune bench train --data train.jsonl`: what each batching layout costs on real
//! lengths. For every layout, the padding share and the steps of a whole epoch are exact
//! (computed from the lengths); tokens/s is measured on a random Gemma-2 of a preset shape by
//! running optimizer steps on micro-batches drawn evenly across the epoch, and counts only
//! real tokens, so the layouts compare by the time an epoch takes.

use super::adamw::AdamW;
use super::batching::{padding, Batching, MicroBatch, Plan};
use super::bench::BenchModel;
use super::data::{load_examples, Example};
use super::trainer::{make_batch, optimizer_step};
use super::TrainError;
use crate::model::device::device_name;
use crate::model::loss::IGNORE;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct DataBenchOptions {
    pub data: PathBuf,
    pub preset: String,
    pub device: String,
    /// Examples a micro-batch in the `padded` and `grouped` layouts.
    pub micro_batch: usize,
    /// The budget of the token-budget layouts (default: `micro_batch` × the longest example,
    /// the worst case of the padded layout, so that every layout has the same memory bound).
    pub micro_batch_tokens: Option<usize>,
    /// The longest row of the `packed` layout (rows are also bounded by the token budget;
    /// default: the budget, one row a micro-batch, as the shipped config packs).
    pub max_seq_len: Option<usize>,
    /// Micro-batches an optimizer step (for steps per epoch only; each timed micro-batch is
    /// its own step).
    pub grad_accum: usize,
    /// Micro-batches timed per layout.
    pub steps: usize,
    /// Untimed micro-batches first (per layout).
    pub warmup: usize,
    /// The layouts to measure, by name (empty: all of [`LAYOUTS`]).
    pub layouts: Vec<String>,
    /// Rebuild the corpus with these lengths before measuring (see [`profile_corpus`]).
    pub length_profile: Option<LengthProfile>,
    pub seed: u64,
    /// LoRA dropout (the reference runs none; training's default is 0.05).
    pub lora_dropout: f32,
}

/// A triangular length distribution (min, mode, max); its mean is (min + mode + max) / 3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LengthProfile {
    pub min: usize,
    pub mode: usize,
    pub max: usize,
}

impl std::str::FromStr for LengthProfile {
    type Err = String;

    /// `MIN,MODE,MAX`, e.g. `60,203,535` (the seed's model1: mean 266, longest 535).
    fn from_str(s: &str) -> Result<Self, String> {
        let v: Vec<usize> = s
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("`{s}`: expected MIN,MODE,MAX token counts, e.g. 60,203,535"))?;
        match v[..] {
            [min, mode, max] if 2 <= min && min <= mode && mode <= max && min < max => {
                Ok(Self { min, mode, max })
            }
            _ => Err(format!(
                "`{s}`: expected three token counts MIN ≤ MODE ≤ MAX with MIN ≥ 2 and MIN < MAX"
            )),
        }
    }
}

impl LengthProfile {
    /// The `q`-quantile (0 ≤ q ≤ 1) of the distribution.
    fn quantile(&self, q: f64) -> f64 {
        let (a, c, b) = (self.min as f64, self.mode as f64, self.max as f64);
        let fc = (c - a) / (b - a);
        if q < fc {
            a + (q * (b - a) * (c - a)).sqrt()
        } else {
            b - ((1.0 - q) * (b - a) * (b - c)).sqrt()
        }
    }
}

/// A corpus of `examples.len()` examples whose lengths follow `profile`, made from `examples`
/// by concatenating whole examples (their turns, each with its own loss mask; the BOS of
/// every example after the first dropped) until the target length is reached, then cutting
/// tokens from the left after the BOS, so that each example ends on a whole model turn.
///
/// The targets are the profile's quantiles at i / (n − 1), so the shortest is exactly `min`
/// and the longest exactly `max`, shuffled with `seed`. Sources are taken in a seeded
/// order, cycling, one new starting source per example; a target whose cut would leave no
/// trained token starts from the next source instead.
pub fn profile_corpus(
    examples: &[Example],
    profile: LengthProfile,
    seed: u64,
) -> Result<Vec<Example>, TrainError> {
    let n = examples.len();
    let mut targets: Vec<usize> = (0..n)
        .map(|i| {
            let q = if n > 1 {
                i as f64 / (n - 1) as f64
            } else {
                1.0
            };
            profile.quantile(q).round() as usize
        })
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    targets.shuffle(&mut rng);
    let mut sources: Vec<usize> = (0..n).collect();
    sources.shuffle(&mut rng);
    let mut next = 0usize;
    let mut out = Vec::with_capacity(n);
    for (k, &target) in targets.iter().enumerate() {
        let mut made = None;
        for _ in 0..n {
            let (mut ids, mut labels) = (Vec::new(), Vec::new());
            let mut j = next;
            while ids.len() < target {
                let e = &examples[sources[j % n]];
                let skip = usize::from(!ids.is_empty());
                ids.extend_from_slice(&e.input_ids[skip..]);
                labels.extend_from_slice(&e.labels[skip..]);
                j += 1;
            }
            // Cut from the left, BOS kept first (as `data build --overflow truncate`): the
            // example ends on a whole model turn, which is trained.
            let cut = ids.len() - target;
            ids.drain(1..=cut);
            labels.drain(1..=cut);
            next += 1;
            if labels.iter().skip(1).any(|&l| l != IGNORE) {
                made = Some((ids, labels));
                break;
            }
        }
        let Some((input_ids, labels)) = made else {
            return Err(TrainError::Data(format!(
                "no example of {target} tokens with a trained token can be cut from the data; raise the profile's MIN"
            )));
        };
        out.push(Example {
            id: format!("profile-{k}"),
            dialogue: String::new(),
            input_ids,
            labels,
        });
    }
    Ok(out)
}

/// The layouts measured, in order: (name, batching, with the token budget, packed).
pub const LAYOUTS: [(&str, Batching, bool, bool); 5] = [
    ("padded", Batching::Random, false, false),
    ("grouped", Batching::Grouped, false, false),
    ("budget_padded", Batching::Random, true, false),
    ("budget_grouped", Batching::Grouped, true, false),
    ("packed", Batching::Random, true, true),
];

pub fn bench_data(o: &DataBenchOptions) -> Result<Value, TrainError> {
    for (name, v) in [
        ("--steps", o.steps),
        ("--micro-batch", o.micro_batch),
        ("--grad-accum", o.grad_accum),
    ] {
        if v == 0 {
            return Err(TrainError::Config(format!("{name} must be at least 1")));
        }
    }
    if let Some(l) = o
        .layouts
        .iter()
        .find(|l| !LAYOUTS.iter().any(|k| k.0 == l.as_str()))
    {
        let known: Vec<&str> = LAYOUTS.iter().map(|k| k.0).collect();
        return Err(TrainError::Config(format!(
            "--layouts: no layout `{l}` (known: {})",
            known.join(", ")
        )));
    }
    let cfg = BenchModel::config(&o.preset)?;
    let file = load_examples(&o.data, cfg.max_position_embeddings)?;
    let mut examples = match o.length_profile {
        Some(p) => profile_corpus(&file.examples, p, o.seed)?,
        None => file.examples,
    };
    // The preset's vocabulary may be smaller than the data's tokenizer's: ids are folded into
    // it (the speed does not depend on which ids they are; the lengths and masks are kept).
    let vocab = cfg.vocab_size as u32;
    for e in &mut examples {
        for (id, l) in e.input_ids.iter_mut().zip(e.labels.iter_mut()) {
            *id %= vocab;
            if *l != IGNORE {
                *l = *id as i64;
            }
        }
    }
    let lengths: Vec<usize> = examples.iter().map(|e| e.input_ids.len()).collect();
    let longest = *lengths
        .iter()
        .max()
        .expect("load_examples refuses empty files");
    let budget = o.micro_batch_tokens.unwrap_or(o.micro_batch * longest);
    if budget < longest {
        return Err(TrainError::Config(format!(
            "--micro-batch-tokens {budget} is less than the longest example ({longest} tokens)"
        )));
    }

    let BenchModel {
        cfg,
        model,
        mut opt,
        device,
        dtype,
    } = BenchModel::new(cfg, &o.device, o.lora_dropout)?;
    let pad = cfg.pad_token_id.unwrap_or(0);

    // Every layout's plan and the micro-batches it times, evenly spaced across the epoch so
    // that the sample has the epoch's mix of lengths.
    struct Run {
        name: &'static str,
        batching: Batching,
        with_budget: bool,
        pack: bool,
        plan: Plan,
        batches: Vec<MicroBatch>,
        timed: Vec<usize>,
        secs: f64,
        real: usize,
        padded: usize,
    }
    let mut runs = Vec::new();
    for (name, batching, with_budget, pack) in LAYOUTS {
        if !o.layouts.is_empty() && !o.layouts.iter().any(|l| l == name) {
            continue;
        }
        let plan = Plan::new(
            &examples,
            &o.data,
            o.micro_batch,
            o.grad_accum,
            with_budget.then_some(budget),
            batching,
            pack.then_some(o.max_seq_len.unwrap_or(budget)),
            o.seed,
        )?;
        let batches = plan.epoch_micro_batches(0);
        let n = o.steps.min(batches.len());
        let timed = (0..n).map(|k| k * batches.len() / n).collect();
        runs.push(Run {
            name,
            batching,
            with_budget,
            pack,
            plan,
            batches,
            timed,
            secs: 0.0,
            real: 0,
            padded: 0,
        });
    }
    let step = |r: &Run, b: &MicroBatch, opt: &mut AdamW| -> Result<f64, TrainError> {
        let mb = [make_batch(
            &examples,
            b,
            r.pack,
            pad,
            cfg.vocab_size,
            &device,
        )?];
        let start = Instant::now();
        optimizer_step(&model, opt, &mb, |_| 0, 1e-4, 0.0)?;
        device.synchronize()?;
        Ok(start.elapsed().as_secs_f64())
    };
    for r in &runs {
        for b in r.batches.iter().take(o.warmup) {
            step(r, b, &mut opt)?;
        }
    }
    // The layouts take turns, one micro-batch each, so that a change in the machine's load
    // during the run weighs on all of them alike (their ratios are what the bench is for).
    for k in 0..o.steps {
        for r in runs.iter_mut() {
            let Some(&i) = r.timed.get(k) else { continue };
            let secs = step(r, &r.batches[i], &mut opt)?;
            r.secs += secs;
            let (real, padded) = padding(&lengths, std::slice::from_ref(&r.batches[i]));
            r.real += real;
            r.padded += padded;
        }
    }
    let epoch_s = |r: &Run| padding(&lengths, &r.batches).0 as f64 * r.secs / r.real as f64;
    let base = |name: &str| runs.iter().find(|r| r.name == name).map(epoch_s);
    let (vs_padded, vs_budget_padded) = (base("padded"), base("budget_padded"));
    let mut layouts = serde_json::Map::new();
    for r in &runs {
        let (real, padded) = padding(&lengths, &r.batches);
        let max_tokens = r
            .batches
            .iter()
            .map(|b| padding(&lengths, std::slice::from_ref(b)).1)
            .max()
            .unwrap_or(0);
        let tps = r.real as f64 / r.secs;
        let epoch = epoch_s(r);
        let vs = |base: Option<f64>| base.map(|b| round4(b / epoch));
        layouts.insert(
            r.name.into(),
            json!({
                "batching": if r.pack { json!("packed") } else { json!(format!("{:?}", r.batching).to_lowercase()) },
                "row_tokens": r.plan.pack,
                "micro_batch": if r.with_budget { Value::Null } else { json!(o.micro_batch) },
                "micro_batch_tokens": if r.with_budget { json!(budget) } else { Value::Null },
                "micro_batches_per_epoch": r.batches.len(),
                "steps_per_epoch": r.plan.steps_in_epoch(0),
                "padding_share": round4(1.0 - real as f64 / padded as f64),
                "max_micro_batch_tokens": max_tokens,
                "timed_micro_batches": r.timed.len(),
                "timed_padding_share": round4(1.0 - r.real as f64 / r.padded as f64),
                "real_tokens_per_s": (tps * 10.0).round() / 10.0,
                "epoch_s": (epoch * 10.0).round() / 10.0,
                "speedup_vs_padded": vs(vs_padded),
                "speedup_vs_budget_padded": vs(vs_budget_padded),
            }),
        );
    }
    let mean = lengths.iter().sum::<usize>() as f64 / lengths.len() as f64;
    Ok(json!({
        "impl": "socratune",
        "bench": "train-data",
        "preset": o.preset,
        "device": device_name(&device),
        "dtype": format!("{dtype:?}").to_lowercase(),
        "data": o.data.display().to_string(),
        "length_profile": o.length_profile.map(|p| json!([p.min, p.mode, p.max])),
        "examples": lengths.len(),
        "mean_tokens": (mean * 10.0).round() / 10.0,
        "max_tokens": longest,
        "min_tokens": lengths.iter().min(),
        "grad_accum": o.grad_accum,
        "lora_dropout": o.lora_dropout,
        "threads": rayon::current_num_threads(),
        "layouts": layouts,
    }))
}

fn round4(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(i: usize, user: usize, model: usize) -> Example {
        let n = 1 + user + model;
        Example {
            id: format!("e{i}"),
            dialogue: String::new(),
            input_ids: (0..n as u32).map(|t| 2 + t % 50).collect(),
            labels: (0..n).map(|t| if t <= user { IGNORE } else { 7 }).collect(),
        }
    }

    #[test]
    fn the_profile_corpus_has_the_profile_and_trains_tokens() {
        let src: Vec<Example> = (0..200).map(|i| ex(i, 10 + i % 30, 20 + i % 40)).collect();
        let p: LengthProfile = "60,203,535".parse().unwrap();
        let c = profile_corpus(&src, p, 1).unwrap();
        let lens: Vec<usize> = c.iter().map(|e| e.input_ids.len()).collect();
        assert_eq!(lens.len(), 200);
        assert_eq!(*lens.iter().min().unwrap(), 60);
        assert_eq!(*lens.iter().max().unwrap(), 535);
        let mean = lens.iter().sum::<usize>() as f64 / 200.0;
        assert!((mean - 266.0).abs() < 2.0, "{mean}");
        assert!(c
            .iter()
            .all(|e| e.supervised() > 0 && e.labels.len() == e.input_ids.len()));
        assert_eq!(c, profile_corpus(&src, p, 1).unwrap());
        assert!("60,20,535".parse::<LengthProfile>().is_err());
        assert!("60,203".parse::<LengthProfile>().is_err());
    }
}
