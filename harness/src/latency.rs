//! Latency percentiles of a run, from an HDR histogram (the `hdrhistogram` crate) rather than
//! a sorted copy of every sample: a benchmark of 100,000 intakes or more keeps a few kilobytes
//! of buckets instead, at three significant digits (0.1 %), finer than the 0.1 ms printed.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Percentiles, maximum and mean of a set of latencies, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Recorded in microseconds: ms figures with one decimal need no finer unit.
const MICROS_PER_MS: f64 = 1000.0;
/// The largest latency the histogram tells apart: an hour, in microseconds.
const MAX_MICROS: u64 = 3_600_000_000;

impl Latency {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[Duration]) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        // Up to an hour: a run gives up waiting long before (a later sample is counted as an
        // hour rather than lost).
        let mut h = Histogram::<u64>::new_with_bounds(1, MAX_MICROS, 3).ok()?;
        for d in samples {
            h.saturating_record(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
        let ms = |us: u64| us as f64 / MICROS_PER_MS;
        Some(Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p95: ms(h.value_at_quantile(0.95)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            mean: h.mean() / MICROS_PER_MS,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= b * 0.001 + 0.001
    }

    #[test]
    fn percentiles_are_the_nearest_rank_within_the_histogram_precision() {
        let samples: Vec<Duration> = (1..=1000).map(Duration::from_millis).collect();
        let l = Latency::of(&samples).expect("samples");
        assert!(close(l.p50, 500.0), "{l:?}");
        assert!(close(l.p95, 950.0), "{l:?}");
        assert!(close(l.p99, 990.0), "{l:?}");
        assert!(close(l.max, 1000.0), "{l:?}");
        assert!(close(l.mean, 500.5), "{l:?}");
    }

    #[test]
    fn no_samples_no_summary_and_one_sample_is_every_figure() {
        assert!(Latency::of(&[]).is_none());
        let l = Latency::of(&[Duration::from_micros(2500)]).expect("one sample");
        for v in [l.p50, l.p95, l.p99, l.max, l.mean] {
            assert!(close(v, 2.5), "{l:?}");
        }
    }
}
