//! Generic JSONL reading (with line numbers) and atomic writing.

use super::CorpusError;
use crate::fsutil::{write_atomic_with, FileError};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// A line that could not be used, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct BadLine {
    pub path: PathBuf,
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.message)
    }
}

impl From<BadLine> for CorpusError {
    fn from(b: BadLine) -> Self {
        CorpusError::Line {
            path: b.path,
            line: b.line,
            message: b.message,
        }
    }
}

/// Records read from a file, each with its 1-based line number.
#[derive(Debug)]
pub struct Loaded<T> {
    pub records: Vec<(usize, T)>,
    pub skipped: Vec<BadLine>,
}

/// Reads one JSON object a line; blank lines are ignored. Every line that does not parse is
/// returned in `skipped` with the reason; the caller decides whether that is fatal.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Loaded<T>, CorpusError> {
    let file = std::fs::File::open(path).map_err(|e| FileError::new(path, e))?;
    let mut records = Vec::new();
    let mut skipped = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_no = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                skipped.push(BadLine {
                    path: path.into(),
                    line: line_no,
                    message: e.to_string(),
                });
                continue;
            }
        };
        let mut text = line.trim();
        if line_no == 1 {
            // A byte-order mark (Notepad writes one) is an encoding signature, not JSON.
            text = text.strip_prefix('\u{feff}').unwrap_or(text).trim_start();
        }
        if text.is_empty() {
            continue;
        }
        match serde_json::from_str::<T>(text) {
            Ok(r) => records.push((line_no, r)),
            Err(e) => skipped.push(BadLine {
                path: path.into(),
                line: line_no,
                // serde only says "expected value at column 1" for a mark it cannot see.
                message: if text.starts_with('\u{feff}') {
                    "starts with a byte-order mark (U+FEFF), allowed only at the start of the file; \
                     save the file as UTF-8 without BOM"
                        .into()
                } else {
                    describe_json_error(&e)
                },
            }),
        }
    }
    Ok(Loaded { records, skipped })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match e.classify() {
        Category::Syntax | Category::Eof => format!("malformed JSON: {e}"),
        Category::Data => format!("invalid record: {e}"),
        Category::Io => e.to_string(),
    }
}

/// Writes records one JSON object a line, atomically.
pub fn write_jsonl<'a, T: Serialize + 'a>(
    path: &Path,
    records: impl IntoIterator<Item = &'a T>,
) -> Result<(), FileError> {
    write_atomic_with(path, |w| {
        for r in records {
            serde_json::to_writer(&mut *w, r)?;
            w.write_all(b"\n")?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    struct R {
        id: String,
    }

    #[test]
    fn a_byte_order_mark_at_the_start_is_ignored_but_not_elsewhere() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "\u{feff}{\"id\":\"a\"}\n\u{feff}{\"id\":\"b\"}\n").unwrap();
        let l = read_jsonl::<R>(&p).unwrap();
        assert_eq!(l.records, vec![(1, R { id: "a".into() })]);
        assert_eq!(l.skipped[0].line, 2);
        assert!(
            l.skipped[0].message.contains("byte-order mark"),
            "{:?}",
            l.skipped
        );
    }

    #[test]
    fn reports_line_numbers_of_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, "{\"id\":\"a\"}\n\n{\"id\":\n{\"name\":\"b\"}\n").unwrap();
        let l = read_jsonl::<R>(&p).unwrap();
        assert_eq!(l.records, vec![(1, R { id: "a".into() })]);
        assert_eq!(l.skipped.len(), 2);
        assert_eq!(l.skipped[0].line, 3);
        assert!(
            l.skipped[0].message.contains("malformed JSON"),
            "{}",
            l.skipped[0]
        );
        assert_eq!(l.skipped[1].line, 4);
        assert!(
            l.skipped[1].message.contains("missing field `id`"),
            "{}",
            l.skipped[1]
        );
    }

    #[test]
    fn write_then_read_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.jsonl");
        let rs = vec![R { id: "a".into() }, R { id: "b".into() }];
        write_jsonl(&p, &rs).unwrap();
        let l = read_jsonl::<R>(&p).unwrap();
        assert_eq!(
            l.records.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
            rs
        );
    }
}
