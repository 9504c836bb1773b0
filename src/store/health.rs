//! Whether the database answers and takes writes: the readiness probe's and the supervisor's
//! check. A server that answers but is read-only (a standby, a demoted primary, a proxy still
//! pointing at the old writer after a failover) cannot take an intake, so it counts as down.

use sqlx::PgPool;

/// What the database answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// A primary that takes writes.
    Writable,
    /// It answers, but every write would fail with 25006: in recovery (a standby), or
    /// `default_transaction_read_only` is on.
    ReadOnly,
}

/// Asks the server whether this session could write. `transaction_read_only` is on in a
/// standby and wherever `default_transaction_read_only` applies, so one setting covers both.
pub async fn probe(pool: &PgPool) -> Result<Health, sqlx::Error> {
    let read_only: bool = sqlx::query_scalar(
        "SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')::bool",
    )
    .fetch_one(pool)
    .await?;
    Ok(if read_only {
        Health::ReadOnly
    } else {
        Health::Writable
    })
}
