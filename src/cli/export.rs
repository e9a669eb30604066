//! `socratune export`

use anyhow::Result;
use candle_core::{DType, Device};
use clap::{Args, ValueEnum};
use socratune::chat::session::ChatConfig;
use socratune::model::device::parse_dtype;
use socratune::model::Source;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// The Hub's layout: config, sharded safetensors, tokenizer files (a folder).
    Safetensors,
    /// One GGUF file for llama.cpp, Ollama and LM Studio, tokenizer and chat template inside.
    Gguf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The PEFT adapter folder to merge (e.g. runs/model3/best).
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output: a folder for safetensors, a file (e.g. exports/model3.gguf) for GGUF.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, value_enum, default_value = "safetensors")]
    pub format: ExportFormat,
    /// Base model (default: the adapter's base_model_name_or_path).
    #[arg(long)]
    pub model: Option<String>,
    #[arg(long)]
    pub revision: Option<String>,
    /// Weight dtype of a safetensors export: bf16, f16 or f32.
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Largest safetensors shard, in bytes (suffixes KB, MB, GB allowed).
    #[arg(long, default_value = "5GB")]
    pub max_shard_size: String,
    /// GGUF type: f16, bf16, q8_0, q4_0 or q4_k_m (llama.cpp's mixtures).
    #[arg(long, default_value = "q8_0")]
    pub quant: String,
    /// With GGUF, also write an Ollama Modelfile beside the file.
    #[arg(long)]
    pub ollama: bool,
    /// Chat defaults (opening line, sampling) for the Modelfile.
    #[arg(long, default_value = "configs/chat.toml")]
    pub chat_config: PathBuf,
    /// The Modelfile's opening line (default: the chat config's `opening`).
    #[arg(long)]
    pub opening: Option<String>,
    /// The Modelfile's system text instead of the run's variant's ("" for none).
    #[arg(long)]
    pub system: Option<String>,
    /// The Modelfile's prefix (before the first user text) instead of the variant's ("" for none).
    #[arg(long)]
    pub prefix: Option<String>,
}

impl ExportArgs {
    pub fn run(self) -> Result<()> {
        let a = self;
        // Flags that only make sense for the other format are mistakes, not silently ignored.
        if a.format != ExportFormat::Gguf && a.ollama {
            anyhow::bail!("--ollama needs --format gguf");
        }
        if !a.ollama && (a.system.is_some() || a.prefix.is_some()) {
            anyhow::bail!("--system and --prefix are the Modelfile's; they need --ollama");
        }
        let quant: socratune::gguf::Quant =
            a.quant.parse().map_err(|e: String| anyhow::anyhow!(e))?;
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
        socratune::fsutil::check_apart(
            &a.out,
            &[("base model", base_dir), ("adapter", &a.adapter)],
        )?;
        // Read the chat defaults first: a bad config should fail before minutes of work.
        let modelfile_inputs = if a.ollama {
            let cfg = ChatConfig::load(&a.chat_config)?;
            let opening = a.opening.clone().or(cfg.opening.clone()).ok_or_else(|| {
                anyhow::anyhow!(
                    "the Modelfile needs an opening line: pass --opening TEXT or set `opening` in {}",
                    a.chat_config.display()
                )
            })?;
            // The Modelfile takes no seed.
            let sampling = socratune::chat::session::sampling(&cfg.sampling)?;
            // The system text and prefix the run was trained with (its data's stats.json), as
            // chat uses them.
            let variant = socratune::chat::load::RunInfo::find(&a.adapter)?.map(|r| r.variant);
            let system = match a.system.clone() {
                Some(s) => Some(s),
                None => variant.as_ref().and_then(|v| v.layout.system.clone()),
            };
            let prefix = a
                .prefix
                .clone()
                .or(variant.map(|v| v.prefix))
                .unwrap_or_default();
            Some((opening, sampling, system, prefix))
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
                if let Some((opening, sampling, system, prefix)) = modelfile_inputs {
                    let file = a
                        .out
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    let family = socratune::gguf::family::family(m.cfg.family.model_type())?;
                    let text = socratune::gguf::ollama::modelfile(
                        &file,
                        family,
                        &sampling,
                        &opening,
                        system.as_deref(),
                        &prefix,
                    )?;
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
