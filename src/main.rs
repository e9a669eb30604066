//! The `socratune` binary: parse arguments, call the library, print one line per failure.

use anyhow::Result;
use clap::Parser;
use socratune::cli::{model::ModelCommand, Cli, Command};
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
        },
        Command::Synth(s) => socratune::synth::run(&s)?,
    }
    Ok(())
}
