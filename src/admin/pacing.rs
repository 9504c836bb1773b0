//! Throttling an operator's bulk work (replay, dismiss) to a rate: how many failed intakes
//! each batch takes and how long to pause after it. Pure, so sizes and pauses are tested
//! without a clock; the loops that use it call their progress once per batch.

use std::time::Duration;

/// How a bulk command (replay, dismiss) runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkOptions {
    /// The largest batch (the worker's window size).
    pub window_size: usize,
    /// At most this many failed intakes per second, on average.
    pub rate: Option<u32>,
    /// Run each batch's transaction and roll it back: report, write nothing.
    pub dry_run: bool,
}

impl BulkOptions {
    pub fn pacing(&self) -> Pacing {
        Pacing::new(self.window_size, self.rate)
    }
}

/// How a bulk command is cut into batches and paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    batch: usize,
    /// At most this many failed intakes per second, on average (`None`: as fast as it goes).
    rate: Option<u32>,
}

impl Pacing {
    /// Batches of at most `window_size`, and of at most `rate` when a rate is given (so no
    /// batch alone exceeds a second's worth).
    pub fn new(window_size: usize, rate: Option<u32>) -> Self {
        let rate = rate.filter(|r| *r > 0);
        let cap = rate.map_or(usize::MAX, |r| r as usize);
        Self {
            batch: window_size.min(cap).max(1),
            rate,
        }
    }

    /// The most failed intakes one batch takes.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The pause after a batch of `n` that took `took`: at `rate` per second a batch of `n`
    /// must last at least `n / rate` seconds, so the average stays at or below the rate
    /// whatever the batch sizes.
    pub fn pause(&self, n: usize, took: Duration) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let due = Duration::from_secs_f64(n as f64 / f64::from(rate));
        due.saturating_sub(took)
    }

    /// The sizes of the batches `total` failed intakes are worked in, in order.
    pub fn batches(&self, total: usize) -> Vec<usize> {
        let mut left = total;
        let mut out = Vec::with_capacity(total.div_ceil(self.batch));
        while left > 0 {
            let n = left.min(self.batch);
            out.push(n);
            left -= n;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_caps_the_batch_and_splits_the_total() {
        let p = Pacing::new(200, Some(3));
        assert_eq!(p.batch(), 3);
        assert_eq!(p.batches(7), [3, 3, 1]);
        assert_eq!(p.batches(6), [3, 3]);
        assert!(p.batches(0).is_empty());
        // Without a rate (or a rate of 0, refused by the command line anyway) the window size
        // decides.
        assert_eq!(Pacing::new(200, None).batches(450), [200, 200, 50]);
        assert_eq!(Pacing::new(200, Some(0)).batch(), 200);
        // A rate above the window size keeps windows as they are.
        assert_eq!(Pacing::new(50, Some(1000)).batches(120), [50, 50, 20]);
        assert_eq!(Pacing::new(0, None).batch(), 1);
    }

    #[test]
    fn the_pause_keeps_the_average_at_the_rate() {
        let p = Pacing::new(200, Some(4));
        assert_eq!(p.pause(4, Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            p.pause(2, Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        // A batch slower than its share needs no pause.
        assert_eq!(p.pause(4, Duration::from_secs(3)), Duration::ZERO);
        assert_eq!(
            Pacing::new(200, None).pause(200, Duration::ZERO),
            Duration::ZERO
        );
        // Over a whole run, the batches' shares add up to total / rate.
        let p = Pacing::new(200, Some(3));
        let total: Duration = p
            .batches(7)
            .into_iter()
            .map(|n| p.pause(n, Duration::ZERO))
            .sum();
        assert_eq!(total.as_millis(), 2333);
    }
}
