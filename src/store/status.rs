//! What became of a message key (`intake_outcomes` with its failed intake and its case), read
//! for the status endpoint (scoped to the caller's network) and the operator's `status`
//! command (trusted: any network, or one it names).
//!
//! A key's current outcome is its `intake_outcomes` row; a failed outcome's failed intake is
//! the `failed_intakes` row holding the same event (indexed by event id). Only what a status
//! shows is read: never the payload, the token hash, the operator or a dismissal's reason.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::store::auth::Caller;
use crate::store::ids::NetworkId;

/// A key's committed outcome, with what the status of each kind needs.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyOutcome {
    pub network_id: NetworkId,
    pub message_key: String,
    /// Set for a created case (the outcome is a failure otherwise).
    pub case_id: Option<i64>,
    /// The created case's household, read from the case in the same network.
    pub household_id: Option<i64>,
    pub error_code: Option<String>,
    pub event_id: Uuid,
    /// The outcome event as stored (its `data` holds the attempt and the error).
    pub event: Value,
    /// When the outcome was written.
    pub decided_at: DateTime<Utc>,
    /// The failed intake holding a failed outcome's event, while it is kept.
    pub failure: Option<FailureRecord>,
}

/// The failed intake of a key's current failure.
#[derive(Debug, Clone, PartialEq)]
pub struct FailureRecord {
    pub attempts: i32,
    /// The error as stored (redacted when it was built).
    pub error: Value,
    pub failed_at: DateTime<Utc>,
    /// How it was resolved (`failed_intakes.resolution`), `None` while open.
    pub resolution: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
}

/// One row of [`SELECT`], by column name.
#[derive(sqlx::FromRow)]
struct Row {
    network_id: NetworkId,
    message_key: String,
    case_id: Option<i64>,
    household_id: Option<i64>,
    error_code: Option<String>,
    event_id: Uuid,
    event: Value,
    decided_at: DateTime<Utc>,
    attempts: Option<i32>,
    error: Option<Value>,
    failed_at: Option<DateTime<Utc>>,
    resolution: Option<String>,
    resolved_at: Option<DateTime<Utc>>,
}

/// `$1` the key, `$2` one network or NULL for all. The case and the failed intake are joined
/// in the outcome's own network (a failed intake of namespace 0 has no network).
const SELECT: &str = "
    SELECT o.network_id, o.message_key, o.case_id, c.household_id, o.error_code, o.event_id,
           o.event, o.updated_at AS decided_at, f.attempts, f.error, f.created_at AS failed_at,
           f.resolution, f.resolved_at
      FROM intake_outcomes o
      LEFT JOIN cases c ON c.id = o.case_id AND c.network_id = o.network_id
      LEFT JOIN LATERAL (SELECT attempts, error, created_at, resolution, resolved_at
                           FROM failed_intakes
                          WHERE event_id = o.event_id AND o.outcome = 'failed'
                            AND network_id IS NOT DISTINCT FROM NULLIF(o.network_id, 0)
                          ORDER BY id LIMIT 1) f ON true
     WHERE o.message_key = $1 AND ($2::bigint IS NULL OR o.network_id = $2)
       AND o.outcome IS NOT NULL
     ORDER BY o.network_id";

async fn select(
    pool: &PgPool,
    key: &str,
    network: Option<i64>,
) -> Result<Vec<KeyOutcome>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(SELECT)
        .bind(key)
        .bind(network)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(outcome_of).collect())
}

fn outcome_of(row: Row) -> KeyOutcome {
    // The lateral join yields all of a failed intake's columns or none.
    let failure = match (row.attempts, row.error, row.failed_at) {
        (Some(attempts), Some(error), Some(failed_at)) => Some(FailureRecord {
            attempts,
            error,
            failed_at,
            resolution: row.resolution,
            resolved_at: row.resolved_at,
        }),
        _ => None,
    };
    KeyOutcome {
        network_id: row.network_id,
        message_key: row.message_key,
        case_id: row.case_id,
        household_id: row.household_id,
        error_code: row.error_code,
        event_id: row.event_id,
        event: row.event,
        decided_at: row.decided_at,
        failure,
    }
}

/// The outcome of `key` in the caller's network, if one is recorded there.
pub async fn outcome_in_network(
    pool: &PgPool,
    caller: &Caller,
    key: &str,
) -> Result<Option<KeyOutcome>, sqlx::Error> {
    let network = caller.network_id().get();
    Ok(select(pool, key, Some(network)).await?.into_iter().next())
}

/// Operator statement (trusted): the outcomes of `key` in `network`, or in every network
/// (namespace 0, the unauthenticated one, included), in network order.
pub async fn outcomes_of_key(
    pool: &PgPool,
    key: &str,
    network: Option<i64>,
) -> Result<Vec<KeyOutcome>, sqlx::Error> {
    select(pool, key, network).await
}
