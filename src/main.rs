//! The `socratune` binary: parse arguments, call the library, print one line per failure.

use anyhow::Result;
use clap::Parser;
use socratune::cli::{model::ModelCommand, Cli, Command};
use socratune::model::device::{device_name, parse_device, parse_dtype};
use socratune::model::{Gemma2Config, Source};

fn main() {
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
                let cfg = Gemma2Config::from_file(&src.file("config.json")?)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&cfg.to_hub_json())?);
                } else {
                    println!("{src}: {}", cfg.summary());
                }
            }
            ModelCommand::Check {
                source,
                device,
                adapter,
            } => {
                let src = Source::parse(&source.model, source.revision.as_deref())?;
                let dev = parse_device(&device.device)?;
                let dtype = parse_dtype(&device.dtype, &dev)?;
                let mut m = socratune::model::load(&src, dtype, &dev)?;
                println!(
                    "{src}: {} ({dtype:?} on {})",
                    m.cfg.summary(),
                    device_name(&dev)
                );
                if let Some(dir) = adapter {
                    let info = socratune::model::adapter::load(&mut m, &dir)?;
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
        },
    }
    Ok(())
}
