//! Run-folder locks: one live process per run folder.
//!
//! `<dir>/.lock` names its holder (PID, host, command, start time) for the error message, and
//! holds an advisory `flock`: the kernel drops that when the holder exits in any way (SIGKILL
//! included), so a lock file whose flock is free is stale by construction, without guessing
//! from PIDs (which are reused, and mean nothing on another host of a shared file system).

use crate::fsutil::FileError;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = ".lock";

/// Who holds (or held) a lock.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    /// Unix seconds.
    pub since: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "process {} on {} (`{}`, since unix time {})",
            self.pid, self.host, self.command, self.since
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{} is in use by {holder}; wait for it to finish or stop it first", dir.display())]
    Busy { dir: PathBuf, holder: String },
    #[error(transparent)]
    File(#[from] FileError),
}

/// A held lock; dropping it releases it and removes the file.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Held open for its flock, which closing releases.
    _file: File,
    /// A stale lock that was taken over, for the caller to mention.
    pub stale: Option<Holder>,
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or
    // truncates, and we stop at the first NUL.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Tries the advisory lock without waiting; false when another process holds it.
fn try_flock(file: &File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Whether `file` is still the one at `path` (not unlinked by a releasing holder meanwhile).
fn still_there(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    serde_json::from_str(&s).ok()
}

impl RunLock {
    /// Locks `dir` (created if missing) for `command`, or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self, LockError> {
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(dir, e))?;
        let path = dir.join(LOCK_FILE);
        let err = |e| FileError::new(&path, e);
        loop {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(err)?;
            if !try_flock(&file).map_err(err)? {
                let holder = read_holder(&mut file)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|| "another process".into());
                return Err(LockError::Busy {
                    dir: dir.to_path_buf(),
                    holder,
                });
            }
            // The previous holder may have removed the file between our open and our flock:
            // then we locked a file nobody else will see; start over.
            if !still_there(&file, &path) {
                continue;
            }
            let stale = read_holder(&mut file);
            let me = Holder {
                pid: std::process::id(),
                host: hostname(),
                command: command.into(),
                since: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            };
            file.set_len(0).map_err(err)?;
            file.rewind().map_err(err)?;
            file.write_all(serde_json::to_string(&me).expect("serializes").as_bytes())
                .map_err(err)?;
            file.sync_data().map_err(err)?;
            return Ok(Self {
                path,
                _file: file,
                stale,
            });
        }
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        // Removed while still locked, so that nobody takes the old file after we let go.
        let _ = std::fs::remove_file(&self.path);
        // Closing `_file` (next, as the struct drops) releases the flock.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_named_and_the_lock_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let a = RunLock::acquire(&run, "train --variant x").unwrap();
        assert!(a.stale.is_none());
        let e = RunLock::acquire(&run, "train").unwrap_err().to_string();
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        assert!(e.contains("train --variant x"), "{e}");
        drop(a);
        assert!(!run.join(LOCK_FILE).exists());
        RunLock::acquire(&run, "train").unwrap();
    }

    #[test]
    fn a_lock_file_nobody_holds_is_stale_and_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let old = Holder {
            pid: 999_999,
            host: "elsewhere".into(),
            command: "train".into(),
            since: 1,
        };
        std::fs::write(
            dir.path().join(LOCK_FILE),
            serde_json::to_string(&old).unwrap(),
        )
        .unwrap();
        let l = RunLock::acquire(dir.path(), "sweep").unwrap();
        assert_eq!(l.stale, Some(old));
        let now: Holder =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap())
                .unwrap();
        assert_eq!(now.pid, std::process::id());
        assert_eq!(now.command, "sweep");
    }
}
