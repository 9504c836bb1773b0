//! Retention's deletes: message keys and resolved failed intakes past their retention.
//! Operator and janitor statements: they act on every network.

use sqlx::PgPool;

/// Deletes up to `limit` outcomes older than `days` (keys whose event an unpublished outbox row
/// still reads are kept); returns how many were deleted.
pub async fn purge_outcomes(pool: &PgPool, days: i32, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
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
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Deletes the failed intakes resolved more than `days` ago; returns how many.
pub async fn purge_resolved_failed(pool: &PgPool, days: i32) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM failed_intakes
          WHERE resolved_at IS NOT NULL AND resolved_at < now() - make_interval(days => $1)",
    )
    .bind(days)
    .execute(pool)
    .await?
    .rows_affected())
}
