//! `socratune demo`

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes (replaced on a rerun).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Optimizer steps per variant.
    #[arg(long, default_value_t = 40)]
    pub steps: usize,
    /// Full-parameter pre-training steps of the tiny base model.
    #[arg(long, default_value_t = 150)]
    pub pretrain_steps: usize,
}

impl DemoArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let o = socratune::demo::DemoOptions {
            out: self.out.clone(),
            steps: self.steps,
            pretrain_steps: self.pretrain_steps,
            progress: true,
            interrupt: Some(super::interrupt_flag()),
        };
        let md = socratune::demo::run(&o)?;
        println!("{md}");
        eprintln!("demo: everything is in {}", self.out.display());
        Ok(())
    }
}
