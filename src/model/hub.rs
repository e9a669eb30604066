//! Where model files come from: a local folder, or a Hugging Face Hub repository through the
//! standard HF cache (`HF_HOME`), with `HF_TOKEN` for gated repos and offline use of a
//! populated cache (`HF_HUB_OFFLINE=1`, or automatically when the Hub cannot be reached).

use super::ModelError;
use hf_hub::{api::sync::ApiBuilder, Cache, Repo, RepoType};
use std::path::{Path, PathBuf};

/// A model (or tokenizer) location.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Local(PathBuf),
    Hub { repo: String, revision: String },
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Local(p) => write!(f, "{}", p.display()),
            Source::Hub { repo, revision } if revision == "main" => write!(f, "{repo}"),
            Source::Hub { repo, revision } => write!(f, "{repo}@{revision}"),
        }
    }
}

impl Source {
    /// A folder or file that exists is local; otherwise `org/name` is a Hub repo id.
    pub fn parse(spec: &str, revision: Option<&str>) -> Result<Self, ModelError> {
        let path = Path::new(spec);
        if path.exists() {
            return Ok(Source::Local(path.to_path_buf()));
        }
        let parts: Vec<&str> = spec.split('/').collect();
        let valid = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                && !s.starts_with('.')
        };
        if parts.len() == 2 && parts.iter().all(|p| valid(p)) {
            return Ok(Source::Hub {
                repo: spec.to_string(),
                revision: revision.unwrap_or("main").to_string(),
            });
        }
        Err(ModelError::Invalid(format!(
            "`{spec}` is neither an existing path nor a Hub repo id like `google/gemma-2-2b-it`"
        )))
    }

    /// The path of `name` in this source, downloading it into the HF cache if needed.
    pub fn file(&self, name: &str) -> Result<PathBuf, ModelError> {
        self.optional_file(name)?.ok_or_else(|| match self {
            Source::Local(dir) => ModelError::file(&dir.join(name), "not found"),
            Source::Hub { .. } => ModelError::Hub {
                repo: self.to_string(),
                message: format!("file `{name}` not found in the repository"),
            },
        })
    }

    /// Like [`Source::file`], but a file the source does not have is `None`, not an error.
    pub(crate) fn optional_file(&self, name: &str) -> Result<Option<PathBuf>, ModelError> {
        match self {
            Source::Local(dir) => {
                let p = if dir.is_file() {
                    dir.clone()
                } else {
                    dir.join(name)
                };
                Ok(p.is_file().then_some(p))
            }
            Source::Hub { repo, revision } => hub_file(repo, revision, name),
        }
    }
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The token for gated repos: `HF_TOKEN`, else the token file `huggingface-cli login` writes.
/// Never printed or written anywhere.
fn token() -> Option<String> {
    std::env::var("HF_TOKEN")
        .ok()
        .filter(|t| !t.trim().is_empty())
        .or_else(|| Cache::from_env().token())
}

fn cached(repo: &str, revision: &str, name: &str) -> Option<PathBuf> {
    let cache = Cache::from_env();
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    if let Some(p) = cache.repo(hub_repo.clone()).get(name) {
        return Some(p);
    }
    // A commit hash has a snapshot folder but no ref file.
    let snap = cache
        .path()
        .join(hub_repo.folder_name())
        .join("snapshots")
        .join(revision)
        .join(name);
    snap.is_file().then_some(snap)
}

fn hub_file(repo: &str, revision: &str, name: &str) -> Result<Option<PathBuf>, ModelError> {
    if let Some(p) = cached(repo, revision, name) {
        return Ok(Some(p));
    }
    let err = |message: String| ModelError::Hub {
        repo: repo.to_string(),
        message,
    };
    if offline() {
        // Only a file the cache has no trace of at all is "absent"; say why it is missing.
        let cache = Cache::from_env();
        let folder = cache
            .path()
            .join(Repo::model(repo.to_string()).folder_name());
        if folder.exists() {
            return Ok(None);
        }
        return Err(err(format!(
            "not in the HF cache ({}) and HF_HUB_OFFLINE is set",
            cache.path().display()
        )));
    }
    let api = ApiBuilder::from_env()
        .with_token(token())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .build()
        .map_err(|e| err(format!("cannot start the Hub client: {e}")))?;
    let hub_repo = Repo::with_revision(repo.to_string(), RepoType::Model, revision.to_string());
    match api.repo(hub_repo).get(name) {
        Ok(p) => Ok(Some(p)),
        Err(hf_hub::api::sync::ApiError::RequestError(e)) => match *e {
            ureq::Error::Status(404, _) => Ok(None),
            ureq::Error::Status(401 | 403, _) => Err(err(if token().is_some() {
                "access denied: the token in HF_TOKEN has no access to this gated or private \
                 repository (accept its license on huggingface.co)"
                    .into()
            } else {
                "access denied: the repository is gated or private; accept its license on \
                 huggingface.co and set HF_TOKEN"
                    .into()
            })),
            ureq::Error::Status(code, _) => Err(err(format!("the Hub answered HTTP {code} for `{name}`"))),
            ureq::Error::Transport(t) => Err(err(format!(
                "cannot reach the Hub ({}) and `{name}` is not in the HF cache; set HF_HUB_OFFLINE=1 to use the cache only",
                t.kind()
            ))),
        },
        Err(e) => Err(err(format!("download of `{name}` failed: {e}"))),
    }
}

/// Lays out files as the HF cache does (used by tests and by `socratune` to adopt a folder).
pub fn populate_cache(
    hf_home: &Path,
    repo: &str,
    commit: &str,
    files: &[(&str, &Path)],
) -> std::io::Result<()> {
    let folder = hf_home
        .join("hub")
        .join(Repo::model(repo.to_string()).folder_name());
    let snap = folder.join("snapshots").join(commit);
    std::fs::create_dir_all(&snap)?;
    for (name, src) in files {
        let dst = snap.join(name);
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::copy(src, dst)?;
    }
    std::fs::create_dir_all(folder.join("refs"))?;
    std::fs::write(folder.join("refs").join("main"), commit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_repo_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = Source::parse(dir.path().to_str().unwrap(), None).unwrap();
        assert_eq!(s, Source::Local(dir.path().to_path_buf()));
        assert_eq!(
            Source::parse("google/gemma-2-2b-it", Some("abc")).unwrap(),
            Source::Hub {
                repo: "google/gemma-2-2b-it".into(),
                revision: "abc".into()
            }
        );
        let e = Source::parse("no/such/place", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("neither an existing path nor a Hub repo id"),
            "{e}"
        );
    }
}
