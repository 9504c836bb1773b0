//! Message keys and their outcomes (`intake_outcomes`): claiming a key in its network's
//! namespace, reading the committed outcome of a key seen before, forgetting a failed outcome
//! a replay re-decides, and writing each key's outcome with its event.
//!
//! Every key is paired with the network that proved it (a [`Caller`](crate::store::auth::Caller)'s,
//! or the unauthenticated namespace 0): no statement here reads or writes another network's key.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sqlx::PgConnection;
use sqlx::postgres::PgArguments;
use uuid::Uuid;

use crate::domain::event::Event;
use crate::store::ids::NetworkId;
use crate::store::unnest::column;

/// A message key to claim in a network namespace.
#[derive(Debug, Clone)]
pub struct ClaimedKey {
    pub network_id: NetworkId,
    pub message_key: String,
    pub payload_hash: Vec<u8>,
}

/// Claims keys; returns the `(network, key)` pairs that were NOT claimed because an outcome
/// already exists. A key claimed by a concurrent, uncommitted transaction makes this wait
/// for it, so the same key is never processed twice at once.
pub async fn claim_keys(
    tx: &mut PgConnection,
    claims: &[ClaimedKey],
) -> Result<Vec<(NetworkId, String)>, sqlx::Error> {
    if claims.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<&ClaimedKey> = claims.iter().collect();
    // One order for every window, so that two windows claiming overlapping keys cannot deadlock.
    sorted.sort_by(|a, b| (a.network_id, &a.message_key).cmp(&(b.network_id, &b.message_key)));
    let claimed: HashSet<(NetworkId, String)> = sqlx::query_as(
        "INSERT INTO intake_outcomes (network_id, message_key, payload_hash)
         SELECT n, k, h FROM unnest($1::bigint[], $2::text[], $3::bytea[]) WITH ORDINALITY AS u(n, k, h, o)
          ORDER BY o
         ON CONFLICT DO NOTHING
         RETURNING network_id, message_key",
    )
    .bind(column(&sorted, |c| c.network_id))
    .bind(column(&sorted, |c| c.message_key.as_str()))
    .bind(column(&sorted, |c| c.payload_hash.as_slice()))
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    Ok(sorted
        .into_iter()
        .map(|c| (c.network_id, c.message_key.clone()))
        .filter(|k| !claimed.contains(k))
        .collect())
}

/// Deletes the failed outcomes of keys being replayed, so that they can be claimed again in
/// the same transaction (and, for an intake that first failed authentication, also the
/// unauthenticated namespace).
pub async fn forget_failed_outcomes(
    tx: &mut PgConnection,
    keys: &[(NetworkId, String)],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    // An unpublished outbox row may still refer to the event of a forgotten outcome (a replay
    // right after the failure, the broker down): its event is copied into the row first.
    sqlx::query(
        "WITH gone AS (
             DELETE FROM intake_outcomes o
              USING unnest($1::bigint[], $2::text[]) AS u(n, k)
              WHERE o.message_key = u.k AND o.network_id IN (u.n, 0) AND o.outcome = 'failed'
          RETURNING o.network_id, o.message_key, o.event_id, o.event)
         UPDATE outbox b
            SET body = g.event, outcome_network_id = NULL, outcome_key = NULL
           FROM gone g
          WHERE b.outcome_network_id = g.network_id
            AND b.outcome_key = g.message_key AND b.event_id = g.event_id",
    )
    .bind(column(keys, |k| k.0))
    .bind(column(keys, |k| k.1.as_str()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The committed outcome of a key.
#[derive(Debug, Clone)]
pub struct StoredOutcome {
    pub payload_hash: Vec<u8>,
    pub event: Event,
    /// The error code when the outcome is a failure.
    pub error_code: Option<String>,
    /// The failed intake that holds a failed outcome's event, when it is still kept: its id and
    /// attempt number.
    pub failed: Option<(i64, i32)>,
}

/// Reads the committed outcomes of keys that could not be claimed. With `lock`, their rows are
/// locked (`FOR UPDATE`), so that a failed outcome read here is still the key's outcome when
/// the transaction replaces it (a window that claims first).
pub async fn stored_outcomes(
    tx: &mut PgConnection,
    keys: &[(NetworkId, String)],
    lock: bool,
) -> Result<HashMap<(NetworkId, String), StoredOutcome>, sqlx::Error> {
    type Row = (
        NetworkId,
        String,
        Vec<u8>,
        Uuid,
        Value,
        String,
        Option<String>,
        Option<i64>,
        Option<i32>,
    );
    // The failed intake is looked up by its event (indexed); only failed outcomes have one.
    macro_rules! select_outcomes {
        ($tail:literal) => {
            concat!(
                "SELECT o.network_id, o.message_key, o.payload_hash, o.event_id, o.event,
                        o.routing_key, o.error_code, f.id, f.attempts
                   FROM intake_outcomes o
                   JOIN unnest($1::bigint[], $2::text[]) AS u(n, k)
                     ON o.network_id = u.n AND o.message_key = u.k
                   LEFT JOIN LATERAL (SELECT id, attempts FROM failed_intakes
                                       WHERE event_id = o.event_id AND o.outcome = 'failed'
                                       ORDER BY id LIMIT 1) f ON true
                  WHERE o.outcome IS NOT NULL",
                $tail
            )
        };
    }
    let sql = if lock {
        // Key order, as `claim_keys`: two windows locking overlapping keys cannot deadlock.
        select_outcomes!(" ORDER BY o.network_id, o.message_key FOR UPDATE OF o")
    } else {
        select_outcomes!("")
    };
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(column(keys, |k| k.0))
        .bind(column(keys, |k| k.1.as_str()))
        .fetch_all(&mut *tx)
        .await?;
    Ok(rows
        .into_iter()
        .map(
            |(network, key, payload_hash, id, body, routing_key, code, failed_id, attempts)| {
                let event = Event {
                    id,
                    routing_key,
                    body,
                };
                let outcome = StoredOutcome {
                    payload_hash,
                    event,
                    error_code: code,
                    failed: failed_id.zip(attempts),
                };
                ((network, key), outcome)
            },
        )
        .collect())
}

/// The outcome of a claimed key.
#[derive(Debug, Clone)]
pub struct OutcomeRow {
    pub network_id: NetworkId,
    pub message_key: String,
    pub payload_hash: Vec<u8>,
    pub case_id: Option<i64>,
    /// True when `case_id` is an existing case the intake was linked to (`matched`), not one
    /// it created.
    pub matched: bool,
    pub error_code: Option<String>,
    pub event_id: Uuid,
    pub event: String,
    pub routing_key: String,
    /// Set when the key's committed failure is being superseded (fix and resend): the event id
    /// of that failure, which the row must still hold when it is replaced.
    pub replaces: Option<Uuid>,
}

/// Fills in the outcome of keys claimed earlier in the transaction.
pub async fn record_outcomes(
    tx: &mut PgConnection,
    rows: &[OutcomeRow],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let c = OutcomeColumns::of(rows.iter());
    let query = sqlx::query(
        "UPDATE intake_outcomes o
            SET outcome = CASE WHEN u.case_id IS NULL THEN 'failed'
                               WHEN u.m THEN 'matched' ELSE 'created' END,
                case_id = u.case_id, error_code = u.code, event_id = u.eid,
                event = u.ev::jsonb, routing_key = u.rk, updated_at = now()
           FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::uuid[],
                       $6::text[], $7::text[], $8::bool[]) AS u(n, k, case_id, code, eid, ev, rk, m)
          WHERE o.network_id = u.n AND o.message_key = u.k",
    )
    .bind(&c.networks)
    .bind(&c.keys);
    c.bind_outcome(query).execute(&mut *tx).await?;
    Ok(())
}

/// A statement with its arguments bound so far.
type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Outcome rows column by column, for `unnest`.
struct OutcomeColumns<'a> {
    networks: Vec<NetworkId>,
    keys: Vec<&'a str>,
    hashes: Vec<&'a [u8]>,
    cases: Vec<Option<i64>>,
    codes: Vec<Option<&'a str>>,
    event_ids: Vec<Uuid>,
    events: Vec<&'a str>,
    routing: Vec<&'a str>,
    matched: Vec<bool>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(rows: impl Iterator<Item = &'a OutcomeRow> + Clone) -> Self {
        Self {
            networks: rows.clone().map(|r| r.network_id).collect(),
            keys: rows.clone().map(|r| r.message_key.as_str()).collect(),
            hashes: rows.clone().map(|r| r.payload_hash.as_slice()).collect(),
            cases: rows.clone().map(|r| r.case_id).collect(),
            codes: rows.clone().map(|r| r.error_code.as_deref()).collect(),
            event_ids: rows.clone().map(|r| r.event_id).collect(),
            events: rows.clone().map(|r| r.event.as_str()).collect(),
            routing: rows.clone().map(|r| r.routing_key.as_str()).collect(),
            matched: rows.map(|r| r.matched).collect(),
        }
    }

    /// Binds what the outcome statements take after the key (and hash): case, error code,
    /// event id, event, routing key and whether the case was matched rather than created.
    fn bind_outcome<'q>(&'q self, query: PgQuery<'q>) -> PgQuery<'q> {
        query
            .bind(&self.cases)
            .bind(&self.codes)
            .bind(&self.event_ids)
            .bind(&self.events)
            .bind(&self.routing)
            .bind(&self.matched)
    }
}

/// Inserts complete outcome rows for keys looked up (not claimed) at the start of the
/// transaction; returns how many were inserted. A row is skipped when its key was written by
/// a transaction that committed meanwhile (after waiting for it, if it was still running):
/// fewer rows than given means the window lost a race for a key.
pub async fn insert_outcomes(
    tx: &mut PgConnection,
    rows: &[OutcomeRow],
) -> Result<usize, sqlx::Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    let mut sorted: Vec<&OutcomeRow> = rows.iter().collect();
    // Key order, as `claim_keys`: two windows waiting on each other's keys cannot deadlock.
    sorted.sort_by(|a, b| (a.network_id, &a.message_key).cmp(&(b.network_id, &b.message_key)));
    let c = OutcomeColumns::of(sorted.iter().copied());
    let query = sqlx::query(
        "INSERT INTO intake_outcomes (network_id, message_key, payload_hash, outcome, case_id,
                                      error_code, event_id, event, routing_key)
         SELECT n, k, h, CASE WHEN c IS NULL THEN 'failed' WHEN m THEN 'matched'
                              ELSE 'created' END, c, code, eid, ev::jsonb, rk
           FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::text[],
                       $6::uuid[], $7::text[], $8::text[], $9::bool[])
                WITH ORDINALITY AS u(n, k, h, c, code, eid, ev, rk, m, o)
          ORDER BY o
         ON CONFLICT DO NOTHING",
    )
    .bind(&c.networks)
    .bind(&c.keys)
    .bind(&c.hashes);
    let inserted = c.bind_outcome(query).execute(&mut *tx).await?;
    Ok(inserted.rows_affected() as usize)
}

/// Replaces the failed outcomes of resent keys with their new outcome (body hash included);
/// returns false when a row no longer holds the failure it was read with (a concurrent window
/// superseded it first: the transaction is rolled back and the window runs again).
pub async fn replace_outcomes(
    tx: &mut PgConnection,
    rows: &[&OutcomeRow],
) -> Result<bool, sqlx::Error> {
    if rows.is_empty() {
        return Ok(true);
    }
    let mut sorted: Vec<&OutcomeRow> = rows.to_vec();
    // Key order, as `claim_keys`.
    sorted.sort_by(|a, b| (a.network_id, &a.message_key).cmp(&(b.network_id, &b.message_key)));
    // An unpublished outbox row may still read the superseded failure's event from the
    // outcome row (the failure's own event, not yet published, or published and put back by a
    // relay killed before its commit): it gets a copy first, as `forget_failed_outcomes` does,
    // or it could never be published. `a_resend_that_fails_again…` in tests/resend.rs holds it.
    sqlx::query(
        "UPDATE outbox b
            SET body = o.event, outcome_network_id = NULL, outcome_key = NULL
           FROM intake_outcomes o
           JOIN unnest($1::bigint[], $2::text[], $3::uuid[]) AS u(n, k, prev)
             ON o.network_id = u.n AND o.message_key = u.k AND o.event_id = u.prev
          WHERE b.outcome_network_id = o.network_id AND b.outcome_key = o.message_key
            AND b.event_id = o.event_id",
    )
    .bind(column(&sorted, |r| r.network_id))
    .bind(column(&sorted, |r| r.message_key.as_str()))
    .bind(column(&sorted, |r| r.replaces))
    .execute(&mut *tx)
    .await?;
    let c = OutcomeColumns::of(sorted.iter().copied());
    let query = sqlx::query(
        "UPDATE intake_outcomes o
            SET outcome = CASE WHEN u.case_id IS NULL THEN 'failed'
                               WHEN u.m THEN 'matched' ELSE 'created' END,
                payload_hash = u.h, case_id = u.case_id, error_code = u.code, event_id = u.eid,
                event = u.ev::jsonb, routing_key = u.rk, updated_at = now()
           FROM unnest($1::bigint[], $2::text[], $3::bytea[], $4::bigint[], $5::text[],
                       $6::uuid[], $7::text[], $8::text[], $9::bool[], $10::uuid[])
                AS u(n, k, h, case_id, code, eid, ev, rk, m, prev)
          WHERE o.network_id = u.n AND o.message_key = u.k AND o.event_id = u.prev
            AND o.outcome = 'failed'",
    )
    .bind(&c.networks)
    .bind(&c.keys)
    .bind(&c.hashes);
    let replaced = c
        .bind_outcome(query)
        .bind(column(&sorted, |r| r.replaces))
        .execute(&mut *tx)
        .await?;
    Ok(replaced.rows_affected() as usize == sorted.len())
}
