//! Retention: message keys and resolved failed intakes are deleted after
//! `intake.dedup_retention_days`; unresolved failed intakes are kept until replayed: they are
//! work for a human. (Published outbox rows are deleted by the relay as it publishes them.)

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

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
        let n = sqlx::query(
            "DELETE FROM intake_outcomes WHERE (network_id, message_key) IN (
                 SELECT network_id, message_key FROM intake_outcomes
                  WHERE created_at < now() - make_interval(days => $1) AND outcome IS NOT NULL
                    -- kept while an unpublished outbox row still reads its event
                    AND NOT EXISTS (SELECT 1 FROM outbox b
                                     WHERE b.outcome_network_id = intake_outcomes.network_id
                                       AND b.outcome_key = intake_outcomes.message_key)
                  LIMIT $2)",
        )
        .bind(days)
        .bind(PURGE_BATCH)
        .execute(pool)
        .await?
        .rows_affected();
        purged.outcomes += n;
        if n < PURGE_BATCH as u64 {
            break;
        }
    }
    purged.failed = sqlx::query(
        "DELETE FROM failed_intakes
          WHERE resolved_at IS NOT NULL AND resolved_at < now() - make_interval(days => $1)",
    )
    .bind(days)
    .execute(pool)
    .await?
    .rows_affected();
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
