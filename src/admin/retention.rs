//! Retention: message keys and resolved failed intakes are deleted after
//! `intake.dedup_retention_days`; unresolved failed intakes are kept until replayed: they are
//! work for a human. (Published outbox rows are deleted by the relay as it publishes them.)
//! The deletes are in `store::retention`.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::store::retention::{purge_outcomes, purge_resolved_failed};

/// Rows deleted per statement, so a large purge never holds long locks.
const PURGE_BATCH: i64 = 10_000;

/// What one purge deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Purged {
    pub outcomes: u64,
    pub failed: u64,
}

/// Deletes everything past its retention, in batches.
pub async fn purge(pool: &PgPool, dedup_days: u32) -> Result<Purged, sqlx::Error> {
    let days = dedup_days.min(i32::MAX as u32) as i32;
    let mut purged = Purged::default();
    loop {
        let n = purge_outcomes(pool, days, PURGE_BATCH).await?;
        purged.outcomes += n;
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    purged.failed = purge_resolved_failed(pool, days).await?;
    Ok(purged)
}

/// Purges every `every` until shutdown; errors are logged and retried next time.
pub async fn run(pool: PgPool, dedup_days: u32, every: Duration, shutdown: CancellationToken) {
    loop {
        match purge(&pool, dedup_days).await {
            Ok(p) if p != Purged::default() => {
                tracing::info!(outcomes = p.outcomes, failed = p.failed, "retention purge")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention purge failed; will retry"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
