//! A limit on requests in flight and on requests started per minute, shared by all worker
//! threads (and all roles) of a run.
//!
//! Starts are spaced evenly (60 / rpm seconds apart) rather than allowed in bursts, because a
//! burst is exactly what trips a provider's own per-second limits. A `retry-after` from any
//! call pauses every thread, since the others would only collect the same 429.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct Limiter {
    max_in_flight: usize,
    in_flight: Mutex<usize>,
    freed: Condvar,
    interval: Option<Duration>,
    /// The earliest instant the next request may start.
    next_start: Mutex<Option<Instant>>,
}

/// Held while a request is in flight; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: &'a Limiter,
}

impl Limiter {
    pub fn new(max_in_flight: usize, rpm: Option<f64>) -> Self {
        Self {
            max_in_flight: max_in_flight.max(1),
            in_flight: Mutex::new(0),
            freed: Condvar::new(),
            interval: rpm
                .filter(|r| *r > 0.0)
                .map(|r| Duration::from_secs_f64(60.0 / r)),
            next_start: Mutex::new(None),
        }
    }

    /// Blocks until a request may start: a free slot, then its turn under the rate limit.
    pub fn acquire(&self) -> Permit<'_> {
        {
            let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= self.max_in_flight {
                n = self.freed.wait(n).unwrap_or_else(|e| e.into_inner());
            }
            *n += 1;
        }
        let start = {
            let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = next.map_or(now, |t| t.max(now));
            *next = self.interval.map(|i| start + i).or(*next);
            start
        };
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
        Permit { limiter: self }
    }

    /// Delays every request that has not started yet until at least `t`.
    pub fn hold_until(&self, t: Instant) {
        let mut next = self.next_start.lock().unwrap_or_else(|e| e.into_inner());
        *next = Some(next.map_or(t, |n| n.max(t)));
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut n = self
            .limiter
            .in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        self.limiter.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn never_more_in_flight_than_allowed() {
        let lim = Limiter::new(2, None);
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..5 {
                        let _p = lim.acquire();
                        let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(n, Ordering::SeqCst);
                        std::thread::sleep(Duration::from_millis(2));
                        now.fetch_sub(1, Ordering::SeqCst);
                    }
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn starts_are_spaced_by_the_rate_limit_across_threads() {
        let lim = Limiter::new(8, Some(1200.0)); // one start every 50 ms
        let t0 = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| drop(lim.acquire()));
            }
        });
        // Four starts: at 0, 50, 100 and 150 ms.
        let e = t0.elapsed();
        assert!(e >= Duration::from_millis(145), "{e:?}");
        assert!(e < Duration::from_millis(1000), "{e:?}");
    }

    #[test]
    fn hold_until_pauses_later_starts() {
        let lim = Limiter::new(1, None);
        let t0 = Instant::now();
        lim.hold_until(t0 + Duration::from_millis(80));
        drop(lim.acquire());
        assert!(t0.elapsed() >= Duration::from_millis(75));
    }
}
