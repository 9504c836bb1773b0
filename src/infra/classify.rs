//! Classifies a database error once, into the class that decides what happens to a window,
//! and re-runs work that failed transiently: the one retry helper of the consumer and replay.

use std::future::Future;

use crate::infra::backoff::transient_backoff;

/// How a failed window is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth re-running the whole transaction: serialization failure, deadlock, lock or
    /// statement timeout.
    Transient,
    /// The database is unreachable, restarting or read-only (a standby not yet promoted, an
    /// address still on the old primary after a failover), or the pool is exhausted: never
    /// the message's fault, so no attempt is spent and nothing is marked failed.
    Outage,
    /// Anything else: a bug or an unforeseen state. Retried a bounded number of times by
    /// redelivery, then dead-lettered (and so kept and replayable).
    Unknown,
}

/// SQLSTATEs of errors that a re-run of the transaction can cure.
const TRANSIENT: [&str; 4] = ["40001", "40P01", "55P03", "57014"];

/// SQLSTATEs (besides class 08, connection exceptions) that say the session or the server,
/// not the data, is the problem: admin shutdown (a terminated backend, a fast shutdown), crash
/// shutdown, cannot connect now (starting up, shutting down, in recovery mode), too many
/// connections, idle-in-transaction timeout, and a read-only transaction — what a write gets
/// from a standby, so from the old address during a failover.
const OUTAGE: [&str; 6] = ["57P01", "57P02", "57P03", "53300", "25P03", "25006"];

pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if TRANSIENT.contains(&code) {
                ErrorClass::Transient
            } else if code.starts_with("08") || OUTAGE.contains(&code) {
                ErrorClass::Outage
            } else {
                ErrorClass::Unknown
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => ErrorClass::Outage,
        _ => ErrorClass::Unknown,
    }
}

/// Runs `run` and re-runs it, with exponential backoff and jitter, while `class_of` calls its
/// error transient, `times` re-runs at most; any other result is returned as it is.
pub async fn retry_transient<T, E, F, Fut>(
    times: usize,
    class_of: impl Fn(&E) -> ErrorClass,
    mut run: F,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut delays = transient_backoff(times);
    loop {
        match run().await {
            Err(e) if class_of(&e) == ErrorClass::Transient => match delays.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(e),
            },
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {

    /// A run that fails with `failures` in order, then succeeds; counts its calls.
    async fn runs(failures: &[ErrorClass], times: usize) -> (Result<u32, ErrorClass>, u32) {
        let calls = std::cell::Cell::new(0u32);
        let result = retry_transient(
            times,
            |c| *c,
            || {
                let n = calls.get();
                calls.set(n + 1);
                let out = failures.get(n as usize).map_or(Ok(n), |c| Err(*c));
                async move { out }
            },
        )
        .await;
        (result, calls.get())
    }

    #[tokio::test]
    async fn transient_failures_are_re_run_a_bounded_number_of_times() {
        use ErrorClass::*;
        assert_eq!(runs(&[], 3).await, (Ok(0), 1));
        assert_eq!(runs(&[Transient, Transient], 3).await, (Ok(2), 3));
        // Out of re-runs: the last error.
        assert_eq!(runs(&[Transient, Transient], 1).await, (Err(Transient), 2));
        // Other classes are never re-run.
        assert_eq!(runs(&[Outage, Transient], 3).await, (Err(Outage), 1));
        assert_eq!(runs(&[Unknown], 3).await, (Err(Unknown), 1));
    }
    use super::*;

    #[test]
    fn pool_and_io_errors_are_outages() {
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), ErrorClass::Outage);
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(classify(&sqlx::Error::Io(io)), ErrorClass::Outage);
    }

    #[test]
    fn row_not_found_is_unknown() {
        assert_eq!(classify(&sqlx::Error::RowNotFound), ErrorClass::Unknown);
    }
}
