//! The training loop of one run: token-weighted loss exact under gradient accumulation,
//! AdamW, clipping, schedule, evaluation, checkpoints, exact resume, early stopping.

use super::adamw::{AdamW, AdamWParams};
use super::batching::Plan;
use super::checkpoint::{self, State};
use super::config::TrainConfig;
use super::data::{load_examples, Example};
use super::metrics::{Begin, Event, MetricsLog};
use super::schedule::learning_rate;
use super::TrainError;
use crate::fsutil::{sha256_hex, write_atomic, write_json};
use crate::lock::RunLock;
use crate::model::device::{device_name, parse_device, parse_dtype};
use crate::model::lora::Mode;
use crate::model::loss::{loss_sum, Batch};
use crate::model::{load, CausalLm, Source};
use crate::rundir::{DataDir, RunDir};
use candle_core::{DType, Device, Tensor};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// One run to train.
pub struct RunSpec {
    /// The variant's name (for messages and the summary).
    pub name: String,
    pub config: TrainConfig,
    /// Holds `train.jsonl` and `val.jsonl`.
    pub data_dir: DataDir,
    /// `runs/<variant>`: checkpoints, adapters, metrics and summary go here.
    pub out_dir: RunDir,
    /// Continue from the newest valid checkpoint.
    pub resume: bool,
    /// Discard an earlier run's outputs in `out_dir` (never its data).
    pub fresh: bool,
    /// Show a progress bar (on a terminal); otherwise plain log lines.
    pub progress: bool,
    /// Set (e.g. by Ctrl-C) to stop after the current step with a checkpoint.
    pub interrupt: Option<Arc<AtomicBool>>,
}

/// `summary.json`: what the run achieved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub variant: String,
    /// `completed` or `early_stopped`.
    pub status: String,
    pub best_val_loss: f64,
    pub final_val_loss: f64,
    pub best_step: usize,
    pub steps: usize,
    pub epochs: f64,
    pub train_examples: usize,
    pub val_examples: usize,
    pub tokens_trained: usize,
    pub supervised_tokens_trained: usize,
    pub wall_time_s: f64,
    pub model: String,
    pub device: String,
    pub dtype: String,
    pub config_sha256: String,
    pub data_sha256: String,
    /// Mean loss per model-turn token over the whole held-out dialogues (`common.jsonl`), with
    /// the best adapter: comparable across variants.
    #[serde(default)]
    pub common_val_loss: Option<f64>,
    #[serde(default)]
    pub common_tokens: Option<usize>,
}

/// Runs (or resumes) one training run to the end.
pub fn train(spec: RunSpec) -> Result<Summary, TrainError> {
    let cfg = &spec.config;
    cfg.validate()?;
    let lora = cfg.lora()?;
    let train_file = load_examples(&spec.data_dir.train(), cfg.max_seq_len)?;
    let val_file = load_examples(&spec.data_dir.val(), cfg.max_seq_len)?;
    let data_sha = sha256_hex(format!("{}{}", train_file.sha256, val_file.sha256).as_bytes());
    let (train_ex, val_ex) = (&train_file.examples, &val_file.examples);

    let out = &spec.out_dir;
    // Held to the end of the run: a second train (or sweep) on this folder is refused, and
    // `--fresh` can never delete a live run's files.
    let lock = RunLock::acquire(out.root(), &format!("train {}", spec.name))?;
    if let Some(h) = &lock.stale {
        eprintln!(
            "{}: taking over the lock left by {h}, which is gone (crashed or killed)",
            out.root().display()
        );
    }
    let ckpt_dir = out.checkpoints();
    if spec.fresh {
        let (dirs, files) = out.outputs();
        for p in dirs {
            if p.exists() {
                std::fs::remove_dir_all(&p).map_err(|e| TrainError::io(&p, e))?;
            }
        }
        for p in files {
            let _ = std::fs::remove_file(p);
        }
    }
    // Resuming a finished run with the same config and data has nothing left to do.
    if spec.resume {
        if let Some(done) = read_summary(out) {
            let same_config = done.config_sha256
                == sha256_hex(
                    serde_json::to_string_pretty(cfg)
                        .expect("config serializes")
                        .as_bytes(),
                );
            if same_config && done.data_sha256 == data_sha {
                eprintln!(
                    "{}: already finished ({} steps); nothing to resume",
                    spec.name, done.steps
                );
                return Ok(done);
            }
        }
    }
    let resume_from = if spec.resume {
        let (found, skipped) = checkpoint::newest_valid(&ckpt_dir);
        for s in skipped {
            eprintln!("warning: {s}");
        }
        if found.is_none() {
            eprintln!(
                "{}: no checkpoint to resume from; starting from scratch",
                spec.name
            );
        }
        found
    } else {
        let finished = out.summary().exists();
        if finished || !checkpoint::list(&ckpt_dir).is_empty() {
            return Err(TrainError::Exists {
                run: out.root().display().to_string(),
                state: if finished { "finished" } else { "interrupted" }.into(),
            });
        }
        None
    };
    if let Some((path, state)) = &resume_from {
        let conflicts = cfg.resume_conflicts(&state.config);
        if !conflicts.is_empty() {
            return Err(TrainError::Resume {
                run: out.root().display().to_string(),
                reason: format!(
                    "the config changed since {}: {}",
                    path.display(),
                    conflicts.join(", ")
                ),
            });
        }
        if state.data_sha256 != data_sha {
            return Err(TrainError::Resume {
                run: out.root().display().to_string(),
                reason: format!(
                    "the data in {} changed since {} (sha256 {} → {})",
                    spec.data_dir.root().display(),
                    path.display(),
                    short(&state.data_sha256),
                    short(&data_sha)
                ),
            });
        }
    }

    let device = parse_device(&cfg.device)?;
    let src = Source::parse(&cfg.model, cfg.revision.as_deref())?;
    // Full-parameter training keeps f32 master weights whatever `dtype` says.
    let dtype = if cfg.full {
        DType::F32
    } else {
        parse_dtype(&cfg.dtype, &device)?
    };
    let mut model = load(&src, dtype, &device)?;
    let vocab = model.cfg.vocab_size;
    let pad = model.cfg.pad_token_id.unwrap_or(0);
    // The one seam between the two kinds of run: what is trainable, and what gets written.
    let tuned = if cfg.full {
        check_full_fits(&model, cfg, &device)?;
        Tuned::Full(src.clone())
    } else {
        model.attach_lora(&lora, cfg.seed)?;
        Tuned::Lora(lora.clone())
    };
    let params = match &tuned {
        Tuned::Lora(_) => model.lora_vars(),
        Tuned::Full(_) => model.make_trainable()?,
    };
    let hp = AdamWParams {
        beta1: cfg.adam_beta1,
        beta2: cfg.adam_beta2,
        eps: cfg.adam_eps,
        weight_decay: cfg.weight_decay,
    };
    let mut opt = AdamW::new(params, hp)?;

    let plan = Plan::new(
        train_ex,
        &spec.data_dir.train(),
        cfg.micro_batch,
        cfg.grad_accum,
        cfg.micro_batch_tokens,
        cfg.batching,
        cfg.pack.then_some(cfg.max_seq_len),
        cfg.seed,
    )?;
    let total = cfg
        .max_steps
        .unwrap_or_else(|| plan.total_steps(cfg.epochs));
    let warmup = cfg
        .warmup_steps
        .unwrap_or((cfg.warmup_ratio * total as f64).ceil() as usize);

    let mut state = match &resume_from {
        Some((path, s)) => {
            checkpoint::restore(path, &mut opt, s)?;
            s.clone()
        }
        None => State {
            step: 0,
            epoch: 0,
            step_in_epoch: 0,
            optimizer_t: 0,
            lr: 0.0,
            tokens_trained: 0,
            supervised_trained: 0,
            elapsed_s: 0.0,
            best_val_loss: None,
            best_step: None,
            evals_since_best: 0,
            last_val_loss: None,
            seed: cfg.seed,
            config: cfg.clone(),
            data_sha256: data_sha.clone(),
        },
    };
    state.config = cfg.clone();
    std::fs::create_dir_all(&ckpt_dir).map_err(|e| TrainError::io(&ckpt_dir, e))?;
    let cfg_json = serde_json::to_string_pretty(cfg).expect("config serializes");
    write_atomic(&out.config(), cfg_json.as_bytes())?;
    let mut metrics = MetricsLog::open(&out.metrics(), resume_from.as_ref().map(|(_, s)| s.step))?;
    let begin = Begin {
        step: state.step,
        total_steps: total,
        train_examples: train_ex.len(),
        val_examples: val_ex.len(),
        device: device_name(&device),
        dtype: format!("{dtype:?}"),
        model: cfg.model.clone(),
        variant: spec.name.clone(),
    };
    metrics.log(&if resume_from.is_some() {
        Event::Resume(begin)
    } else {
        Event::Start(begin)
    })?;
    let mut last_ckpt = resume_from.as_ref().map(|(p, _)| p.display().to_string());

    let bar = progress_bar(spec.progress, total, state.step, &spec.name);
    let log_every = (total / 20).max(1);
    let t0 = Instant::now();
    let base_elapsed = state.elapsed_s;
    let mut stopped_early = false;
    let mut last_eval_step = None;

    while state.step < total {
        let step_start = Instant::now();
        let (_, batches) = plan.step_batches(state.step);
        let lr = learning_rate(cfg.schedule, cfg.learning_rate, state.step, warmup, total);
        let batches = batches
            .iter()
            .map(|rows| make_batch(train_ex, rows, cfg.pack, pad, vocab, &device))
            .collect::<Result<Vec<_>, _>>()?;
        let step_no = state.step;
        let r = optimizer_step(
            &model,
            &mut opt,
            &batches,
            |micro| dropout_key(cfg.seed, step_no, micro),
            lr,
            cfg.max_grad_norm,
        )?;
        if !r.loss.is_finite() {
            return Err(TrainError::NonFinite {
                step: state.step + 1,
                value: r.loss,
                checkpoint: last_ckpt.clone().unwrap_or_else(|| "none".into()),
            });
        }
        let (loss, grad_norm, tokens) = (r.loss, r.grad_norm, r.tokens);
        state.step += 1;
        state.optimizer_t = opt.t;
        state.lr = lr;
        let pos = plan.locate(state.step);
        (state.epoch, state.step_in_epoch) = (pos.epoch, pos.within);
        state.tokens_trained += tokens;
        state.supervised_trained += r.supervised;
        state.elapsed_s = base_elapsed + t0.elapsed().as_secs_f64();
        let tps = tokens as f64 / step_start.elapsed().as_secs_f64().max(1e-9);
        metrics.log(&Event::Train {
            step: state.step,
            epoch: plan.epochs_done(state.step),
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_s: tps,
            elapsed_s: state.elapsed_s,
        })?;
        match &bar {
            Some(b) => {
                b.set_position(state.step as u64);
                b.set_message(format!("loss {loss:.4} · {tps:.0} tok/s"));
            }
            None if state.step % log_every == 0 || state.step == total => eprintln!(
                "{}: step {}/{} loss {loss:.4} lr {lr:.3e} grad-norm {grad_norm:.3} {tps:.0} tok/s",
                spec.name, state.step, total
            ),
            None => {}
        }

        let step = state.step;
        let at = |every: usize| every > 0 && step % every == 0 && step < total;
        if at(cfg.eval_every) {
            let v = evaluate(&model, val_ex, cfg.eval_batch, pad, vocab, &device)?;
            last_eval_step = Some(state.step);
            stopped_early = record_eval(&spec, &model, &tuned, &mut state, &mut metrics, v)?;
            log_line(
                &bar,
                format!("{}: step {} val loss {v:.4}", spec.name, state.step),
            );
        }
        let interrupted = spec
            .interrupt
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst));
        if at(cfg.save_every) || interrupted || stopped_early {
            let p = checkpoint::save(&ckpt_dir, &model, tuned.lora(), &opt, &state)?;
            checkpoint::prune(&ckpt_dir, cfg.keep_checkpoints)?;
            metrics.log(&Event::Checkpoint {
                step: state.step,
                path: p.display().to_string(),
            })?;
            last_ckpt = Some(p.display().to_string());
        }
        if interrupted {
            if let Some(b) = &bar {
                b.abandon();
            }
            return Err(TrainError::Interrupted {
                step: state.step,
                checkpoint: last_ckpt.unwrap_or_default(),
            });
        }
        if stopped_early {
            log_line(
                &bar,
                format!(
                    "{}: early stopping at step {} (no improvement in {} evaluations)",
                    spec.name, state.step, cfg.early_stopping_patience
                ),
            );
            break;
        }
    }

    if last_eval_step != Some(state.step) {
        let v = evaluate(&model, val_ex, cfg.eval_batch, pad, vocab, &device)?;
        record_eval(&spec, &model, &tuned, &mut state, &mut metrics, v)?;
    }
    state.elapsed_s = base_elapsed + t0.elapsed().as_secs_f64();
    let p = checkpoint::save(&ckpt_dir, &model, tuned.lora(), &opt, &state)?;
    checkpoint::prune(&ckpt_dir, cfg.keep_checkpoints)?;
    metrics.log(&Event::Checkpoint {
        step: state.step,
        path: p.display().to_string(),
    })?;
    let last = match &tuned {
        Tuned::Lora(_) => out.adapter(),
        Tuned::Full(_) => out.model(),
    };
    tuned.write(&last, &model, &cfg.model)?;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let common = common_metric(&spec, &mut model, &tuned, opt.params(), pad, vocab, &device)?;
    if let Some((loss, tokens)) = common {
        metrics.log(&Event::CommonEval {
            step: state.best_step.unwrap_or(state.step),
            common_val_loss: loss,
            tokens,
        })?;
    }
    let summary = Summary {
        variant: spec.name.clone(),
        status: if stopped_early {
            "early_stopped"
        } else {
            "completed"
        }
        .into(),
        best_val_loss: state.best_val_loss.unwrap_or(f64::NAN),
        final_val_loss: state.last_val_loss.unwrap_or(f64::NAN),
        best_step: state.best_step.unwrap_or(state.step),
        steps: state.step,
        epochs: plan.epochs_done(state.step),
        train_examples: train_ex.len(),
        val_examples: val_ex.len(),
        tokens_trained: state.tokens_trained,
        supervised_tokens_trained: state.supervised_trained,
        wall_time_s: state.elapsed_s,
        model: cfg.model.clone(),
        device: device_name(&device),
        dtype: format!("{dtype:?}").to_lowercase(),
        config_sha256: sha256_hex(cfg_json.as_bytes()),
        data_sha256: data_sha,
        common_val_loss: common.map(|c| c.0),
        common_tokens: common.map(|c| c.1),
    };
    metrics.log(&Event::End {
        step: state.step,
        status: summary.status.clone(),
        best_val_loss: summary.best_val_loss,
        final_val_loss: summary.final_val_loss,
        elapsed_s: summary.wall_time_s,
    })?;
    write_json(&out.summary(), &summary)?;
    Ok(summary)
}

/// What a run trains, and so what it writes: LoRA adapters on a frozen base (PEFT folders),
/// or every weight of the base (whole models in the Hub layout, config and tokenizer copied
/// from `Full`'s source).
enum Tuned {
    Lora(crate::model::LoraConfig),
    Full(Source),
}

impl Tuned {
    /// The adapter config, None for a full-parameter run (for checkpoints).
    fn lora(&self) -> Option<&crate::model::LoraConfig> {
        match self {
            Tuned::Lora(l) => Some(l),
            Tuned::Full(_) => None,
        }
    }

    /// Writes the trained result to the folder `dest` (`adapter/`, `model/`, `best/`).
    fn write(
        &self,
        dest: &std::path::Path,
        model: &CausalLm,
        base: &str,
    ) -> Result<(), TrainError> {
        match self {
            Tuned::Lora(l) => checkpoint::write_adapter_dir(dest, model, l, base),
            Tuned::Full(src) => checkpoint::write_model_dir(dest, model, src),
        }
    }
}

/// Bytes full-parameter training needs, roughly: every weight four times in f32 (the weight,
/// its gradient, AdamW's two moments) plus the activations one micro-batch keeps for the
/// backward (per layer and token: ~12 hidden-sized and ~4 intermediate-sized vectors and one
/// row of attention scores per head; the logits of every position).
pub fn full_training_bytes(
    cfg: &crate::model::ModelConfig,
    params: usize,
    micro: usize,
    seq: usize,
) -> u64 {
    let tokens = (micro * seq) as u64;
    let per_token = cfg.num_hidden_layers as u64
        * (12 * cfg.hidden_size + 4 * cfg.intermediate_size + 2 * cfg.num_attention_heads * seq)
            as u64
        + 2 * cfg.vocab_size as u64;
    params as u64 * 16 + tokens * per_token * 4
}

/// Refuses a full-parameter run the machine cannot hold, naming both figures. Only the CPU's
/// memory is known here (`MemAvailable`); on an accelerator the device's allocator decides.
fn check_full_fits(model: &CausalLm, cfg: &TrainConfig, device: &Device) -> Result<(), TrainError> {
    let params: usize = model
        .named_weights()?
        .iter()
        .map(|(_, t)| t.elem_count())
        .sum();
    let need = full_training_bytes(&model.cfg, params, cfg.micro_batch, cfg.max_seq_len);
    match (device, available_memory()) {
        (Device::Cpu, Some(avail)) => refuse_above(cfg, params, need, avail),
        _ => Ok(()),
    }
}

/// The refusal itself: `need` bytes against `available`.
fn refuse_above(
    cfg: &TrainConfig,
    params: usize,
    need: u64,
    available: u64,
) -> Result<(), TrainError> {
    if need <= available {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(TrainError::Config(format!(
        "full-parameter training of {} ({:.2} B parameters) needs about {:.1} GiB \
         (16 bytes per parameter for f32 weights, gradients and AdamW moments, plus activations \
         for micro_batch {} × max_seq_len {}), but only {:.1} GiB of memory is available; \
         train a LoRA adapter instead, or lower micro_batch / max_seq_len",
        cfg.model,
        params as f64 / 1e9,
        gib(need),
        cfg.micro_batch,
        cfg.max_seq_len,
        gib(available)
    )))
}

/// `MemAvailable` from /proc/meminfo, in bytes (None where there is no such file).
fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// What one optimizer step did.
pub struct StepResult {
    /// Mean token loss over the step's supervised tokens.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Real (non-padding) tokens processed.
    pub tokens: usize,
    pub supervised: usize,
}

/// One optimizer step over `batches` (the micro-batches of gradient accumulation): the
/// token-weighted loss, exact under accumulation, then clipping and an AdamW update. A
/// non-finite loss skips the update and is returned for the caller to report.
pub fn optimizer_step(
    model: &CausalLm,
    opt: &mut AdamW,
    batches: &[Batch],
    dropout_key: impl Fn(usize) -> u64,
    lr: f64,
    max_grad_norm: f64,
) -> Result<StepResult, TrainError> {
    let supervised: usize = batches.iter().map(Batch::supervised).sum();
    // Start from empty LoRA gradient accumulators (an interrupted pass may have left some).
    model.take_lora_grads();
    let mut loss = 0f64;
    let mut tokens = 0;
    // Gradients candle's autograd gives the variables (full-parameter training), summed over
    // the micro-batches; LoRA layers keep theirs in their own accumulators instead.
    let mut autograd: Vec<Option<Tensor>> = vec![None; opt.params().len()];
    for (micro, batch) in batches.iter().enumerate() {
        let mut mode = Mode::train(dropout_key(micro));
        // Each micro-batch's sum is divided by the step's supervised-token count, so the
        // accumulated gradient is exactly that of the step's mean token loss.
        let part = (loss_sum(model, batch, &mut mode)? / supervised as f64)?;
        loss += part.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        // The LoRA layers add their gradients to their own accumulators during the backward.
        let store = part.backward()?;
        for ((_, var), acc) in opt.params().iter().zip(autograd.iter_mut()) {
            if let Some(g) = store.get(var) {
                *acc = Some(match acc.take() {
                    Some(s) => (s + g)?,
                    None => g.clone(),
                });
            }
        }
        tokens += batch.real_tokens;
    }
    let lora_grads = model.take_lora_grads();
    let grads = if lora_grads.is_empty() {
        autograd
    } else {
        lora_grads
    };
    if !loss.is_finite() {
        return Ok(StepResult {
            loss,
            grad_norm: f64::NAN,
            tokens,
            supervised,
        });
    }
    let grad_norm = opt.grad_norm(&grads)?;
    let scale = if max_grad_norm > 0.0 && grad_norm > max_grad_norm {
        max_grad_norm / (grad_norm + 1e-6)
    } else {
        1.0
    };
    opt.step(&grads, lr, scale)?;
    Ok(StepResult {
        loss,
        grad_norm,
        tokens,
        supervised,
    })
}

/// The metric comparable across variants: the best adapter's mean loss per model-turn token
/// over the held-out dialogues in full (`common.jsonl`, written by `socratune data build`).
fn common_metric(
    spec: &RunSpec,
    model: &mut CausalLm,
    tuned: &Tuned,
    params: &[(String, candle_core::Var)],
    pad: u32,
    vocab: usize,
    device: &Device,
) -> Result<Option<(f64, usize)>, TrainError> {
    let path = spec.data_dir.common();
    let best = spec.out_dir.best();
    if !path.is_file() || !best.is_dir() {
        return Ok(None);
    }
    let file = match load_examples(&path, model.cfg.max_position_embeddings) {
        Ok(f) => f,
        Err(e) => {
            // Scoring only the dialogues that fit would make the metric incomparable.
            eprintln!("{}: no common val loss: {e}", spec.name);
            return Ok(None);
        }
    };
    match tuned {
        Tuned::Lora(_) => {
            crate::model::adapter::load(model, &best)?;
        }
        Tuned::Full(_) => {
            checkpoint::load_params(&best.join(checkpoint::FULL_WEIGHTS), params)?;
        }
    }
    let tokens = file.examples.iter().map(Example::supervised).sum();
    // Whole dialogues are long: one at a time.
    Ok(Some((
        evaluate(model, &file.examples, 1, pad, vocab, device)?,
        tokens,
    )))
}

/// Logs an evaluation, keeps `best/` up to date; returns whether early stopping triggers.
fn record_eval(
    spec: &RunSpec,
    model: &CausalLm,
    tuned: &Tuned,
    state: &mut State,
    metrics: &mut MetricsLog,
    val: f64,
) -> Result<bool, TrainError> {
    state.last_val_loss = Some(val);
    metrics.log(&Event::Eval {
        step: state.step,
        val_loss: val,
        elapsed_s: state.elapsed_s,
    })?;
    if state.best_val_loss.is_none_or(|b| val < b) {
        state.best_val_loss = Some(val);
        state.best_step = Some(state.step);
        state.evals_since_best = 0;
        tuned.write(&spec.out_dir.best(), model, &spec.config.model)?;
    } else {
        state.evals_since_best += 1;
    }
    let p = spec.config.early_stopping_patience;
    Ok(p > 0 && state.evals_since_best >= p)
}

/// The batch of a micro-batch's rows: one example a row, or packed rows when `pack`.
pub(crate) fn make_batch(
    examples: &[Example],
    rows: &[Vec<usize>],
    pack: bool,
    pad: u32,
    vocab: usize,
    device: &Device,
) -> Result<Batch, TrainError> {
    let seq = |i: usize| {
        (
            examples[i].input_ids.as_slice(),
            examples[i].labels.as_slice(),
        )
    };
    let built = if pack {
        let rows: Vec<Vec<_>> = rows
            .iter()
            .map(|r| r.iter().map(|&i| seq(i)).collect())
            .collect();
        Batch::packed(&rows, pad, vocab, device)
    } else {
        let seqs: Vec<_> = rows.iter().flatten().map(|&i| seq(i)).collect();
        Batch::new(&seqs, pad, vocab, device)
    };
    built.map_err(|e| match e {
        crate::model::ModelError::Invalid(m) => {
            let ids: Vec<&str> = rows
                .iter()
                .flatten()
                .map(|&i| examples[i].id.as_str())
                .collect();
            TrainError::Data(format!("batch of examples {}: {m}", ids.join(", ")))
        }
        other => other.into(),
    })
}

/// Mean token loss over every supervised token of `examples`, without a gradient graph. The
/// sum of per-batch sums divided by the token count: independent of the batch size.
pub fn evaluate(
    model: &CausalLm,
    examples: &[Example],
    batch: usize,
    pad: u32,
    vocab: usize,
    device: &Device,
) -> Result<f64, TrainError> {
    // Similar lengths together: less padding, same result.
    let mut order: Vec<usize> = (0..examples.len()).collect();
    order.sort_by_key(|&i| (examples[i].input_ids.len(), i));
    let mut sum = 0f64;
    let mut count = 0usize;
    for idx in order.chunks(batch) {
        let rows: Vec<Vec<usize>> = idx.iter().map(|&i| vec![i]).collect();
        let b = make_batch(examples, &rows, false, pad, vocab, device)?;
        let s = loss_sum(model, &b, &mut Mode::eval())?;
        sum += s.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        count += b.supervised();
    }
    if count == 0 {
        return Err(TrainError::Data(
            "the validation set has no supervised token".into(),
        ));
    }
    Ok(sum / count as f64)
}

/// A distinct dropout stream per (seed, step, micro-batch): resumed runs draw the same masks.
fn dropout_key(seed: u64, step: usize, micro: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 20) ^ micro as u64
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn progress_bar(enabled: bool, total: usize, at: usize, name: &str) -> Option<ProgressBar> {
    if !enabled || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return None;
    }
    let b = ProgressBar::new(total as u64);
    b.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} steps · {msg} · ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_prefix(name.to_string());
    b.set_position(at as u64);
    Some(b)
}

fn log_line(bar: &Option<ProgressBar>, line: String) {
    match bar {
        Some(b) => b.println(line),
        None => eprintln!("{line}"),
    }
}

/// Reads a run's summary, if it finished.
pub fn read_summary(run: &RunDir) -> Option<Summary> {
    let text = std::fs::read_to_string(run.summary()).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_training_of_gemma2_2b_is_refused_with_both_figures() {
        let m = crate::model::ModelConfig::preset("gemma-2-2b").unwrap();
        let params = 2_614_341_888;
        let cfg = TrainConfig::default();
        let need = full_training_bytes(&m, params, cfg.micro_batch, cfg.max_seq_len);
        assert!(need > params as u64 * 16, "{need}");
        let e = refuse_above(&cfg, params, need, 32 << 30)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("2.61 B parameters")
                && e.contains("needs about")
                && e.contains("only 32.0 GiB"),
            "{e}"
        );
        assert!(refuse_above(&cfg, params, need, need).is_ok());
    }
}
