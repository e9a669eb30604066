//! A fixed pool of worker threads over a list of items (std threads: each item is a chain of
//! blocking HTTP calls, and the limiter bounds what is in flight).

use super::SynthError;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Stop flags a worker checks between calls.
pub struct Halt<'a> {
    /// Set from outside (Ctrl-C).
    pub stop: &'a AtomicBool,
    /// Set by the pool when an error means no further item can succeed.
    pub abort: AtomicBool,
}

impl Halt<'_> {
    pub fn new(stop: &AtomicBool) -> Halt<'_> {
        Halt {
            stop,
            abort: AtomicBool::new(false),
        }
    }
    pub fn now(&self) -> bool {
        self.stop.load(Ordering::SeqCst) || self.abort.load(Ordering::SeqCst)
    }
}

/// Runs `work` on each item with `workers` threads. An item's error goes to `failed` unless it
/// is fatal ([`SynthError::is_fatal`]): then the pool stops and returns it. `Interrupted` just
/// ends the worker. `max_streak` items failing in a row (0: no limit) also stop the pool:
/// that many failures with no success between them is a misconfiguration (a parameter the
/// server rejects, a token limit too small), not bad luck.
pub fn for_each<T: Sync>(
    items: &[T],
    workers: usize,
    max_streak: usize,
    halt: &Halt,
    work: impl Fn(&T) -> Result<(), SynthError> + Sync,
    failed: impl Fn(&T, SynthError) + Sync,
) -> Result<(), SynthError> {
    let next = AtomicUsize::new(0);
    let streak = AtomicUsize::new(0);
    let fatal: Mutex<Option<SynthError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.max(1).min(items.len()) {
            s.spawn(|| loop {
                if halt.now() {
                    break;
                }
                let Some(item) = items.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    break;
                };
                match work(item) {
                    Ok(()) => streak.store(0, Ordering::SeqCst),
                    Err(SynthError::Interrupted) => break,
                    Err(e) if e.is_fatal() => {
                        halt.abort.store(true, Ordering::SeqCst);
                        fatal
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(e);
                        break;
                    }
                    Err(e) => {
                        let last = e.to_string();
                        failed(item, e);
                        let n = streak.fetch_add(1, Ordering::SeqCst) + 1;
                        if max_streak > 0 && n >= max_streak {
                            halt.abort.store(true, Ordering::SeqCst);
                            let e = SynthError::FailureStreak { count: n, last };
                            fatal
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .get_or_insert(e);
                            break;
                        }
                    }
                }
            });
        }
    });
    match fatal.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_everything_and_stops_on_a_fatal_error() {
        let items: Vec<u32> = (0..50).collect();
        let stop = AtomicBool::new(false);
        let sum = AtomicUsize::new(0);
        let halt = Halt::new(&stop);
        for_each(
            &items,
            4,
            0,
            &halt,
            |i| {
                sum.fetch_add(*i as usize, Ordering::SeqCst);
                if i % 10 == 0 {
                    Err(SynthError::Length)
                } else {
                    Ok(())
                }
            },
            |_, _| {},
        )
        .unwrap();
        assert_eq!(sum.load(Ordering::SeqCst), (0..50).sum::<usize>());

        let done = AtomicUsize::new(0);
        let halt = Halt::new(&stop);
        let e = for_each(
            &items,
            1,
            0,
            &halt,
            |i| {
                done.fetch_add(1, Ordering::SeqCst);
                if *i == 3 {
                    Err(SynthError::Config("boom".into()))
                } else {
                    Ok(())
                }
            },
            |_, _| {},
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "boom");
        assert_eq!(done.load(Ordering::SeqCst), 4);

        // Three failures in a row stop the pool; failures with successes between do not.
        let done = AtomicUsize::new(0);
        let halt = Halt::new(&stop);
        let e = for_each(
            &items,
            1,
            3,
            &halt,
            |i| {
                done.fetch_add(1, Ordering::SeqCst);
                if *i < 10 && i % 2 == 0 || *i >= 20 {
                    Err(SynthError::Length)
                } else {
                    Ok(())
                }
            },
            |_, _| {},
        )
        .unwrap_err();
        assert!(e.to_string().starts_with("3 items failed in a row"), "{e}");
        assert_eq!(done.load(Ordering::SeqCst), 23);
    }
}
