//! When to retry a failed call and how long to wait: full-jitter exponential backoff, or what
//! the server asks for in `retry-after-ms` / `retry-after` (seconds or an HTTP date).

use rand::Rng;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// A longer `retry-after` fails the call instead of stalling the run.
    pub max_wait: Duration,
}

impl RetryPolicy {
    pub fn from_limits(l: &super::Limits) -> Self {
        Self {
            max_attempts: l.max_attempts,
            base: Duration::from_millis(l.base_delay_ms),
            cap: Duration::from_secs_f64(l.max_backoff_s.max(0.0)),
            max_wait: Duration::from_secs_f64(l.max_retry_wait_s.max(0.0)),
        }
    }

    /// Full jitter ("Exponential Backoff And Jitter", AWS): uniform in
    /// `[0, min(cap, base · 2^(failures-1))]`, which spreads out threads that failed together.
    pub fn backoff(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let exp = 2u32.saturating_pow(failures.saturating_sub(1).min(30));
        let ceiling = self.base.saturating_mul(exp).min(self.cap);
        let ms = ceiling.as_millis() as u64;
        Duration::from_millis(if ms == 0 { 0 } else { rng.random_range(0..=ms) })
    }
}

/// What to do after one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Retry,
    /// The same request will fail the same way.
    Fatal,
    /// Out of credit (`insufficient_quota`), reported on its own so the message is clear.
    Quota,
}

/// Classifies an HTTP status (with the error body's `code`/`type` when there is one).
pub fn classify(status: u16, error_code: Option<&str>) -> Verdict {
    if error_code == Some("insufficient_quota") {
        return Verdict::Quota;
    }
    match status {
        408 | 409 | 429 | 500..=599 => Verdict::Retry,
        _ => Verdict::Fatal,
    }
}

/// The pause a response asks for: `retry-after-ms` (OpenAI) first, then `retry-after` as
/// seconds or as an HTTP date (relative to `now`).
pub fn retry_after(header: impl Fn(&str) -> Option<String>, now: SystemTime) -> Option<Duration> {
    if let Some(ms) = header("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        if ms.is_finite() && ms >= 0.0 {
            return Some(Duration::from_secs_f64(ms / 1000.0));
        }
    }
    let v = header("retry-after")?;
    let v = v.trim();
    if let Ok(s) = v.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| Duration::from_secs_f64(s));
    }
    let at = parse_http_date(v)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only date form HTTP/1.1
/// servers may send; the obsolete forms give `None` and fall back to backoff.
pub fn parse_http_date(s: &str) -> Option<SystemTime> {
    let (_, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split_whitespace().collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u32 = parts[0].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[1])? as u32 + 1;
    let year: i64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || hms[0] > 23 || hms[1] > 59 || hms[2] > 60 || !(1..=31).contains(&day) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + (hms[0] * 3600 + hms[1] * 60 + hms[2]) as i64;
    u64::try_from(secs)
        .ok()
        .map(|s| UNIX_EPOCH + Duration::from_secs(s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn headers<'a>(h: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            h.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn retry_after_in_all_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            retry_after(headers(&[("retry-after", "3")]), now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            retry_after(
                headers(&[("retry-after", "3"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(
                headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:47 GMT")]),
                now
            ),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(
                headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:00 GMT")]),
                now
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after(headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(retry_after(headers(&[]), now), None);
    }

    #[test]
    fn http_dates_parse_to_unix_time() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Thu, 29 Feb 2024 00:00:00 GMT").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_709_164_800
        );
        assert!(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").is_none());
        assert!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT").is_none());
    }

    #[test]
    fn backoff_is_bounded_by_the_doubling_ceiling_and_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
            max_wait: Duration::from_secs(60),
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for failures in 1..=40 {
            let ceiling = (100u64 << (failures - 1).min(20)).min(1000);
            for _ in 0..50 {
                let d = p.backoff(failures, &mut rng).as_millis() as u64;
                assert!(d <= ceiling, "{d} > {ceiling} at {failures}");
            }
        }
        // Jitter actually spreads the waits.
        let waits: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(4, &mut rng)).collect();
        assert!(waits.len() > 10);
    }

    #[test]
    fn statuses_are_classified() {
        for s in [408, 409, 429, 500, 502, 503, 504] {
            assert_eq!(classify(s, None), Verdict::Retry, "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert_eq!(classify(s, None), Verdict::Fatal, "{s}");
        }
        assert_eq!(classify(429, Some("insufficient_quota")), Verdict::Quota);
    }
}
