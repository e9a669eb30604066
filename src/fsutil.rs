//! Small file-system helpers shared by every stage: atomic writes and content hashes.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An I/O error that names the file it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    pub fn new(path: &Path, source: std::io::Error) -> Self {
        Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Writes `bytes` to `path` atomically: a temporary file in the same folder, fsynced, then
/// renamed over the target, so a crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FileError> {
    write_atomic_with(path, |f| f.write_all(bytes))
}

/// Like [`write_atomic`], with a closure that streams the content.
pub fn write_atomic_with(
    path: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<&std::fs::File>) -> std::io::Result<()>,
) -> Result<(), FileError> {
    let err = |e| FileError::new(path, e);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(err)?;
    {
        let mut w = std::io::BufWriter::new(tmp.as_file());
        fill(&mut w).map_err(err)?;
        w.flush().map_err(err)?;
    }
    // Temporary files are created private (0600); give the result the permissions of the file it
    // replaces, or the usual 0644.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644);
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode)).map_err(err)?;
    }
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    sync_dir(dir);
    Ok(())
}

/// Writes `value` as pretty JSON (with a final newline), atomically.
pub fn write_json<T: serde::Serialize + ?Sized>(path: &Path, value: &T) -> Result<(), FileError> {
    write_atomic_with(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value)?;
        w.write_all(b"\n")
    })
}

/// Best effort: makes a rename durable on file systems that need the folder synced.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Training allocates and frees the same large activation buffers every step. glibc serves
/// large blocks with mmap and unmaps them on free, so every step page-faults (and the kernel
/// zeroes) all of its memory again; keeping freed memory in the heap makes CPU training steps
/// about 1.7× faster (benches/NOTES.md). Call once, first thing in `main`.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters; called before other threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Gives memory freed since to the system. With `keep_freed_memory` nothing is ever returned
/// on its own, so a server calls this after a request that made it hold a large block (a big
/// body, refused or not), keeping its resident size where it was.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free heap pages; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Undoes `keep_freed_memory` for blocks of 1 MiB and more: they are mapped on their own and
/// unmapped when freed. A server needs this: a thread arena never gives back its free top
/// (`malloc_trim` only shrinks the main heap's), so every connection thread that once read a
/// large body would keep it resident.
pub fn large_blocks_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// Hex SHA-256 of some bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex SHA-256 of a file's content.
pub fn sha256_file(path: &Path) -> Result<String, FileError> {
    let bytes = std::fs::read(path).map_err(|e| FileError::new(path, e))?;
    Ok(sha256_hex(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o644
            );
        }
    }

    #[test]
    fn sha256_matches_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

/// An output folder that would overwrite (or delete) something the command reads.
#[derive(Debug, thiserror::Error)]
#[error("--out {}: {relation} the {what} {}{}; choose an output folder apart from the inputs", out.display(), input.display(), if *resolved { " (after resolving links)" } else { "" })]
pub struct Overlap {
    pub out: PathBuf,
    pub input: PathBuf,
    /// What the input is, e.g. `base model`.
    pub what: String,
    /// `is`, `contains` or `lies inside`.
    pub relation: &'static str,
    /// Whether the overlap only shows once links are followed.
    pub resolved: bool,
}

/// `path` made absolute with every link followed, also where its last components do not exist
/// yet (those are taken as written, `..` applied).
pub fn resolve(path: &Path) -> PathBuf {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    };
    let mut missing = Vec::new();
    let mut base = abs.as_path();
    let found = loop {
        if let Ok(p) = base.canonicalize() {
            break p;
        }
        match (base.parent(), base.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_os_string());
                base = parent;
            }
            // `..` at the end, or the root: nothing more to follow.
            _ => break base.to_path_buf(),
        }
    };
    let mut out = found;
    for name in missing.into_iter().rev() {
        if name == ".." {
            out.pop();
        } else if name != "." {
            out.push(name);
        }
    }
    out
}

/// Refuses an output folder that is, contains or lies inside one of `inputs` (`(what, path)`),
/// comparing paths with links followed.
pub fn check_apart(out: &Path, inputs: &[(&str, &Path)]) -> Result<(), Overlap> {
    let o = resolve(out);
    for (what, input) in inputs {
        let i = resolve(input);
        let relation = if o == i {
            "is"
        } else if i.starts_with(&o) {
            "contains"
        } else if o.starts_with(&i) {
            "lies inside"
        } else {
            continue;
        };
        let plain = out == *input || input.starts_with(out) || out.starts_with(input);
        return Err(Overlap {
            out: out.to_path_buf(),
            input: input.to_path_buf(),
            what: what.to_string(),
            relation,
            resolved: !plain,
        });
    }
    Ok(())
}

#[cfg(test)]
mod overlap_tests {
    use super::*;

    #[test]
    fn outputs_that_touch_an_input_are_refused_also_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let model = d.join("model");
        std::fs::create_dir_all(model.join("sub")).unwrap();
        std::fs::create_dir_all(d.join("elsewhere")).unwrap();
        let inputs = [("base model", model.as_path())];
        let e = check_apart(&model, &inputs).unwrap_err().to_string();
        assert!(
            e.contains("is the base model") && !e.contains("links"),
            "{e}"
        );
        let e = check_apart(d, &inputs).unwrap_err().to_string();
        assert!(e.contains("contains the base model"), "{e}");
        let e = check_apart(&model.join("sub/new"), &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lies inside the base model"), "{e}");
        std::os::unix::fs::symlink(&model, d.join("link")).unwrap();
        let e = check_apart(&d.join("link"), &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is the base model") && e.contains("after resolving links"),
            "{e}"
        );
        let e = check_apart(&d.join("elsewhere/../model/x"), &inputs)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lies inside"), "{e}");
        check_apart(&d.join("elsewhere/out"), &inputs).unwrap();
        check_apart(&d.join("model-2"), &inputs).unwrap();
    }
}
