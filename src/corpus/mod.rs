//! The dialogue corpus: dialogues, personas and opening questions, and their JSONL files.
//!
//! Readers report `file:line: what is wrong`; writers are atomic and never touch their input.

mod dialogue;
mod jsonl;
mod persona;
mod question;
mod validate;

pub use dialogue::{Decision, Dialogue, Judge, Review, Role, Turn, KEEP_THRESHOLD};
pub use jsonl::{read_jsonl, write_jsonl, BadLine, Loaded};
pub use persona::{Persona, PersonaKind};
pub use question::Question;
pub use validate::{load_dialogues, load_personas, load_questions, Catalog, LoadOptions};

use std::path::PathBuf;

/// Everything that can go wrong reading or writing corpus files.
#[derive(Debug, thiserror::Error)]
pub enum CorpusError {
    #[error(transparent)]
    File(#[from] crate::fsutil::FileError),
    /// One bad line; the message says what is wrong with it.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        message: String,
    },
    /// Several bad lines were found (only the first few are in the message).
    #[error("{}: {count} bad line(s); first: {first}", path.display())]
    BadLines {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("{}: no records", path.display())]
    Empty { path: PathBuf },
}
