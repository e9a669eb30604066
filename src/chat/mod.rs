//! Talking to the tuned model: the terminal chat (`session`), the OpenAI-compatible server
//! (`server`, `api`), and the generation benchmark (`bench`).
//!
//! Both front ends build the model's prompt the way training rendered its examples
//! (`prompt`): the same chat template, and, when a variant says so, the same window of
//! pairs with the variant's prefix on its first user turn.

pub(crate) mod api;
pub mod bench;
pub(crate) mod http;
pub mod load;
pub(crate) mod prompt;
pub mod server;
pub mod session;
pub(crate) mod stop;

pub use load::{Loaded, RunInfo};
pub use prompt::{Prompt, PromptFormat};
pub use server::{ServeOptions, Server};
pub use session::{Opening, Session};

use crate::dataset::ChatTokenizer;
use crate::model::generate::{generate, SamplingParams, Stop, TextStream};
use crate::model::{CausalLm, KvCache, ModelConfig};
use std::ops::ControlFlow;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The base model has no tokenizer and none was given.
    #[error("{0} (pass --tokenizer)")]
    NoTokenizer(#[source] crate::model::ModelError),
    #[error(transparent)]
    Dataset(#[from] crate::dataset::DatasetError),
    #[error(transparent)]
    Corpus(#[from] crate::corpus::CorpusError),
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    /// A config file that does not parse or holds a bad value.
    #[error("{}: {message}", path.display())]
    Config { path: PathBuf, message: String },
    /// Not even the newest user turn fits the model's context.
    #[error("the prompt is {tokens} tokens, but the model's context is {context}; say it in fewer words")]
    TooLong { tokens: usize, context: usize },
    #[error("cannot listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    /// Reading the user's lines or writing the replies failed.
    #[error("terminal: {0}")]
    Io(#[from] std::io::Error),
    /// Options that do not fit together, or a request for something that does not exist.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = ChatError> = std::result::Result<T, E>;

/// The tokens that end a reply: the model's EOS ids, `<end_of_turn>` and `<eos>`.
pub fn stop_tokens(cfg: &ModelConfig, tok: &ChatTokenizer) -> Vec<u32> {
    let mut v = cfg.eos_token_ids.clone();
    v.extend([tok.specials.end_of_turn, tok.specials.eos]);
    v.sort_unstable();
    v.dedup();
    v
}

/// A generated turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The decoded text (special tokens skipped), exactly the pieces handed out.
    pub text: String,
    /// Tokens generated, the stop token not counted.
    pub tokens: usize,
    pub stop: Stop,
}

/// Generates the model's turn after `prompt` with a fresh KV cache, handing each completed
/// UTF-8 piece of text to `on_text` as it comes (it may stop generation). The pieces always
/// add up to `Reply::text`: whatever the stream held back at the end is handed out last.
pub fn reply(
    model: &CausalLm,
    tok: &ChatTokenizer,
    prompt: &[u32],
    params: &SamplingParams,
    stop_tokens: &[u32],
    mut on_text: impl FnMut(&str) -> ControlFlow<()>,
) -> Result<Reply> {
    let mut stream = TextStream::new(tok.inner());
    let mut emitted = 0;
    let mut failed = None;
    let (ids, stop) = generate(
        model,
        &mut KvCache::new(),
        prompt,
        params,
        stop_tokens,
        |id| match stream.push(id) {
            Ok(Some(piece)) => {
                emitted += piece.len();
                on_text(&piece)
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                failed = Some(e);
                ControlFlow::Break(())
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    let text = stream.text()?;
    // An incomplete character at the very end (cut off by the token limit) was held back.
    if let Some(rest) = text.get(emitted..).filter(|r| !r.is_empty()) {
        let _ = on_text(rest);
    }
    Ok(Reply {
        text,
        tokens: ids.len(),
        stop,
    })
}
