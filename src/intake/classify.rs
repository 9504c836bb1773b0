//! Classifies a database error once, into the class that decides what happens to a window.

/// How a failed window is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth re-running the whole transaction: serialization failure, deadlock, lock or
    /// statement timeout.
    Transient,
    /// The database is unreachable or restarting, or the pool is exhausted: never the
    /// message's fault, so no attempt is spent and nothing is marked failed.
    Outage,
    /// Anything else: a bug or an unforeseen state. Retried a bounded number of times by
    /// redelivery, then dead-lettered (and so kept and replayable).
    Unknown,
}

/// SQLSTATEs of errors that a re-run of the transaction can cure.
const TRANSIENT: [&str; 4] = ["40001", "40P01", "55P03", "57014"];

pub fn classify(error: &sqlx::Error) -> ErrorClass {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if TRANSIENT.contains(&code) {
                ErrorClass::Transient
            } else if code.starts_with("08")
                || ["57P01", "57P02", "57P03", "53300", "25P03"].contains(&code)
            {
                // Connection exceptions, admin/crash shutdown, cannot connect now, too many
                // connections, idle-in-transaction timeout: the session, not the data.
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

#[cfg(test)]
mod tests {
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
