//! `socratune compare`

use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The folder of runs.
    #[arg(default_value = "runs")]
    pub runs: PathBuf,
}

impl CompareArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let runs = self.runs;
        let md = socratune::report::compare(&runs)?;
        println!("{md}");
        eprintln!(
            "wrote {} and {}",
            runs.join("compare.md").display(),
            runs.join("loss.svg").display()
        );
        Ok(())
    }
}
