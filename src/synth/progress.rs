//! Counters and progress display: an indicatif bar on a terminal, plain log lines otherwise
//! (so that logs of unattended runs stay readable).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where warnings go (retries, skipped records); the progress bar routes them above itself.
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

pub fn stderr_log() -> Log {
    Arc::new(|m: &str| eprintln!("{m}"))
}

/// Counters shared by the clients, the journal and the workers of one run.
#[derive(Debug, Default)]
pub struct Stats {
    /// HTTP requests sent (retries included).
    pub requests: AtomicU64,
    /// Calls answered by the server and journaled.
    pub calls: AtomicU64,
    /// Calls answered from the journal instead of the server.
    pub replayed: AtomicU64,
    pub retries: AtomicU64,
    /// Calls that failed for good (after retries, or cut off, or empty).
    pub failed_calls: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub completion_tokens: AtomicU64,
}

impl Stats {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }
    pub fn summary(&self) -> String {
        format!(
            "{} calls ({} replayed from the journal, {} retries, {} failed), {} tokens",
            Self::get(&self.calls),
            Self::get(&self.replayed),
            Self::get(&self.retries),
            Self::get(&self.failed_calls),
            Self::get(&self.prompt_tokens) + Self::get(&self.completion_tokens),
        )
    }
}

/// Items done / failed, with the call counters, for one stage.
pub struct Progress {
    label: String,
    total: u64,
    done: AtomicU64,
    failed: AtomicU64,
    stats: Arc<Stats>,
    bar: Option<ProgressBar>,
    last_line: Mutex<Instant>,
}

impl Progress {
    pub fn new(label: &str, total: u64, stats: Arc<Stats>) -> Arc<Self> {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {pos}/{len} (eta {eta}) {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            b.set_style(style);
            b.set_prefix(label.to_string());
            b
        });
        Arc::new(Self {
            label: label.into(),
            total,
            done: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            stats,
            bar,
            last_line: Mutex::new(Instant::now()),
        })
    }

    /// Starts drawing (separate from `new`, so that setup errors leave no bar behind).
    pub fn start(&self) {
        match &self.bar {
            Some(b) => b.enable_steady_tick(Duration::from_millis(500)),
            None => eprintln!("{}: {} to do", self.label, self.total),
        }
    }

    /// A [`Log`] that prints above the bar.
    pub fn log(self: &Arc<Self>) -> Log {
        let me = Arc::clone(self);
        Arc::new(move |m: &str| me.println(m))
    }

    pub fn println(&self, m: &str) {
        match &self.bar {
            Some(b) => b.println(m),
            None => eprintln!("{m}"),
        }
    }

    pub fn done(&self) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.tick();
    }

    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.done.fetch_add(1, Ordering::Relaxed);
        self.tick();
    }

    fn line(&self) -> String {
        let failed = self.failed.load(Ordering::Relaxed);
        format!("{failed} failed; {}", self.stats.summary())
    }

    /// Refreshes the bar, or prints a plain line at most every 10 s and at the end.
    pub fn tick(&self) {
        let done = self.done.load(Ordering::Relaxed);
        match &self.bar {
            Some(b) => {
                b.set_position(done);
                b.set_message(self.line());
            }
            None => {
                let mut last = self.last_line.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= Duration::from_secs(10) || done == self.total {
                    *last = Instant::now();
                    eprintln!(
                        "{}: {done}/{} done, {}",
                        self.label,
                        self.total,
                        self.line()
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
            let done = self.done.load(Ordering::Relaxed);
            eprintln!(
                "{}: {done}/{} done, {}",
                self.label,
                self.total,
                self.line()
            );
        }
    }
}
