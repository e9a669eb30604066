//! The `socratune` binary: parse arguments, call the library, print one line per failure.

use anyhow::Result;
use candle_core::{DType, Device};
use clap::Parser;
use socratune::chat::bench::GenerateBench;
use socratune::chat::session::ChatConfig;
use socratune::chat::session::Interrupt;
use socratune::cli::bench::BenchCommand;
use socratune::cli::export::{ExportArgs, ExportFormat};
use socratune::cli::model::{ModelCommand, ModelLoadArgs};
use socratune::cli::sweep::{Emit, SweepArgs};
use socratune::cli::train::{TrainArgs, TrainOverrides};
use socratune::cli::{Cli, Command};
use socratune::model::adapter::AdapterInfo;
use socratune::model::device::{device_name, parse_device, parse_dtype};
use socratune::model::{CausalLm, ModelConfig, Source};
use socratune::train::bench::BenchOptions;
use socratune::train::{RunSpec, TrainConfig, TrainError};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    socratune::fsutil::keep_freed_memory();
    // Before any thread exists, so that every compute pool inherits it (see `fpenv`).
    socratune::fpenv::flush_subnormals_everywhere();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Model(m) => match m.command {
            ModelCommand::Info { source, json } => {
                let src = Source::parse(&source.model, source.revision.as_deref())?;
                let cfg = ModelConfig::from_file(&src.file("config.json")?)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&cfg.to_hub_json())?);
                } else {
                    println!("{src}: {}", cfg.summary());
                }
            }
            ModelCommand::Check { load } => {
                let (m, src, dev, info) = load_model(&load)?;
                println!(
                    "{src}: {} ({:?} on {})",
                    m.cfg.summary(),
                    m.dtype(),
                    device_name(&dev)
                );
                if let (Some(dir), Some(info)) = (&load.adapter, info) {
                    let params: usize = m.lora_vars().iter().map(|(_, v)| v.elem_count()).sum();
                    let targets: Vec<&str> = info.lora.targets.iter().map(|t| t.module()).collect();
                    println!(
                        "{}: LoRA r={} alpha={} on {} ({params} parameters)",
                        dir.display(),
                        info.lora.r,
                        info.lora.alpha,
                        targets.join(",")
                    );
                }
            }
            ModelCommand::Score {
                load,
                data,
                batch,
                json,
            } => {
                let (m, _, dev, _) = load_model(&load)?;
                let s = socratune::train::score::score_file(&m, &data, batch, &dev)?;
                if json {
                    println!("{}", serde_json::to_string(&s)?);
                } else {
                    println!(
                        "{}: loss {:.6}, perplexity {:.4} over {} tokens in {} examples",
                        data.display(),
                        s.loss,
                        s.perplexity,
                        s.tokens,
                        s.examples
                    );
                }
            }
        },
        Command::Train(a) => run_train(a)?,
        Command::Sweep(a) => run_sweep(a)?,
        Command::Demo { out, steps } => {
            let o = socratune::demo::DemoOptions {
                out: out.clone(),
                steps,
                progress: true,
                interrupt: Some(interrupt_flag()),
            };
            let md = socratune::demo::run(&o)?;
            println!("{md}");
            eprintln!("demo: everything is in {}", out.display());
        }
        Command::Compare { runs } => {
            let md = socratune::report::compare(&runs)?;
            println!("{md}");
            eprintln!(
                "wrote {} and {}",
                runs.join("compare.md").display(),
                runs.join("loss.svg").display()
            );
        }
        Command::Export(a) => run_export(a)?,
        Command::Bench(b) => match b.command {
            BenchCommand::Train {
                preset,
                steps,
                warmup,
                device,
                batch,
                seq,
                json,
            } => {
                let o = BenchOptions {
                    preset,
                    steps,
                    warmup,
                    device,
                    batch,
                    seq,
                };
                let r = socratune::train::bench::bench_train(&o)?;
                let line = format!(
                    "{} tokens/s, {} s/step, peak {:.1} MiB",
                    r["tokens_per_s"],
                    r["s_per_step"],
                    r["peak_mem_bytes"].as_f64().unwrap_or(0.0) / 1048576.0
                );
                print_bench(&r, &line, json);
            }
            BenchCommand::Generate {
                preset,
                tokens,
                prompt_len,
                device,
                dtype,
                json,
            } => {
                let o = GenerateBench {
                    preset,
                    tokens,
                    prompt_len,
                    device,
                    dtype,
                };
                let r = socratune::chat::bench::bench_generate(&o)?;
                let line = format!(
                    "prefill {} tokens/s, decode {} tokens/s ({} ms/token)",
                    r["prefill_tokens_per_s"], r["decode_tokens_per_s"], r["ms_per_token"]
                );
                print_bench(&r, &line, json);
            }
        },
        Command::Data(d) => d.run()?,
        Command::Synth(s) => socratune::synth::run(&s)?,
        Command::Chat(a) => socratune::chat::session::chat(&a, Some(Interrupt::install()))?,
        Command::Serve(a) => socratune::chat::server::serve(&a)?,
    }
    Ok(())
}

/// The base model of `a` on its device, with the adapter loaded when one is given.
fn load_model(a: &ModelLoadArgs) -> Result<(CausalLm, Source, Device, Option<AdapterInfo>)> {
    let src = Source::parse(&a.source.model, a.source.revision.as_deref())?;
    let dev = parse_device(&a.device.device)?;
    let dtype = parse_dtype(&a.device.dtype, &dev)?;
    let mut m = socratune::model::load(&src, dtype, &dev)?;
    let info = match &a.adapter {
        Some(dir) => Some(socratune::model::adapter::load(&mut m, dir)?),
        None => None,
    };
    Ok((m, src, dev, info))
}

fn run_export(a: ExportArgs) -> Result<()> {
    // Flags that only make sense for the other format are mistakes, not silently ignored.
    if a.format != ExportFormat::Gguf && a.ollama {
        anyhow::bail!("--ollama needs --format gguf");
    }
    let quant: socratune::gguf::Quant = a.quant.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let info = socratune::model::adapter::read_config(&a.adapter)?;
    let spec = a.model.clone().or(info.base_model.clone()).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the adapter does not name its base model; pass --model",
            a.adapter.display()
        )
    })?;
    let src = Source::parse(&spec, a.revision.as_deref())?;
    // Before anything loads: the export must not write over the model or the adapter
    // (the base model's folder is where its config lies, in the Hub cache too).
    let config = src.file("config.json")?;
    let base_dir = config.parent().unwrap_or(Path::new("."));
    socratune::fsutil::check_apart(&a.out, &[("base model", base_dir), ("adapter", &a.adapter)])?;
    // Read the chat defaults first: a bad config should fail before minutes of work.
    let modelfile_inputs = if a.ollama {
        let cfg = ChatConfig::load(&a.chat_config)?;
        let opening = a.opening.clone().or(cfg.opening.clone()).ok_or_else(|| {
            anyhow::anyhow!(
                "the Modelfile needs an opening line: pass --opening TEXT or set `opening` in {}",
                a.chat_config.display()
            )
        })?;
        let sampling = socratune::chat::session::sampling(&Default::default(), &cfg.sampling, 0)?;
        Some((opening, sampling))
    } else {
        None
    };
    let started = std::time::Instant::now();
    let mut m = socratune::model::load(&src, DType::F32, &Device::Cpu)?;
    socratune::model::adapter::load(&mut m, &a.adapter)?;
    m.merge_lora()?;
    match a.format {
        ExportFormat::Safetensors => {
            let dtype = parse_dtype(&a.dtype, &Device::Cpu)?;
            let shard = parse_size(&a.max_shard_size)?;
            let files = socratune::model::export::export(&m, Some(&src), &a.out, dtype, shard)?;
            println!(
                "{}: merged {} into {src}; wrote {}",
                a.out.display(),
                a.adapter.display(),
                files.join(", ")
            );
        }
        ExportFormat::Gguf => {
            let name = a
                .out
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "socratune".into());
            let w = socratune::gguf::export(&m, &src, &a.out, quant, &name)?;
            println!(
                "{}: merged {} into {src}; GGUF {} ({:.1} MiB; {}) in {:.1} s",
                a.out.display(),
                a.adapter.display(),
                quant.name(),
                w.bytes as f64 / 1048576.0,
                w.describe_types(),
                started.elapsed().as_secs_f64()
            );
            if let Some((opening, sampling)) = modelfile_inputs {
                let file = a
                    .out
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let family = socratune::gguf::family::family(m.cfg.family.model_type())?;
                let text = socratune::gguf::ollama::modelfile(&file, family, &sampling, &opening)?;
                let path = a.out.parent().unwrap_or(Path::new(".")).join("Modelfile");
                socratune::fsutil::write_atomic(&path, text.as_bytes())?;
                println!(
                    "{}: ollama create NAME -f {}",
                    path.display(),
                    path.display()
                );
            }
        }
    }
    Ok(())
}

/// A benchmark's JSON line on stdout, after a readable summary on stderr unless `--json`.
fn print_bench(r: &serde_json::Value, summary: &str, json: bool) {
    if !json {
        let name = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        eprintln!("{} on {}: {summary}", name("preset"), name("device"));
    }
    println!("{r}");
}

/// `5GB`, `500MB`, `12345` → bytes.
fn parse_size(s: &str) -> Result<usize> {
    let t = s.trim().to_uppercase();
    let (num, mult) = [
        ("GB", 1usize << 30),
        ("MB", 1 << 20),
        ("KB", 1 << 10),
        ("B", 1),
    ]
    .iter()
    .find_map(|(suf, m)| t.strip_suffix(suf).map(|n| (n.trim().to_string(), *m)))
    .unwrap_or((t.clone(), 1));
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a size like 5GB or 500MB"))?;
    Ok((n * mult as f64) as usize)
}

/// Reads the training config (defaults when the default file is absent) and applies the flags.
fn train_config(path: &Path, overrides: &TrainOverrides) -> Result<TrainConfig> {
    let mut c = if path.exists() || path != Path::new("configs/train.toml") {
        TrainConfig::from_toml_file(path)?
    } else {
        TrainConfig::default()
    };
    overrides.apply(&mut c);
    Ok(c)
}

/// Ctrl-C asks the loop to checkpoint and stop; a second one exits at once.
fn interrupt_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    let _ = ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\ninterrupt: saving a checkpoint after this step (Ctrl-C again to quit now)");
    });
    flag
}

fn run_sweep(a: SweepArgs) -> Result<()> {
    use socratune::train::sweep::{self, DataSource, Outcome, SweepSpec};
    let config = train_config(&a.config, &a.overrides)?;
    let variants = if a.variants.is_empty() {
        sweep::variant_names(&a.variants_dir)?
    } else {
        a.variants.clone()
    };
    let spec = SweepSpec {
        variants,
        runs: a.runs.clone(),
        config,
        data: a.dialogues.clone().map(|dialogues| DataSource {
            dialogues,
            tokenizer: a.tokenizer.clone(),
            variants_dir: a.variants_dir.clone(),
            seed: a.split_seed,
            skip_bad: a.skip_bad,
            include_unjudged: a.include_unjudged,
            max_len: a.max_len,
            overflow: a.overflow,
        }),
        gpus: a.gpus.clone(),
        progress: true,
        interrupt: Some(interrupt_flag()),
    };
    if let Some(Emit::Slurm) = a.emit {
        sweep::ensure_data(&spec)?;
        let config = sweep::write_config(&spec)?;
        let exe = std::env::current_exe()?;
        let path = a.runs.join("sweep.slurm");
        socratune::fsutil::write_atomic(
            &path,
            sweep::slurm_script(&spec, &exe, &config).as_bytes(),
        )?;
        println!(
            "wrote {} ({} tasks); submit with: sbatch {}",
            path.display(),
            spec.variants.len(),
            path.display()
        );
        return Ok(());
    }
    let outcomes = exit_if_interrupted(sweep::sweep(&spec))?;
    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|(v, o)| match o {
            Outcome::Failed(m) => Some(format!("{v}: {m}")),
            _ => None,
        })
        .collect();
    println!("{}", socratune::report::compare(&a.runs)?);
    if !failed.is_empty() {
        anyhow::bail!("{} run(s) failed: {}", failed.len(), failed.join("; "));
    }
    Ok(())
}

fn run_train(a: TrainArgs) -> Result<()> {
    let config = train_config(&a.config, &a.overrides)?;
    let (name, data_dir, out_dir) = match (&a.variant, &a.data) {
        (Some(v), _) => {
            let run = a.out.clone().unwrap_or_else(|| a.runs.join(v));
            (v.clone(), a.runs.join(v).join("data"), run)
        }
        (None, Some(d)) => {
            let parent = d
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let run = a.out.clone().unwrap_or_else(|| parent.to_path_buf());
            let name = run
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_else(|| "run".into());
            (name, d.clone(), run)
        }
        (None, None) => anyhow::bail!("give --variant NAME or --data DIR"),
    };
    // `--fresh` deletes parts of the run folder, and a run writes adapters into it.
    if Path::new(&config.model).exists() {
        socratune::fsutil::check_apart(&out_dir, &[("base model", Path::new(&config.model))])?;
    }
    let spec = RunSpec {
        name,
        config,
        data_dir,
        out_dir: out_dir.clone(),
        resume: a.resume,
        fresh: a.fresh,
        progress: true,
        interrupt: Some(interrupt_flag()),
    };
    let s = exit_if_interrupted(socratune::train::train(spec))?;
    println!(
        "{}: {} after {} steps; best val loss {:.4} at step {}, final {:.4}; adapters in {}/best and {}/adapter",
        s.variant, s.status, s.steps, s.best_val_loss, s.best_step, s.final_val_loss,
        out_dir.display(), out_dir.display()
    );
    Ok(())
}

/// A run stopped by Ctrl-C has saved its checkpoint: say so and exit with 130, as shells expect.
fn exit_if_interrupted<T>(r: Result<T, TrainError>) -> Result<T> {
    match r {
        Err(e @ TrainError::Interrupted { .. }) => {
            eprintln!("{e}");
            std::process::exit(130);
        }
        other => Ok(other?),
    }
}
