//! `socratune chat` and `socratune serve`

use super::model::DeviceArgs;
use clap::Args;
use socratune::chat::load::{ModelSpec, PromptChoice};
use socratune::chat::server::ServeSpec;
use socratune::chat::session::{ChatSpec, Interrupt};
use socratune::model::generate::SamplingRequest;
use std::path::PathBuf;

/// The model to talk to (chat and serve).
#[derive(Debug, Clone, Args)]
pub struct TalkModelArgs {
    /// Base model: Hub repo id or local folder (default: the adapter's
    /// base_model_name_or_path, else google/gemma-2-2b-it).
    #[arg(long)]
    pub model: Option<String>,
    /// Hub revision (branch, tag or commit).
    #[arg(long)]
    pub revision: Option<String>,
    /// tokenizer.json, a folder holding one, or a Hub repo id (default: the one the run's data
    /// was made with, else the base model's).
    #[arg(long)]
    pub tokenizer: Option<String>,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// How the prompt is cut, prefixed and laid out.
#[derive(Debug, Clone, Default, Args)]
pub struct PromptArgs {
    /// A variant file (configs/variants/NAME.toml): each reply sees its utterances/2 last pairs
    /// with its prefix on the first user turn, as in training.
    #[arg(long)]
    pub variant: Option<PathBuf>,
    /// `variant` (the variant's window), `all` (the whole history) or a number of pairs.
    #[arg(long)]
    pub window: Option<String>,
    /// Put before the first user turn of the window instead of the variant's prefix ("" for none).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The system text instead of the variant's ("" for none): a system turn where the model's
    /// family has one, before the first user text where it has not (Gemma).
    #[arg(long)]
    pub system: Option<String>,
}

/// Sampling (chat); unset ones come from configs/chat.toml.
#[derive(Debug, Clone, Default, Args)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long)]
    pub temperature: Option<f64>,
    /// Nucleus sampling; 1 turns it off.
    #[arg(long)]
    pub top_p: Option<f64>,
    /// Sample among the k most likely tokens; 0 turns it off.
    #[arg(long)]
    pub top_k: Option<usize>,
    /// 1 is none.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the first reply (each later reply adds its turn number); default: random.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// A PEFT adapter folder (runs/<variant>/best); without it, the base model alone.
    #[arg(long, conflicts_with = "compare")]
    pub adapter: Option<PathBuf>,
    /// Several adapters answering the same lines, comma-separated (`base` = no adapter); each
    /// keeps its own conversation.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    #[command(flatten)]
    pub model: TalkModelArgs,
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The persona's opening line (saved as question `custom` unless --questions has it).
    #[arg(long, conflicts_with = "question")]
    pub opening: Option<String>,
    /// The opening by question id (q05) from --questions.
    #[arg(long)]
    pub question: Option<String>,
    /// Opening questions file.
    #[arg(long, default_value = "data/questions.jsonl")]
    pub questions: PathBuf,
    /// Chat defaults (opening, labels, sampling); flags override them.
    #[arg(long, default_value = "configs/chat.toml")]
    pub config: PathBuf,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A PEFT adapter folder; without it, the base model alone.
    #[arg(long)]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub model: TalkModelArgs,
    /// Off by default: clients send whole histories, which are used as they are.
    #[command(flatten)]
    pub prompt: PromptArgs,
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// 0 picks a free port (printed on stderr).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The model id clients ask for (default: the adapter's run name, or the base model).
    #[arg(long)]
    pub name: Option<String>,
    /// Connections handled at once (one thread each); more are refused with 503.
    #[arg(long, default_value_t = 64)]
    pub threads: usize,
    /// Requests waiting for the model (which answers one at a time); more are refused with
    /// 503 and `Retry-After`.
    #[arg(long, default_value_t = 16)]
    pub queue: usize,
    /// Require clients to send the key held in this environment variable, as
    /// `Authorization: Bearer <key>`.
    #[arg(long, value_name = "VAR")]
    pub api_key_env: Option<String>,
}

impl From<TalkModelArgs> for ModelSpec {
    fn from(a: TalkModelArgs) -> Self {
        ModelSpec {
            model: a.model,
            revision: a.revision,
            tokenizer: a.tokenizer,
            device: a.device.device,
            dtype: a.device.dtype,
        }
    }
}

impl From<PromptArgs> for PromptChoice {
    fn from(a: PromptArgs) -> Self {
        PromptChoice {
            variant: a.variant,
            window: a.window,
            prefix: a.prefix,
            system: a.system,
        }
    }
}

impl From<SamplingArgs> for SamplingRequest {
    fn from(a: SamplingArgs) -> Self {
        SamplingRequest {
            temperature: a.temperature,
            top_p: a.top_p,
            top_k: a.top_k,
            repetition_penalty: a.repetition_penalty,
            max_new_tokens: a.max_new_tokens,
            seed: a.seed,
        }
    }
}

impl ChatArgs {
    pub fn run(self) -> anyhow::Result<()> {
        let spec = ChatSpec {
            adapter: self.adapter,
            compare: self.compare,
            model: self.model.into(),
            prompt: self.prompt.into(),
            sampling: self.sampling.into(),
            opening: self.opening,
            question: self.question,
            questions: self.questions,
            config: self.config,
        };
        socratune::chat::session::chat(&spec, Some(Interrupt::install()))?;
        Ok(())
    }
}

impl ServeArgs {
    pub fn run(self) -> anyhow::Result<()> {
        socratune::chat::server::serve(&ServeSpec {
            adapter: self.adapter,
            model: self.model.into(),
            prompt: self.prompt.into(),
            host: self.host,
            port: self.port,
            name: self.name,
            threads: self.threads,
            queue: self.queue,
            api_key_env: self.api_key_env,
        })?;
        Ok(())
    }
}
