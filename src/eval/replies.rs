//! Generating every entry's replies to the held-out prompts, once: each reply is appended
//! (fsynced) to `runs/eval/replies/<entry>.jsonl` under a key that hashes everything that
//! shapes it (base model, adapter file, prompt tokens, sampling), so a rerun — also after a
//! kill — generates only what is missing or changed.

use super::generate::{Job, Replier};
use super::prompts::EvalPrompt;
use super::{Entry, EvalError, Result};
use crate::chat::load::ModelSpec;
use crate::chat::RunInfo;
use crate::fsutil::{sha256_file, sha256_hex};
use crate::model::generate::{SamplingParams, Stop};
use crate::synth::journal::{append_line, open_append};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// One generated reply, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Generated {
    pub prompt: String,
    pub key: String,
    pub reply: String,
    pub reply_tokens: usize,
    pub prompt_tokens: usize,
    /// Rounds of the window left out to fit the context.
    pub dropped: usize,
    /// `stop` (a stop token) or `length` (max_new_tokens reached).
    pub finish: String,
}

/// How fast an entry's new replies came (None when all were stored already): generation
/// only, the judge's time is not in it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Speed {
    pub generated: usize,
    pub seconds: f64,
    pub prompts_per_s: f64,
    pub tokens_per_s: f64,
    /// Prompts decoded at once (0: a report written before batching).
    #[serde(default)]
    pub batch_size: usize,
}

/// Every entry's replies, aligned with the prompts.
pub struct AllReplies {
    pub replies: Vec<Vec<Generated>>,
    pub speed: Vec<Option<Speed>>,
}

/// The seed of one prompt's reply: derived from the run seed and the prompt id, so it does not
/// move when the sample does, and is the same for every entry.
pub fn prompt_seed(seed: u64, prompt: &str) -> u64 {
    let h = sha256_hex(prompt.as_bytes());
    seed.wrapping_add(u64::from_str_radix(&h[..16], 16).unwrap_or(0))
}

fn replies_file(dir: &Path, entry: &str) -> PathBuf {
    dir.join("replies").join(format!("{entry}.jsonl"))
}

/// Generates what is missing, one model load per base model, `batch_size` prompts decoded at
/// once; `say` reports progress.
#[allow(clippy::too_many_arguments)]
pub fn generate_all(
    dir: &Path,
    entries: &[Entry],
    prompts: &[EvalPrompt],
    params: &SamplingParams,
    batch_size: usize,
    spec: &ModelSpec,
    stop: &AtomicBool,
    say: &dyn Fn(String),
) -> Result<AllReplies> {
    let mut replies = vec![Vec::new(); entries.len()];
    let mut speed = vec![None; entries.len()];
    // Entries grouped by base model, so each base is loaded once and adapters swapped on it.
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        groups.entry(e.base.as_str()).or_default().push(i);
    }
    for idx in groups.values() {
        let adapters: Vec<&Path> = idx
            .iter()
            .filter_map(|&i| entries[i].adapter.as_deref())
            .collect();
        let infos: Vec<Option<RunInfo>> = idx
            .iter()
            .map(|&i| entries[i].adapter.as_deref().map(RunInfo::find))
            .map(|r| r.transpose().map(Option::flatten))
            .collect::<std::result::Result<_, _>>()?;
        let info_refs: Vec<Option<&RunInfo>> = infos.iter().map(Option::as_ref).collect();
        let mut group_spec = spec.clone();
        if group_spec.model.is_none() && adapters.is_empty() {
            group_spec.model = Some(entries[idx[0]].base.clone());
        }
        let mut replier = Replier::load(&group_spec, &adapters, &info_refs)?;
        say(format!("loaded {}", replier.summary()));
        let weights_key = sha256_hex(replier.base().as_bytes());
        for &i in idx {
            let e = &entries[i];
            replier.use_adapter(e.adapter.as_deref())?;
            let adapter_key = match &e.adapter {
                Some(a) => sha256_file(&a.join("adapter_model.safetensors"))?,
                None => "none".into(),
            };
            let (r, s) = generate_entry(
                dir,
                e,
                &replier,
                prompts,
                params,
                batch_size,
                &format!("{weights_key}:{adapter_key}"),
                stop,
            )?;
            match &s {
                Some(s) => say(format!(
                    "{}: {} replies in {:.1} s ({:.2} prompts/s, {:.1} tokens/s, batches of {})",
                    e.name, s.generated, s.seconds, s.prompts_per_s, s.tokens_per_s, s.batch_size
                )),
                None => say(format!(
                    "{}: all {} replies stored already",
                    e.name,
                    r.len()
                )),
            }
            replies[i] = r;
            speed[i] = s;
        }
    }
    Ok(AllReplies { replies, speed })
}

#[allow(clippy::too_many_arguments)]
fn generate_entry(
    dir: &Path,
    e: &Entry,
    replier: &Replier,
    prompts: &[EvalPrompt],
    params: &SamplingParams,
    batch_size: usize,
    model_key: &str,
    stop: &AtomicBool,
) -> Result<(Vec<Generated>, Option<Speed>)> {
    let path = replies_file(dir, &e.name);
    let stored = read_stored(&path)?;
    let log: crate::synth::progress::Log = std::sync::Arc::new(|m: &str| eprintln!("{m}"));
    let mut file = open_append(&path, &log)?;
    // Every prompt rendered and keyed first; the stored replies are taken, the rest generated
    // in batches, each batch appended as soon as it is done.
    let mut out: Vec<Option<Generated>> = Vec::with_capacity(prompts.len());
    let mut todo = Vec::new();
    for p in prompts {
        let prompt = replier.prompt(&e.format, &p.history(), params.max_new_tokens)?;
        let mut job_params = params.clone();
        job_params.seed = prompt_seed(params.seed, &p.id);
        job_params.max_new_tokens = params.max_new_tokens.min(prompt.room);
        let key = sha256_hex(
            serde_json::json!({
                "model": model_key,
                "prompt": prompt.ids,
                "sampling": format!("{job_params:?}"),
            })
            .to_string()
            .as_bytes(),
        );
        match stored.get(&(p.id.clone(), key.clone())) {
            Some(g) => out.push(Some(g.clone())),
            None => {
                todo.push((out.len(), p, prompt, job_params, key));
                out.push(None);
            }
        }
    }
    // Prompts of similar length share a batch, so that little of it is padding (a reply does
    // not depend on its batch).
    todo.sort_by_key(|(_, _, prompt, _, _)| std::cmp::Reverse(prompt.ids.len()));
    let (mut generated, mut tokens, mut seconds) = (0usize, 0usize, 0.0f64);
    // A batch is stored as soon as it is done; Ctrl-C waits for the batch under way.
    for batch in todo.chunks(batch_size.max(1)) {
        if stop.load(Ordering::SeqCst) {
            return Err(EvalError::Interrupted);
        }
        let jobs: Vec<Job> = batch
            .iter()
            .map(|(_, _, prompt, params, _)| Job {
                ids: &prompt.ids,
                params: params.clone(),
            })
            .collect();
        let t = Instant::now();
        let replies = replier.generate(&jobs)?;
        seconds += t.elapsed().as_secs_f64();
        for ((slot, p, prompt, _, key), r) in batch.iter().zip(replies) {
            generated += 1;
            tokens += r.tokens;
            let g = Generated {
                prompt: p.id.clone(),
                key: key.clone(),
                reply: r.text,
                reply_tokens: r.tokens,
                prompt_tokens: prompt.ids.len(),
                dropped: prompt.dropped,
                finish: if r.stop == Stop::MaxTokens {
                    "length"
                } else {
                    "stop"
                }
                .into(),
            };
            let mut line =
                serde_json::to_string(&g).map_err(|x| EvalError::Invalid(x.to_string()))?;
            line.push('\n');
            append_line(&mut file, &path, &line)?;
            out[*slot] = Some(g);
        }
    }
    let out: Vec<Generated> = out.into_iter().flatten().collect();
    let speed = (generated > 0).then(|| Speed {
        generated,
        seconds,
        prompts_per_s: generated as f64 / seconds.max(1e-9),
        tokens_per_s: tokens as f64 / seconds.max(1e-9),
        batch_size,
    });
    Ok((out, speed))
}

/// The stored replies by (prompt, key); a torn last line was already cut by `open_append`'s
/// repair on an earlier run, any other bad line is an error naming it.
fn read_stored(path: &Path) -> Result<HashMap<(String, String), Generated>> {
    let mut m = HashMap::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(m),
        Err(e) => return Err(crate::fsutil::FileError::new(path, e).into()),
    };
    let complete = text.rfind('\n').map_or("", |i| &text[..i]);
    for (i, line) in complete.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let g: Generated = serde_json::from_str(line).map_err(|e| {
            EvalError::Invalid(format!(
                "{}:{}: unreadable reply: {e}",
                path.display(),
                i + 1
            ))
        })?;
        m.insert((g.prompt.clone(), g.key.clone()), g);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_seeds_depend_on_the_prompt_not_its_position() {
        assert_eq!(prompt_seed(1, "d1#p0"), prompt_seed(1, "d1#p0"));
        assert_ne!(prompt_seed(1, "d1#p0"), prompt_seed(1, "d1#p1"));
        assert_ne!(prompt_seed(1, "d1#p0"), prompt_seed(2, "d1#p0"));
    }

    #[test]
    fn stored_replies_are_read_back_and_a_torn_tail_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.jsonl");
        let g = Generated {
            prompt: "d#p0".into(),
            key: "k".into(),
            reply: "なぜ？".into(),
            reply_tokens: 3,
            prompt_tokens: 9,
            dropped: 0,
            finish: "stop".into(),
        };
        let line = serde_json::to_string(&g).unwrap();
        std::fs::write(&p, format!("{line}\n{{\"prompt\":\"d#p1\",\"ke")).unwrap();
        let m = read_stored(&p).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[&("d#p0".to_string(), "k".to_string())], g);
        std::fs::write(&p, format!("oops\n{line}\n")).unwrap();
        let e = read_stored(&p).unwrap_err().to_string();
        assert!(e.contains("r.jsonl:1: unreadable reply"), "{e}");
    }
}
