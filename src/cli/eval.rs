//! `socratune eval`: judged replies of every finished run beside validation loss.

use super::chat::TalkModelArgs;
use clap::Args;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The folder of runs; the report goes to <runs>/eval.md and <runs>/eval.json.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Only these runs, comma-separated (default: every finished run).
    #[arg(long, value_delimiter = ',')]
    pub variants: Vec<String>,
    /// Also evaluate the base model without an adapter (for the win rate against it).
    #[arg(long)]
    pub base: bool,
    /// Held-out prompts per run (overrides `prompts` in --eval-config).
    #[arg(long)]
    pub prompts: Option<usize>,
    /// Seed of the prompt sample, sampling and bootstrap (overrides `seed` in --eval-config).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Prompts decoded at once (overrides `batch_size` in --eval-config).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Synth config whose [judge] endpoint scores the replies.
    #[arg(long, default_value = "configs/synth.toml")]
    pub config: PathBuf,
    /// `config` (the [judge] of --config) or `none` (only generate, no API needed).
    #[arg(long, default_value = "config")]
    pub judge: String,
    /// Also ask the judge which of two runs' replies is more Socratic (both orders) and rank
    /// the runs with Bradley–Terry. Calls grow with the square of the runs.
    #[arg(long)]
    pub pairwise: bool,
    /// Eval settings: sampling, prompt count, base-model prompt, judge templates.
    #[arg(long, default_value = "configs/eval.toml")]
    pub eval_config: PathBuf,
    /// Folder of the prompt templates (judge_reply.txt, judge_pair.txt).
    #[arg(long, default_value = "data/prompts")]
    pub prompt_templates: PathBuf,
    /// The corpus the split was made from, if it moved since `data build`.
    #[arg(long)]
    pub dialogues: Option<PathBuf>,
    #[command(flatten)]
    pub model: TalkModelArgs,
}

impl EvalArgs {
    pub fn run(self) -> anyhow::Result<()> {
        use socratune::eval::{self, EvalConfig, EvalOptions};
        let mut config = EvalConfig::load(&self.eval_config)?;
        if let Some(n) = self.prompts {
            anyhow::ensure!(n >= 1, "--prompts must be at least 1");
            config.prompts = n;
        }
        if let Some(s) = self.seed {
            config.seed = s;
        }
        if let Some(n) = self.batch_size {
            config.batch_size = n;
            config
                .check_batch_size()
                .map_err(|m| anyhow::anyhow!("--batch-size: {m}"))?;
        }
        let judge = match self.judge.as_str() {
            "none" => None,
            "config" => Some(self.config.clone()),
            other => anyhow::bail!("--judge `{other}` is not `config` or `none`"),
        };
        let o = EvalOptions {
            runs: self.runs.clone(),
            variants: self.variants,
            base: self.base,
            config,
            judge,
            prompts_dir: self.prompt_templates,
            pairwise: self.pairwise,
            dialogues: self.dialogues,
            model: self.model.into(),
            stop: super::stop_flag(
                "\ninterrupt: stopping after this reply (Ctrl-C again to quit now; rerun to resume)",
            ),
        };
        let report = eval::run(&o)?;
        println!("{}", eval::report::markdown(&report));
        eprintln!(
            "wrote {} and {}",
            self.runs.join("eval.md").display(),
            self.runs.join("eval.json").display()
        );
        Ok(())
    }
}
