//! Learning-rate schedules with linear warm-up, as Hugging Face's `get_*_schedule_with_warmup`.

use super::config::Schedule;

/// The learning rate for the optimizer step that follows `step` completed steps.
pub fn learning_rate(
    schedule: Schedule,
    base: f64,
    step: usize,
    warmup: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match schedule {
        Schedule::Constant => base,
        Schedule::Linear => base * (1.0 - progress).max(0.0),
        Schedule::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_decay() {
        let lr = |s, step| learning_rate(s, 1.0, step, 10, 110);
        assert_eq!(lr(Schedule::Linear, 0), 0.0);
        assert_eq!(lr(Schedule::Linear, 5), 0.5);
        assert_eq!(lr(Schedule::Linear, 10), 1.0);
        assert_eq!(lr(Schedule::Linear, 60), 0.5);
        assert!((lr(Schedule::Cosine, 60) - 0.5).abs() < 1e-12);
        assert!(lr(Schedule::Cosine, 110).abs() < 1e-12);
        assert_eq!(lr(Schedule::Constant, 100), 1.0);
        assert_eq!(learning_rate(Schedule::Cosine, 2.0, 0, 0, 10), 2.0);
    }
}
