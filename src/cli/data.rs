//! `socratune data …`: argument shapes, and dispatch to `socratune::dataset` with printing.

use clap::{Args, Subcommand};
use socratune::corpus::{load_personas, load_questions, BadLine, Catalog};
use socratune::dataset::{
    self, charts::write_charts, markdown_table, tokenizer::train_small_for, BuildOptions,
    ChatTemplate, DatasetError, Inputs, Overflow, Selection, DEFAULT_SEED,
};
use socratune::fsutil::{write_atomic, FileError};
use std::path::{Path, PathBuf};

const DEFAULT_TOKENIZER: &str = "google/gemma-2-2b-it";
const DEFAULT_VARIANTS: &str = "configs/variants";
const DEFAULT_PERSONAS: &str = "data/personas.jsonl";
const DEFAULT_QUESTIONS: &str = "data/questions.jsonl";

#[derive(Debug, Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

/// The inputs `stats` and `build` share.
#[derive(Debug, Clone, Args)]
pub struct CorpusArgs {
    /// The dialogue file (JSONL).
    #[arg(long)]
    pub dialogues: PathBuf,
    /// tokenizer.json, a folder holding one, or a Hub repo id.
    #[arg(long, default_value = DEFAULT_TOKENIZER)]
    pub tokenizer: String,
    /// Folder of variant files (<name>.toml).
    #[arg(long, default_value = DEFAULT_VARIANTS)]
    pub variants: PathBuf,
    /// Seed of the 80/20 split by dialogue.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Skip bad lines and dialogues too short for a variant (each reported) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Count dialogues with neither judge scores nor a review as kept.
    #[arg(long)]
    pub include_unjudged: bool,
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Validate a dialogue file; count kept, dropped (with reasons) and unjudged dialogues.
    Check {
        /// The dialogue file (JSONL).
        dialogues: PathBuf,
        /// Personas file (default: data/personas.jsonl when it exists).
        #[arg(long)]
        personas: Option<PathBuf>,
        /// Opening questions file (default: data/questions.jsonl when it exists).
        #[arg(long)]
        questions: Option<PathBuf>,
        /// Report bad lines but do not fail on them.
        #[arg(long)]
        skip_bad: bool,
        /// Count dialogues with neither judge scores nor a review as kept.
        #[arg(long)]
        include_unjudged: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Token statistics per variant (Markdown table, JSON lines, SVG charts).
    Stats {
        #[command(flatten)]
        corpus: CorpusArgs,
        /// Print one JSON object per variant a line instead of the table.
        #[arg(long)]
        json: bool,
        /// Also write total_tokens.svg and mean_tokens.svg into this folder.
        #[arg(long)]
        charts: Option<PathBuf>,
    },
    /// Write runs/<variant>/data/{train,val}.jsonl, split.json and stats.json.
    Build {
        /// Variant(s) to build (repeatable).
        #[arg(
            long = "variant",
            value_name = "NAME",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        variants_named: Vec<String>,
        /// Build every variant in --variants.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        corpus: CorpusArgs,
        /// The runs folder.
        #[arg(long, default_value = "runs")]
        out: PathBuf,
        /// Longest example in tokens (none by default).
        #[arg(long)]
        max_len: Option<usize>,
        /// What to do with a longer example: drop it, or truncate from the left keeping BOS.
        #[arg(long, default_value_t = Overflow::Drop)]
        overflow: Overflow,
    },
    /// Train a small byte-level BPE tokenizer on a corpus (for tests and the offline demo).
    Tokenizer {
        /// The dialogue file whose texts it is trained on.
        #[arg(long)]
        dialogues: PathBuf,
        /// Vocabulary size, special tokens included (at least 262).
        #[arg(long, default_value_t = 384)]
        vocab_size: usize,
        /// Whose special tokens it has, and so which chat template it renders: gemma, qwen3
        /// or llama3.
        #[arg(long, default_value_t = ChatTemplate::Gemma)]
        template: ChatTemplate,
        /// Where to write tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
}

impl CorpusArgs {
    fn inputs(self, selection: Selection) -> Inputs {
        Inputs {
            dialogues: self.dialogues,
            tokenizer: self.tokenizer,
            variants_dir: self.variants,
            selection,
            seed: self.seed,
            skip_bad: self.skip_bad,
            include_unjudged: self.include_unjudged,
        }
    }
}

impl DataArgs {
    pub fn run(self) -> anyhow::Result<()> {
        match self.command {
            DataCommand::Check {
                dialogues,
                personas,
                questions,
                skip_bad,
                include_unjudged,
                json,
            } => {
                let catalog = catalog(personas, questions)?;
                let report = dataset::check(&dialogues, catalog.as_ref(), include_unjudged)?;
                if json {
                    let json = serde_json::to_string_pretty(&report).expect("a report serializes");
                    emit(&(json + "\n"))?;
                } else {
                    emit(&report.to_string())?;
                }
                if !skip_bad && !report.bad_lines.is_empty() {
                    anyhow::bail!(
                        "{}: {} bad line(s); first: {} (--skip-bad to go on without them)",
                        dialogues.display(),
                        report.bad_lines.len(),
                        report.bad_lines[0]
                    );
                }
            }
            DataCommand::Stats {
                corpus,
                json,
                charts,
            } => {
                let p = dataset::prepare(corpus.inputs(Selection::All))?;
                warn_skipped(&p.corpus.skipped, &p.variants);
                let rows = p.stats();
                if json {
                    let lines: Vec<String> = rows
                        .iter()
                        .map(|r| serde_json::to_string(r).expect("stats serialize") + "\n")
                        .collect();
                    emit(&lines.concat())?;
                } else {
                    emit(&markdown_table(&rows))?;
                }
                if let Some(dir) = charts {
                    for path in write_charts(&rows, &dir)? {
                        eprintln!("wrote {}", path.display());
                    }
                }
            }
            DataCommand::Build {
                variants_named,
                all,
                corpus,
                out,
                max_len,
                overflow,
            } => {
                let selection = if all {
                    Selection::All
                } else {
                    Selection::Named(variants_named)
                };
                let mut inputs = vec![
                    ("dialogue file", corpus.dialogues.as_path()),
                    ("variants folder", corpus.variants.as_path()),
                ];
                if Path::new(&corpus.tokenizer).exists() {
                    inputs.push(("tokenizer", Path::new(&corpus.tokenizer)));
                }
                socratune::fsutil::check_apart(&out, &inputs)?;
                let p = dataset::prepare(corpus.inputs(selection))?;
                warn_skipped(&p.corpus.skipped, &p.variants);
                let reports = dataset::build(
                    &p,
                    &BuildOptions {
                        out,
                        max_len,
                        overflow,
                    },
                )?;
                emit(&markdown_table(&p.stats()))?;
                for r in &reports {
                    let mut line = format!("{}: {} train, {} val", r.dir.display(), r.train, r.val);
                    if let Some(m) = max_len {
                        line += &format!(
                            ", {} truncated, {} dropped (max length {m}, {overflow})",
                            r.truncated, r.dropped
                        );
                    }
                    emit(&(line + "\n"))?;
                    for w in r.warnings() {
                        eprintln!("warning: {w}");
                    }
                }
            }
            DataCommand::Tokenizer {
                dialogues,
                vocab_size,
                template,
                out,
            } => {
                let corpus = dataset::Corpus::load(&dialogues, false)?;
                let texts: Vec<&str> = corpus
                    .dialogues
                    .iter()
                    .flat_map(|d| d.turns.iter().map(|t| t.text.as_str()))
                    .collect();
                let tok = train_small_for(template, &texts, vocab_size)?;
                let json = tok
                    .to_string(false)
                    .map_err(|e| DatasetError::tokenizer(&out, format!("cannot serialize: {e}")))?;
                write_atomic(&out, json.as_bytes())?;
                emit(&format!(
                    "{}: {} tokens, {template} chat template\n",
                    out.display(),
                    tok.get_vocab_size(true)
                ))?;
            }
        }
        Ok(())
    }
}

/// Personas and questions to check references against: both given, both defaulted, or none.
fn catalog(
    personas: Option<PathBuf>,
    questions: Option<PathBuf>,
) -> Result<Option<Catalog>, DatasetError> {
    let or_default = |p: Option<PathBuf>, default: &str| {
        p.or_else(|| Path::new(default).is_file().then(|| default.into()))
    };
    match (
        or_default(personas, DEFAULT_PERSONAS),
        or_default(questions, DEFAULT_QUESTIONS),
    ) {
        (Some(p), Some(q)) => Ok(Some(Catalog {
            personas: load_personas(&p)?,
            questions: load_questions(&q)?,
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(DatasetError::Invalid(
            "--personas needs --questions too (no data/questions.jsonl here) to check references"
                .into(),
        )),
        (None, Some(_)) => Err(DatasetError::Invalid(
            "--questions needs --personas too (no data/personas.jsonl here) to check references"
                .into(),
        )),
    }
}

/// Writes a result to stdout; a closed pipe (`| head`) ends the output quietly.
fn emit(text: &str) -> Result<(), DatasetError> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(FileError::new(Path::new("<stdout>"), e).into())
        }
        _ => Ok(()),
    }
}

/// What `--skip-bad` left out, on stderr so that stdout stays the result.
fn warn_skipped(lines: &[BadLine], variants: &[(dataset::Variant, dataset::Extracted)]) {
    for b in lines {
        eprintln!("warning: skipped {b}");
    }
    for (v, x) in variants {
        for m in &x.too_short {
            eprintln!("warning: variant {}: skipped {m}", v.name);
        }
    }
}
