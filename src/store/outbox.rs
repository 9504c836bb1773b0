//! The outbox (`outbox`): the window queues its events here in its own transaction; the relay
//! takes rows by deleting them, and puts back, in the same transaction, those the broker did
//! not take. Also the backlog the HTTP surface reports.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store::ids::NetworkId;
use crate::store::unnest::column;

/// An event to publish.
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: Uuid,
    pub routing_key: String,
    pub body: OutboxBody,
    pub correlation_id: Option<String>,
}

/// Where the relay finds an event's body.
#[derive(Debug, Clone)]
pub enum OutboxBody {
    /// In the `intake_outcomes` row of this key (written in the same transaction, or earlier):
    /// the event is stored once.
    Outcome {
        network_id: NetworkId,
        message_key: String,
    },
    /// In the outbox row itself: the event has no outcome row of its own.
    Inline(String),
}

impl OutboxBody {
    /// The body stored in the row itself, if it is not in an outcome row.
    fn inline(&self) -> Option<&str> {
        match self {
            Self::Inline(body) => Some(body),
            Self::Outcome { .. } => None,
        }
    }

    /// The outcome row (network, key) holding the body, if any.
    fn outcome(&self) -> Option<(NetworkId, &str)> {
        match self {
            Self::Outcome {
                network_id,
                message_key,
            } => Some((*network_id, message_key)),
            Self::Inline(_) => None,
        }
    }
}

/// Queues events for the relay; returns the ids of their outbox rows.
pub async fn insert_outbox(
    tx: &mut PgConnection,
    rows: &[OutboxRow],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "INSERT INTO outbox (event_id, routing_key, body, outcome_network_id, outcome_key,
                             correlation_id, created_at)
         SELECT eid, rk, b::jsonb, n, k, c, $7
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[])
                WITH ORDINALITY AS u(eid, rk, b, n, k, c, o)
          ORDER BY o
         RETURNING id",
    )
    .bind(column(rows, |r| r.event_id))
    .bind(column(rows, |r| r.routing_key.as_str()))
    .bind(column(rows, |r| r.body.inline()))
    .bind(column(rows, |r| r.body.outcome().map(|(n, _)| n)))
    .bind(column(rows, |r| r.body.outcome().map(|(_, k)| k)))
    .bind(column(rows, |r| r.correlation_id.as_deref()))
    .bind(now)
    .fetch_all(&mut *tx)
    .await
}

/// The outbox's backlog: how many events wait, and the age in seconds of the oldest.
pub async fn outbox_backlog(pool: &PgPool) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::bigint
           FROM outbox",
    )
    .fetch_one(pool)
    .await
}

/// A row taken (deleted, uncommitted) by the relay, with what is needed to put it back.
#[derive(Debug, Clone)]
pub struct Taken {
    pub id: i64,
    pub event_id: Uuid,
    pub routing_key: String,
    /// Set when the body lives in the outcome row (the row's own body column is then null).
    pub outcome_network_id: Option<i64>,
    pub outcome_key: Option<String>,
    pub correlation_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    /// The body to publish. `None` only if the outcome row the event lives in is gone, which
    /// forget-failed and retention prevent; such a row is put back, never dropped.
    pub body: Option<String>,
}

// Taking rows: deletes (in the caller's open transaction) and returns the rows that are
// publishable now and not taken by another relay (`FOR UPDATE SKIP LOCKED`), in id order.
//
// Not prepared statements: the outbox swings from empty to a backlog of thousands and back,
// and a plan cached while it was small (a sequential scan) would be kept for the backlog;
// planned each time, the lookup by id follows the primary key.

/// One RETURNING list for both ways of taking rows (sqlx takes only static SQL).
macro_rules! take_sql {
    ($which:literal) => {
        concat!(
            "DELETE FROM outbox o WHERE o.id IN (",
            $which,
            " FOR UPDATE SKIP LOCKED)
             RETURNING o.id, o.event_id, o.routing_key,
                       o.outcome_network_id, o.outcome_key, o.correlation_id,
                       o.created_at, o.attempts,
                       COALESCE(o.body, (SELECT i.event FROM intake_outcomes i
                                          WHERE i.network_id = o.outcome_network_id
                                            AND i.message_key = o.outcome_key
                                            AND i.event_id = o.event_id))::text"
        )
    };
}

/// Takes the publishable rows among `ids` (rows a window of this process handed over).
pub async fn take_handed(tx: &mut PgConnection, ids: &[i64]) -> Result<Vec<Taken>, sqlx::Error> {
    let rows = sqlx::query_as(take_sql!(
        "SELECT id FROM outbox
          WHERE id = ANY($1) AND (retry_at IS NULL OR retry_at <= now())"
    ))
    .persistent(false)
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(taken_in_order(rows))
}

/// Takes up to `limit` of the oldest publishable rows, whoever wrote them.
pub async fn take_oldest(tx: &mut PgConnection, limit: i64) -> Result<Vec<Taken>, sqlx::Error> {
    let rows = sqlx::query_as(take_sql!(
        "SELECT id FROM outbox
          WHERE retry_at IS NULL OR retry_at <= now()
          ORDER BY id LIMIT $1"
    ))
    .persistent(false)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    Ok(taken_in_order(rows))
}

/// A row as a take returns it, in the order of [`Taken`]'s fields.
type TakenColumns = (
    i64,
    Uuid,
    String,
    Option<i64>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
    i32,
    Option<String>,
);

/// The rows a take returned, in id order (RETURNING does not promise one).
fn taken_in_order(rows: Vec<TakenColumns>) -> Vec<Taken> {
    let mut taken: Vec<Taken> = rows
        .into_iter()
        .map(
            |(
                id,
                event_id,
                routing_key,
                network,
                key,
                correlation_id,
                created_at,
                attempts,
                body,
            )| Taken {
                id,
                event_id,
                routing_key,
                outcome_network_id: network,
                outcome_key: key,
                correlation_id,
                created_at,
                attempts,
                body,
            },
        )
        .collect();
    taken.sort_by_key(|t| t.id);
    taken
}

/// Puts taken rows back into the outbox (same id, same body reference), one more attempt
/// counted, not to be published again before a pause that grows with their attempts, capped
/// at a minute, so that an unbound routing key does not make the relay spin.
pub async fn put_back(tx: &mut PgConnection, rows: &[&Taken]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (id, event_id, routing_key, body, outcome_network_id, outcome_key,
                             correlation_id, created_at, attempts, retry_at)
         SELECT id, eid, rk, b::jsonb, n, k, c, ts, a,
                now() + make_interval(secs => least(60, power(2, least(a, 6))))
           FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                       $6::text[], $7::text[], $8::timestamptz[], $9::int[])
             AS u(id, eid, rk, b, n, k, c, ts, a)",
    )
    .bind(column(rows, |t| t.id))
    .bind(column(rows, |t| t.event_id))
    .bind(column(rows, |t| t.routing_key.as_str()))
    // A row keeps its body inline exactly when it does not refer to an outcome row (the
    // outbox's CHECK), so the body taken is the one to put back.
    .bind(column(rows, |t| {
        t.outcome_key
            .is_none()
            .then_some(t.body.as_deref())
            .flatten()
    }))
    .bind(column(rows, |t| t.outcome_network_id))
    .bind(column(rows, |t| t.outcome_key.as_deref()))
    .bind(column(rows, |t| t.correlation_id.as_deref()))
    .bind(column(rows, |t| t.created_at))
    .bind(column(rows, |t| t.attempts.saturating_add(1)))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
