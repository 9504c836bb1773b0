//! The one way a test waits for something that happens in the background (a worker, a relay,
//! the broker's queue counts): poll until a probe says yes, and fail loudly when it never does.
//!
//! A limit here is a liveness bound, not a speed figure: it is generous (minutes on a loaded
//! two-core machine) and exists so that a broken test fails with what it waited for instead of
//! hanging CI until its own time runs out.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The limit most waits use: far longer than anything a healthy run takes.
pub const SETTLE: Duration = Duration::from_secs(300);

/// Pauses between probes start short (most waits end within milliseconds) and grow to this.
const LONGEST_PAUSE: Duration = Duration::from_millis(200);

/// Runs `probe` until it returns `Some`, pausing between runs, and returns its value; panics
/// naming `what` if `limit` passes first. The probe runs at least once, and once more after
/// the limit has passed, so that a wait is never failed for a pause that overslept.
pub async fn eventually<T, F, Fut>(what: impl Display, limit: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        let expired = Instant::now() >= deadline;
        if let Some(found) = probe().await {
            return found;
        }
        assert!(!expired, "{what}: not within {limit:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LONGEST_PAUSE);
    }
}

/// A description computed only if a wait fails: what was seen by then (log lines, counts).
pub struct Lazy<F>(pub F);

impl<F: Fn() -> String> Display for Lazy<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&(self.0)())
    }
}

/// [`eventually`] for a probe that is a condition.
pub async fn until<F, Fut>(what: impl Display, limit: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    eventually(what, limit, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn returns_the_first_value_the_probe_finds() {
        let runs = AtomicU32::new(0);
        let found = eventually("the third run", SETTLE, || {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n == 3).then_some(n) }
        })
        .await;
        assert_eq!(found, 3);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "a thing that never happens: not within")]
    async fn fails_naming_what_it_waited_for() {
        until(
            "a thing that never happens",
            Duration::from_millis(30),
            || async { false },
        )
        .await;
    }
}
