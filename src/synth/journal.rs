//! The append-only call journal: every answer a server gave, fsynced before it is used, keyed
//! by a hash of what was asked. A rerun answers every call it finds here from the file, so a
//! run killed at any moment resumes at the exact turn without paying for a call twice.
//!
//! The key hashes the endpoint URL, the exact request body (model, parameters, messages) and
//! a *scope* (the dialogue id, plus the attempt for judge re-asks): two dialogues that happen
//! to send the same request (Socrates' first reply to the same question) still get their own
//! samples, as they would have without a journal.

use super::client::{ChatRequest, Client, Completion};
use super::progress::{Log, Stats};
use super::SynthError;
use crate::fsutil::{sha256_hex, FileError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// One journal line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub key: String,
    /// Which dialogue (and attempt) the call belonged to, for people reading the file.
    pub scope: String,
    /// Which call of the scope, e.g. `turn 3` or `judge`.
    pub label: String,
    pub model: String,
    pub completion: Completion,
    /// Set on a later line for the same key when the answer led to a final failure (a
    /// judgement that never parsed, a reply cut off): such an answer is asked again on the
    /// next run, never replayed as final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    entries: Mutex<HashMap<String, Completion>>,
}

/// The key of one call: SHA-256 of the canonical JSON of `{url, body, scope}`.
pub fn call_key(url: &str, body: &Value, scope: &str) -> String {
    let v = serde_json::json!({"url": url, "body": body, "scope": scope});
    let mut s = String::new();
    canonical(&v, &mut s);
    sha256_hex(s.as_bytes())
}

/// JSON with object keys sorted, so the key does not depend on map ordering.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Cuts a file back to its last newline: a crash mid-append leaves a torn last line, which
/// must go before anything else is appended after it. Returns the bytes dropped.
pub fn repair_tail(path: &Path) -> Result<u64, FileError> {
    let err = |e| FileError::new(path, e);
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(err(e)),
    };
    let len = f.metadata().map_err(err)?.len();
    if len == 0 {
        return Ok(0);
    }
    // Scan backwards in blocks for the last newline.
    let mut end = len;
    let mut buf = vec![0u8; 64 * 1024];
    let keep = loop {
        let start = end.saturating_sub(buf.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start)).map_err(err)?;
        f.read_exact(&mut buf[..n]).map_err(err)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        if start == 0 {
            break 0;
        }
        end = start;
    };
    if keep < len {
        f.set_len(keep).map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    Ok(len - keep)
}

/// Appends one line (which must end with a newline) with a single write, then fsyncs.
pub fn append_line(file: &mut File, path: &Path, line: &str) -> Result<(), FileError> {
    let err = |e| FileError::new(path, e);
    file.write_all(line.as_bytes()).map_err(err)?;
    file.sync_data().map_err(err)
}

/// Opens a file for appending after repairing a torn tail.
pub fn open_append(path: &Path, log: &Log) -> Result<File, FileError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| FileError::new(path, e))?;
    }
    let dropped = repair_tail(path)?;
    if dropped > 0 {
        log(&format!(
            "{}: dropped a torn last line ({dropped} bytes) left by an interrupted run",
            path.display()
        ));
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| FileError::new(path, e))
}

impl Journal {
    /// Opens (or creates) a journal; a torn last line is dropped, any other bad line is an
    /// error naming it. When a key occurs twice, the later entry wins.
    pub fn open(path: &Path, log: &Log) -> Result<Self, SynthError> {
        let file = open_append(path, log)?;
        let mut entries = HashMap::new();
        let reader =
            std::io::BufReader::new(File::open(path).map_err(|e| FileError::new(path, e))?);
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| FileError::new(path, e))?;
            if line.trim().is_empty() {
                continue;
            }
            let e: Entry = serde_json::from_str(&line).map_err(|e| SynthError::Journal {
                path: path.into(),
                line: i + 1,
                message: format!("unreadable journal entry: {e}"),
            })?;
            if e.rejected.is_some() {
                entries.remove(&e.key);
            } else {
                entries.insert(e.key, e.completion);
            }
        }
        Ok(Self {
            path: path.into(),
            file: Mutex::new(file),
            entries: Mutex::new(entries),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, key: &str) -> Option<Completion> {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    /// Appends and fsyncs one entry; only then is it visible to `get` (or, for a rejection,
    /// gone from it).
    pub fn append(&self, e: &Entry) -> Result<(), SynthError> {
        let mut line = serde_json::to_string(e).map_err(|x| SynthError::Config(x.to_string()))?;
        line.push('\n');
        {
            let mut f = self.file.lock().unwrap_or_else(|x| x.into_inner());
            append_line(&mut f, &self.path, &line)?;
        }
        let mut m = self.entries.lock().unwrap_or_else(|x| x.into_inner());
        if e.rejected.is_some() {
            m.remove(&e.key);
        } else {
            m.insert(e.key.clone(), e.completion.clone());
        }
        Ok(())
    }

    /// Marks a journaled answer as having failed (why: `reason`), so that the next run asks
    /// again instead of replaying it. Appended, like everything else: the answer stays in the
    /// file for people to read.
    pub fn reject(
        &self,
        key: &str,
        scope: &str,
        label: &str,
        reason: &str,
    ) -> Result<(), SynthError> {
        let Some(completion) = self.get(key) else {
            return Ok(());
        };
        let e = Entry {
            key: key.into(),
            scope: scope.into(),
            label: label.into(),
            model: String::new(),
            completion,
            rejected: Some(reason.into()),
        };
        self.append(&e)
    }

    /// Answers a call from the journal, or makes it and journals the answer before returning
    /// it with its key (for `reject`). With `retry_failed`, a journaled answer that failed its
    /// check (cut off, empty) is asked again instead of replayed, also in journals written
    /// before failures were marked.
    pub fn call(
        &self,
        client: &Client,
        stats: &Stats,
        retry_failed: bool,
        scope: &str,
        label: &str,
        req: &ChatRequest,
    ) -> Result<(String, Completion), SynthError> {
        let body = client.body(req);
        let key = call_key(client.url(), &body, scope);
        if let Some(c) = self.get(&key) {
            if !(retry_failed && c.check().is_err()) {
                Stats::add(&stats.replayed, 1);
                return Ok((key, c));
            }
        }
        let c = client
            .send(&body)
            .inspect_err(|_| Stats::add(&stats.failed_calls, 1))?;
        self.append(&Entry {
            key: key.clone(),
            scope: scope.into(),
            label: label.into(),
            model: client.model().into(),
            completion: c.clone(),
            rejected: None,
        })?;
        Stats::add(&stats.calls, 1);
        Stats::add(&stats.prompt_tokens, c.prompt_tokens);
        Stats::add(&stats.completion_tokens, c.completion_tokens);
        Ok((key, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::progress::stderr_log;
    use serde_json::json;

    fn entry(key: &str, text: &str) -> Entry {
        Entry {
            key: key.into(),
            scope: "d1".into(),
            label: "turn 1".into(),
            model: "m".into(),
            completion: Completion {
                content: text.into(),
                ..Default::default()
            },
            rejected: None,
        }
    }

    #[test]
    fn rejected_answers_are_forgotten_now_and_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let log = stderr_log();
        let j = Journal::open(&p, &log).unwrap();
        j.append(&entry("k1", "bad json")).unwrap();
        j.append(&entry("k2", "fine")).unwrap();
        j.reject("k1", "d1", "judge attempt 1", "truncated JSON")
            .unwrap();
        // Unknown keys are nothing to reject.
        j.reject("k9", "d1", "x", "y").unwrap();
        assert!(j.get("k1").is_none());
        drop(j);
        let j = Journal::open(&p, &log).unwrap();
        assert!(j.get("k1").is_none());
        assert_eq!(j.get("k2").unwrap().content, "fine");
        // A new answer for the same call is replayed again.
        j.append(&entry("k1", "good")).unwrap();
        drop(j);
        assert_eq!(
            Journal::open(&p, &log).unwrap().get("k1").unwrap().content,
            "good"
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(r#""rejected":"truncated JSON""#), "{text}");
    }

    #[test]
    fn keys_ignore_map_order_but_not_content_or_scope() {
        let a = json!({"model": "m", "temperature": 0.3, "messages": [{"role": "user", "content": "x"}]});
        let b: Value = serde_json::from_str(
            r#"{"temperature":0.3,"messages":[{"content":"x","role":"user"}],"model":"m"}"#,
        )
        .unwrap();
        assert_eq!(call_key("u", &a, "d1"), call_key("u", &b, "d1"));
        assert_ne!(call_key("u", &a, "d1"), call_key("u", &a, "d2"));
        assert_ne!(call_key("u", &a, "d1"), call_key("v", &a, "d1"));
        let mut c = a.clone();
        c["temperature"] = json!(0.7);
        assert_ne!(call_key("u", &a, "d1"), call_key("u", &c, "d1"));
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let log = stderr_log();
        let j = Journal::open(&p, &log).unwrap();
        j.append(&entry("k1", "one")).unwrap();
        j.append(&entry("k2", "two")).unwrap();
        drop(j);
        // A crash in the middle of the third append.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(br#"{"key":"k3","scope":"d1","lab"#).unwrap();
        drop(f);
        let j = Journal::open(&p, &log).unwrap();
        assert_eq!(j.len(), 2);
        assert_eq!(j.get("k2").unwrap().content, "two");
        assert!(j.get("k3").is_none());
        j.append(&entry("k3", "three")).unwrap();
        drop(j);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(Journal::open(&p, &log).unwrap().get("k3").is_some());
    }

    #[test]
    fn a_bad_line_in_the_middle_is_an_error_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j.jsonl");
        let good = serde_json::to_string(&entry("k1", "one")).unwrap();
        std::fs::write(&p, format!("{good}\nnot json\n{good}\n")).unwrap();
        let e = Journal::open(&p, &stderr_log()).unwrap_err().to_string();
        assert!(e.contains("j.jsonl:2: unreadable journal entry"), "{e}");
    }

    #[test]
    fn repair_tail_handles_files_without_any_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        std::fs::write(&p, "partial").unwrap();
        assert_eq!(repair_tail(&p).unwrap(), 7);
        assert_eq!(std::fs::read(&p).unwrap(), b"");
        std::fs::write(&p, "a\nb\n").unwrap();
        assert_eq!(repair_tail(&p).unwrap(), 0);
        assert_eq!(repair_tail(&dir.path().join("missing")).unwrap(), 0);
    }
}
