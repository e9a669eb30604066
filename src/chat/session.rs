//! `socratune chat`: a conversation in the terminal (or driven by a pipe), in the format the
//! model was trained on. The persona opens with a fixed question, which is turn 0 (the user
//! role, as in the training data); its first reply (turn 1) follows at once, shown as the
//! continuation of the opening; then the user speaks (turn 2), and so on.
//!
//! User lines come from `input` one a line; replies stream to `out`; labels, notes and the
//! prompt go to `info` (stderr), so that `out` alone reads as the conversation.

use super::load::{
    adapter_name, load_base, prompt_format, use_adapter, ModelSpec, PromptChoice, RunInfo,
};
use super::prompt::PromptFormat;
use super::{reply, stop_tokens, ChatError, Result};
use crate::corpus::{load_questions, Dialogue, Role, Turn};
use crate::dataset::{ChatTokenizer, Utterance};
use crate::model::generate::{SamplingParams, SamplingRequest, Stop};
use crate::model::CausalLm;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const DEFAULT_CONFIG: &str = "configs/chat.toml";

/// `configs/chat.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatConfig {
    /// The opening line.
    pub opening: Option<String>,
    /// Its question id (for saved transcripts), or, without `opening`, the id to look up.
    pub question: Option<String>,
    /// Label of the model's lines.
    pub persona_name: Option<String>,
    /// The prompt before the user's lines.
    pub user_name: Option<String>,
    /// `[sampling]`, under the flags.
    #[serde(default)]
    pub sampling: SamplingRequest,
}

impl ChatConfig {
    /// Reads the file; a missing default file gives the defaults.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() && path == Path::new(DEFAULT_CONFIG) {
            return Ok(Self::default());
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| crate::fsutil::FileError::new(path, e))?;
        toml::from_str(&text).map_err(|e| ChatError::Config {
            path: path.to_path_buf(),
            message: e.message().trim().to_string(),
        })
    }
}

/// Chat's sampling: what is asked (flags over the config's `[sampling]`), else the library's
/// defaults; no seed asked: a random one. Replies are never empty: a stop token cannot come
/// first.
pub fn sampling(asked: &SamplingRequest) -> Result<SamplingParams> {
    let defaults = SamplingParams {
        seed: asked.seed.unwrap_or_else(rand::random),
        min_new_tokens: 1,
        ..SamplingParams::default()
    };
    let p = asked.resolve(&defaults)?;
    if p.max_new_tokens == 0 {
        return Err(ChatError::Invalid(
            "--max-new-tokens must be at least 1".into(),
        ));
    }
    Ok(p)
}

/// What `socratune chat` is asked to do.
#[derive(Debug, Clone)]
pub struct ChatSpec {
    /// A PEFT adapter folder; None: the base model alone (unless `compare`).
    pub adapter: Option<PathBuf>,
    /// Several adapters answering the same lines (`base` = no adapter), each with its own
    /// conversation; empty: just `adapter`.
    pub compare: Vec<String>,
    pub model: ModelSpec,
    pub prompt: PromptChoice,
    /// Over the config's `[sampling]`; `seed` is the first reply's (each later reply adds its
    /// turn number), None: random.
    pub sampling: SamplingRequest,
    /// The persona's opening line.
    pub opening: Option<String>,
    /// The opening by question id, from `questions`.
    pub question: Option<String>,
    /// Opening questions file.
    pub questions: PathBuf,
    /// Chat defaults (opening, labels, sampling).
    pub config: PathBuf,
}

/// The persona's first line and the id of the question it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Opening {
    pub text: String,
    /// The question id, or `custom`.
    pub question: String,
}

impl Opening {
    /// `--opening`, `--question`, or the config's, in that order.
    pub fn resolve(args: &ChatSpec, cfg: &ChatConfig) -> Result<Self> {
        let by_id = |id: &str| -> Result<Self> {
            let qs = load_questions(&args.questions)?;
            let q = qs.iter().find(|q| q.id == id).ok_or_else(|| {
                ChatError::Invalid(format!("{}: no question `{id}`", args.questions.display()))
            })?;
            Ok(Self {
                text: q.text.clone(),
                question: q.id.clone(),
            })
        };
        // A text that is one of the questions is saved under its id.
        let by_text = |text: &str, id: Option<&str>| -> Self {
            let known = || {
                load_questions(&args.questions)
                    .ok()?
                    .into_iter()
                    .find(|q| q.text.trim() == text.trim())
                    .map(|q| q.id)
            };
            Self {
                text: text.to_string(),
                question: id
                    .map(String::from)
                    .or_else(known)
                    .unwrap_or("custom".into()),
            }
        };
        let o = match (&args.opening, &args.question, &cfg.opening, &cfg.question) {
            (Some(t), ..) => by_text(t, None),
            (None, Some(id), ..) => by_id(id)?,
            (None, None, Some(t), id) => by_text(t, id.as_deref()),
            (None, None, None, Some(id)) => by_id(id)?,
            (None, None, None, None) => {
                return Err(ChatError::Invalid(format!(
                    "no opening line: pass --opening TEXT or --question ID, or set `opening` in {DEFAULT_CONFIG}"
                )))
            }
        };
        if o.text.trim().is_empty() {
            return Err(ChatError::Invalid("the opening line is empty".into()));
        }
        Ok(o)
    }
}

/// One line of conversation: an adapter (or the base model) and its own history.
#[derive(Debug, Clone)]
pub struct Branch {
    /// `base`, or the adapter's short name (`model3/best`).
    pub name: String,
    pub adapter: Option<PathBuf>,
    /// The variant that decided the format, if any.
    pub variant: Option<String>,
    pub format: PromptFormat,
    /// The whole conversation from the opening (turn 0).
    pub turns: Vec<Utterance>,
}

impl Branch {
    pub fn new(adapter: Option<PathBuf>, variant: Option<String>, format: PromptFormat) -> Self {
        Self {
            name: adapter
                .as_deref()
                .map(adapter_name)
                .unwrap_or_else(|| "base".into()),
            adapter,
            variant,
            format,
            turns: Vec::new(),
        }
    }
}

/// Ctrl-C while a reply is being written stops that reply; at the prompt it quits.
#[derive(Debug, Default)]
pub struct Interrupt {
    busy: AtomicBool,
    stop: AtomicBool,
}

impl Interrupt {
    /// Installs the process's Ctrl-C handler.
    pub fn install() -> Arc<Self> {
        let flag = Arc::new(Self::default());
        let f = flag.clone();
        let _ = ctrlc::set_handler(move || {
            if f.busy.load(Ordering::SeqCst) {
                f.stop.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        });
        flag
    }
}

pub struct Session {
    model: CausalLm,
    tok: ChatTokenizer,
    /// How the base model was named.
    base: String,
    branches: Vec<Branch>,
    /// The adapter on the model now (`Some(None)`: none); `None`: not known.
    current: Option<Option<PathBuf>>,
    opening: Opening,
    params: SamplingParams,
    stops: Vec<u32>,
    persona: String,
    user: String,
    interrupt: Option<Arc<Interrupt>>,
}

const HELP: &str =
    "(/reset starts again from the opening, /save FILE appends this conversation to FILE, /quit or Ctrl-D ends)";

impl Session {
    pub fn new(
        model: CausalLm,
        tok: ChatTokenizer,
        base: String,
        branches: Vec<Branch>,
        opening: Opening,
        params: SamplingParams,
    ) -> Self {
        let stops = stop_tokens(&model.cfg, &tok);
        Self {
            model,
            tok,
            base,
            branches,
            current: None,
            opening,
            params,
            stops,
            persona: "model".into(),
            user: "you".into(),
            interrupt: None,
        }
    }

    /// Labels for the model's lines and the user's prompt.
    pub fn with_labels(mut self, persona: &str, user: &str) -> Self {
        self.persona = persona.into();
        self.user = user.into();
        self
    }

    pub fn with_interrupt(mut self, i: Arc<Interrupt>) -> Self {
        self.interrupt = Some(i);
        self
    }

    pub fn branches(&self) -> &[Branch] {
        &self.branches
    }

    /// Loads every branch's adapter once, so that a bad one fails before the conversation.
    pub fn check_adapters(&mut self) -> Result<()> {
        for b in 0..self.branches.len() {
            self.switch(b)?;
        }
        Ok(())
    }

    /// Talks until `/quit` or the end of `input`. `prompt`: show the user's prompt on `info`
    /// (for a terminal).
    pub fn run(
        &mut self,
        mut input: impl BufRead,
        out: &mut dyn Write,
        info: &mut dyn Write,
        prompt: bool,
    ) -> Result<()> {
        self.open(out, info)?;
        loop {
            if prompt {
                write!(info, "{}> ", self.user)?;
                info.flush()?;
            }
            let mut line = String::new();
            if input.read_line(&mut line)? == 0 {
                if prompt {
                    writeln!(info)?;
                }
                return Ok(());
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let Some(command) = line.strip_prefix('/') else {
                self.say(line, out, info)?;
                continue;
            };
            let (name, arg) = command
                .split_once(char::is_whitespace)
                .map(|(n, a)| (n, a.trim()))
                .unwrap_or((command, ""));
            match name {
                "quit" | "exit" | "q" => return Ok(()),
                "reset" => self.open(out, info)?,
                "save" if arg.is_empty() => writeln!(info, "usage: /save FILE")?,
                "save" => match self.save(Path::new(arg)) {
                    Ok(ids) => writeln!(info, "(saved {} to {arg})", ids.join(", "))?,
                    Err(e) => writeln!(info, "(not saved: {e})")?,
                },
                "help" => writeln!(info, "{HELP}")?,
                _ => writeln!(info, "(unknown command /{name}) {HELP}")?,
            }
        }
    }

    /// Starts (again) from the opening and shows each branch's first reply.
    fn open(&mut self, out: &mut dyn Write, info: &mut dyn Write) -> Result<()> {
        let opening = Utterance {
            role: Role::User,
            text: self.opening.text.clone(),
        };
        for b in &mut self.branches {
            b.turns = vec![opening.clone()];
        }
        let single = self.branches.len() == 1;
        if single {
            write!(out, "{}: {} ", self.persona, self.opening.text)?;
        } else {
            writeln!(out, "{}: {}", self.persona, self.opening.text)?;
        }
        for b in 0..self.branches.len() {
            if !single {
                write!(out, "[{}] ", self.branches[b].name)?;
            }
            // Turn 1 cannot be rolled back: an empty reply stays (and is reported).
            let text = self.answer(b, out, info)?;
            if text.is_empty() {
                writeln!(info, "(empty reply; /reset to try again)")?;
            }
            self.branches[b].turns.push(Utterance {
                role: Role::Model,
                text,
            });
        }
        Ok(())
    }

    /// The user's line, and each branch's reply to it.
    fn say(&mut self, text: &str, out: &mut dyn Write, info: &mut dyn Write) -> Result<()> {
        let single = self.branches.len() == 1;
        for b in 0..self.branches.len() {
            self.branches[b].turns.push(Utterance {
                role: Role::User,
                text: text.to_string(),
            });
            if single {
                write!(out, "{}: ", self.persona)?;
            } else {
                write!(out, "[{}] ", self.branches[b].name)?;
            }
            let reply = match self.answer(b, out, info) {
                Err(e @ ChatError::TooLong { .. }) => {
                    writeln!(out)?;
                    writeln!(info, "({e})")?;
                    String::new()
                }
                r => r?,
            };
            if reply.is_empty() {
                // Keep the history alternating: the line goes with its missing reply.
                self.branches[b].turns.pop();
                writeln!(info, "(no reply; your line was not kept)")?;
            } else {
                self.branches[b].turns.push(Utterance {
                    role: Role::Model,
                    text: reply,
                });
            }
        }
        Ok(())
    }

    fn switch(&mut self, b: usize) -> Result<()> {
        let want = self.branches[b].adapter.clone();
        if self.current.as_ref() != Some(&want) {
            self.current = None;
            use_adapter(&mut self.model, want.as_deref())?;
            self.current = Some(want);
        }
        Ok(())
    }

    /// Generates branch `b`'s reply to its last user turn, streaming it to `out`; returns its
    /// text (trimmed, as it was shown).
    fn answer(&mut self, b: usize, out: &mut dyn Write, info: &mut dyn Write) -> Result<String> {
        self.switch(b)?;
        let branch = &self.branches[b];
        let context = self.model.cfg.max_position_embeddings;
        let p = branch.format.build(
            &self.tok,
            &branch.turns,
            context,
            self.params.max_new_tokens,
        )?;
        if p.dropped > 0 {
            writeln!(
                info,
                "(context full: the oldest {} round(s) are left out)",
                p.dropped
            )?;
        }
        let mut params = self.params.clone();
        // Each turn its own seed; every branch the same one for the same turn.
        params.seed = params.seed.wrapping_add(branch.turns.len() as u64);
        params.max_new_tokens = params.max_new_tokens.min(p.room);
        let interrupt = self.interrupt.clone();
        if let Some(i) = &interrupt {
            i.stop.store(false, Ordering::SeqCst);
            i.busy.store(true, Ordering::SeqCst);
        }
        let mut started = false;
        let mut failed = None;
        let r = reply(
            &self.model,
            &self.tok,
            &p.ids,
            &params,
            &self.stops,
            |piece| {
                // Shown as it will be kept: without leading whitespace.
                let piece = if started { piece } else { piece.trim_start() };
                if !piece.is_empty() {
                    started = true;
                    if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                }
                match &interrupt {
                    Some(i) if i.stop.load(Ordering::SeqCst) => ControlFlow::Break(()),
                    _ => ControlFlow::Continue(()),
                }
            },
        );
        if let Some(i) = &interrupt {
            i.busy.store(false, Ordering::SeqCst);
        }
        let r = r?;
        if let Some(e) = failed {
            return Err(e.into());
        }
        writeln!(out)?;
        match r.stop {
            Stop::MaxTokens => writeln!(info, "(cut off at {} tokens)", r.tokens)?,
            Stop::Callback => writeln!(info, "(interrupted)")?,
            Stop::StopToken(_) => {}
        }
        Ok(r.text.trim().to_string())
    }

    /// Appends each branch's conversation to `path` as one dialogue line (the corpus format,
    /// plus where it came from); returns the ids written.
    pub fn save(&self, path: &Path) -> Result<Vec<String>> {
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let mut taken: HashSet<String> = existing
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("id")?.as_str().map(String::from))
            .collect();
        let created = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut text = String::new();
        if !existing.is_empty() && !existing.ends_with('\n') {
            text.push('\n');
        }
        let mut ids = Vec::new();
        for (k, b) in self.branches.iter().enumerate() {
            let stem = if self.branches.len() == 1 {
                format!("chat-{created}")
            } else {
                format!("chat-{created}-{}", k + 1)
            };
            let id = (1..)
                .map(|n| {
                    if n == 1 {
                        stem.clone()
                    } else {
                        format!("{stem}.{n}")
                    }
                })
                .find(|id| !taken.contains(id))
                .expect("an unused id");
            taken.insert(id.clone());
            let d = self.dialogue(b, &id, created);
            text.push_str(&serde_json::to_string(&d).expect("a dialogue serializes"));
            text.push('\n');
            ids.push(id);
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| crate::fsutil::FileError::new(dir, e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| crate::fsutil::FileError::new(path, e))?;
        f.write_all(text.as_bytes())
            .map_err(|e| crate::fsutil::FileError::new(path, e))?;
        Ok(ids)
    }

    fn dialogue(&self, b: &Branch, id: &str, created: u64) -> Dialogue {
        let p = &self.params;
        let mut extra = Map::new();
        extra.insert("source".into(), json!("chat"));
        extra.insert("base_model".into(), json!(self.base));
        extra.insert(
            "adapter".into(),
            json!(b.adapter.as_ref().map(|a| a.display().to_string())),
        );
        extra.insert("variant".into(), json!(b.variant));
        extra.insert("prefix".into(), json!(b.format.prefix));
        extra.insert("window_pairs".into(), json!(b.format.pairs));
        extra.insert("system".into(), json!(b.format.layout.system));
        extra.insert("format".into(), json!(b.format.layout.format));
        extra.insert(
            "sampling".into(),
            json!({
                "temperature": p.temperature, "top_p": p.top_p, "top_k": p.top_k,
                "repetition_penalty": p.repetition_penalty, "seed": p.seed,
                "max_new_tokens": p.max_new_tokens,
            }),
        );
        extra.insert("created".into(), json!(created));
        Dialogue {
            id: id.into(),
            persona: "chat".into(),
            question: self.opening.question.clone(),
            user_temperature: 0.0,
            turns: b
                .turns
                .iter()
                .map(|u| Turn {
                    role: u.role,
                    text: u.text.clone(),
                })
                .collect(),
            judge: None,
            review: None,
            extra,
        }
    }
}

/// `socratune chat`: loads the model, the adapters and their formats, then talks on
/// stdin/stdout.
pub fn chat(args: &ChatSpec, interrupt: Option<Arc<Interrupt>>) -> Result<()> {
    let config = ChatConfig::load(&args.config)?;
    let opening = Opening::resolve(args, &config)?;
    let params = sampling(&args.sampling.or(&config.sampling))?;
    let seed = params.seed;
    let adapters: Vec<Option<PathBuf>> = if args.compare.is_empty() {
        vec![args.adapter.clone()]
    } else {
        args.compare
            .iter()
            .map(|s| (s.trim() != "base").then(|| PathBuf::from(s.trim())))
            .collect()
    };
    let runs = adapters
        .iter()
        .map(|a| match a {
            Some(dir) => RunInfo::find(dir),
            None => Ok(None),
        })
        .collect::<Result<Vec<_>>>()?;
    let spec = &args.model;
    let dirs: Vec<&Path> = adapters.iter().flatten().map(PathBuf::as_path).collect();
    let loaded = load_base(
        spec,
        &dirs,
        &runs.iter().map(Option::as_ref).collect::<Vec<_>>(),
    )?;
    let mut err = std::io::stderr();
    writeln!(err, "{}", loaded.summary)?;
    let mut branches = Vec::new();
    for (adapter, run) in adapters.into_iter().zip(&runs) {
        let run_variant = run.as_ref().map(|r| &r.variant);
        let (format, variant) = prompt_format(&args.prompt, run_variant)?;
        let b = Branch::new(adapter, variant, format);
        let from = match (&args.prompt.variant, run) {
            (Some(f), _) => format!(" from {}", f.display()),
            (None, Some(r)) => format!(" from {}", r.stats.display()),
            _ => String::new(),
        };
        let variant = match &b.variant {
            Some(v) => format!("variant {v}{from}"),
            None => "no variant".into(),
        };
        writeln!(
            err,
            "{}: {variant}; each reply sees {}",
            b.name,
            b.format.describe()
        )?;
        branches.push(b);
    }
    writeln!(
        err,
        "opening {} · temperature {} · seed {seed} {HELP}",
        opening.question, params.temperature
    )?;
    let mut session = Session::new(
        loaded.model,
        loaded.tokenizer,
        loaded.base,
        branches,
        opening,
        params,
    )
    .with_labels(
        config.persona_name.as_deref().unwrap_or("model"),
        config.user_name.as_deref().unwrap_or("you"),
    );
    if let Some(i) = interrupt {
        session = session.with_interrupt(i);
    }
    session.check_adapters()?;
    let stdin = std::io::stdin();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    session.run(stdin.lock(), &mut std::io::stdout(), &mut err, interactive)
}
