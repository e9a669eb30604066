//! Names of the files that travel with an output file (journal, manifest, failures, report).

use std::path::{Path, PathBuf};

/// `data/dialogues.jsonl` + `journal.jsonl` → `data/dialogues.journal.jsonl`: the output's
/// name without its last extension, then the suffix.
pub fn sidecar(out: &Path, suffix: &str) -> PathBuf {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    out.with_file_name(format!("{stem}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_last_extension() {
        assert_eq!(
            sidecar(Path::new("data/dialogues.jsonl"), "journal.jsonl"),
            PathBuf::from("data/dialogues.journal.jsonl")
        );
        assert_eq!(
            sidecar(Path::new("x"), "manifest.json"),
            PathBuf::from("x.manifest.json")
        );
    }
}
