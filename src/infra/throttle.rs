//! Rate limit for repeated log lines: a fault that repeats many times a second (a reconnect
//! loop, a poison message handed back again and again) logs once per period, with the number
//! of lines it suppressed, instead of flooding the log.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate-limited log site.
pub struct Throttle {
    period: Duration,
    /// When the last line was let through, and how many were suppressed since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be logged now (with the count of lines suppressed
    /// since the last one), `None` when this one is to be suppressed.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.0 {
            Some(last) if now.duration_since(last) < self.period => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_period_with_the_suppressed_count() {
        let t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow_at(start + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow_at(start + Duration::from_secs(10)), Some(5));
        assert_eq!(t.allow_at(start + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at(start + Duration::from_secs(30)), Some(1));
    }
}
