//! `socratune model …`

use anyhow::Result;
use candle_core::Device;
use clap::{Args, Subcommand};
use socratune::model::adapter::AdapterInfo;
use socratune::model::device::{device_name, parse_device, parse_dtype};
use socratune::model::{CausalLm, ModelConfig, Source};

#[derive(Debug, Args)]
pub struct ModelArgs {
    #[command(subcommand)]
    pub command: ModelCommand,
}

/// Where the base model comes from (shared by every command that loads one).
#[derive(Debug, Clone, Args)]
pub struct ModelSourceArgs {
    /// Hub repo id or local folder (config.json + safetensors).
    #[arg(long, default_value = "google/gemma-2-2b-it")]
    pub model: String,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
}

/// Where to run and in which precision.
#[derive(Debug, Clone, Args)]
pub struct DeviceArgs {
    /// cpu, cuda, cuda:N, metal or auto (the best available).
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// f32, bf16, f16 or auto (bf16 on GPUs, f32 on CPU).
    #[arg(long, default_value = "auto")]
    pub dtype: String,
}

/// A base model, where it runs, and an optional adapter on top.
#[derive(Debug, Clone, Args)]
pub struct ModelLoadArgs {
    #[command(flatten)]
    pub source: ModelSourceArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// A PEFT adapter folder to load on top.
    #[arg(long)]
    pub adapter: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Print the resolved config of a base model (downloads only config.json).
    Info {
        #[command(flatten)]
        source: ModelSourceArgs,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load the weights (and optionally an adapter) to check that they fit together.
    Check {
        #[command(flatten)]
        load: ModelLoadArgs,
    },
    /// Token-weighted cross-entropy and perplexity on a tokenized file (`train.jsonl` format:
    /// input_ids, labels with -100); no tokenizer needed.
    Score {
        #[command(flatten)]
        load: ModelLoadArgs,
        /// The tokenized examples (e.g. runs/model3/data/val.jsonl).
        #[arg(long)]
        data: std::path::PathBuf,
        /// Examples per forward pass (the result does not depend on it).
        #[arg(long, default_value_t = 8)]
        batch: usize,
        /// Print one JSON object: loss, tokens, examples, perplexity.
        #[arg(long)]
        json: bool,
    },
}

impl ModelArgs {
    pub fn run(self) -> Result<()> {
        match self.command {
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
        }
        Ok(())
    }
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
