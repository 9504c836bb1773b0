//! Retry delays (exponential with jitter, through `backon`): the capped, unlimited probe the
//! supervisors and the relay use while a dependency is away, and the bounded re-runs of a
//! transaction after transient errors.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Capped exponential backoff with jitter and no attempt limit, for probing a dependency.
pub fn probe_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Delays between re-runs of a transaction after transient database errors (serialization
/// failure, deadlock, lock or statement timeout): `times` re-runs at most.
pub fn transient_backoff(times: usize) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(20))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(times)
        .build()
}
