//! Failed intakes (`failed_intakes`): written by a window with their payload sealed, read by
//! the operator's `failed` commands (trusted: they name any network, or none), resolved by a
//! replay.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::event::Resolution;
use crate::store::crypto::{Purpose, Vault};
use crate::store::ids::NetworkId;
use crate::store::unnest::column;

/// A failed intake kept for inspection and replay.
#[derive(Debug, Clone)]
pub struct FailedRow {
    pub network_id: Option<NetworkId>,
    pub message_key: Option<String>,
    pub correlation_id: Option<String>,
    pub token_hash: Option<Vec<u8>>,
    /// The body, or its first bytes when `truncated`.
    pub payload: Vec<u8>,
    /// The body's length and SHA-256 as published.
    pub payload_bytes: i64,
    pub payload_sha256: Vec<u8>,
    pub truncated: bool,
    pub error_code: String,
    pub error: String,
    /// The failing fields, sorted and comma-separated (see [`error_fields`]).
    pub error_fields: String,
    pub attempts: i32,
    pub event_id: Uuid,
}

/// The failing fields an error names, sorted and comma-separated (`''` when it names none),
/// then `…and N more` when it omitted some: with the code, the cause a failure is grouped by
/// (`failed groups`). A name's `\` and `,` are escaped (`\\`, `\,`) so that the list reads
/// back unambiguously. Bounded as the error's list is (at most 16 names of at most 64 bytes,
/// each at most doubled by escaping: under 2.1 KB), so the btree index over it can always
/// hold the row.
pub fn error_fields(error: &crate::domain::error::IntakeError) -> String {
    // A BTreeMap: already sorted.
    let mut names: Vec<String> = error.fields.keys().map(|n| escape_field(n)).collect();
    if error.fields_omitted > 0 {
        names.push(format!("…and {} more", error.fields_omitted));
    }
    names.join(",")
}

fn escape_field(name: &str) -> String {
    name.replace('\\', "\\\\").replace(',', "\\,")
}

/// Inserts a window's failed intakes in one statement, each payload sealed whole under the
/// active key: it may hold an SSN in any shape, even when malformed.
pub async fn insert_failed(
    tx: &mut PgConnection,
    rows: &[FailedRow],
    now: DateTime<Utc>,
    vault: &Vault,
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let payloads = column(rows, |r| vault.seal(Purpose::FailedPayload, &r.payload));
    sqlx::query(
        "INSERT INTO failed_intakes (network_id, message_key, correlation_id, token_hash,
                                     payload_sealed, payload_key_id, error_code, error, attempts,
                                     event_id, created_at, payload_bytes, payload_sha256,
                                     payload_truncated, error_fields)
         SELECT n, k, c, t, p, $11, code, e::jsonb, a, eid, $10, sz, h, tr, ef
           FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bytea[], $5::bytea[],
                       $6::text[], $7::text[], $8::int[], $9::uuid[], $12::bigint[],
                       $13::bytea[], $14::bool[], $15::text[])
             AS u(n, k, c, t, p, code, e, a, eid, sz, h, tr, ef)",
    )
    .bind(column(rows, |r| r.network_id))
    .bind(column(rows, |r| r.message_key.as_deref()))
    .bind(column(rows, |r| r.correlation_id.as_deref()))
    .bind(column(rows, |r| r.token_hash.as_deref()))
    .bind(&payloads)
    .bind(column(rows, |r| r.error_code.as_str()))
    .bind(column(rows, |r| r.error.as_str()))
    .bind(column(rows, |r| r.attempts))
    .bind(column(rows, |r| r.event_id))
    .bind(now)
    .bind(vault.active_key())
    .bind(column(rows, |r| r.payload_bytes))
    .bind(column(rows, |r| r.payload_sha256.as_slice()))
    .bind(column(rows, |r| r.truncated))
    .bind(column(rows, |r| r.error_fields.as_str()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A failed intake that a later attempt (or an operator) resolved.
#[derive(Debug, Clone)]
pub struct ResolvedRow {
    pub failed_intake_id: i64,
    pub how: Resolution,
    /// The outcome event of the attempt that resolved it (`None` for a dismissal).
    pub event_id: Option<Uuid>,
    pub operator: Option<String>,
    pub reason: Option<String>,
}

/// Marks failed intakes as resolved, whatever the resolving attempt's own outcome (a new
/// failure is recorded as a new row with the next attempt number). Returns the ids that were
/// open: a row resolved meanwhile is left as it was.
pub async fn resolve_failed(
    tx: &mut PgConnection,
    rows: &[ResolvedRow],
    now: DateTime<Utc>,
) -> Result<Vec<i64>, sqlx::Error> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    sqlx::query_scalar(
        "UPDATE failed_intakes f
            SET resolved_at = $6, resolution = u.how, resolved_event_id = u.eid,
                resolved_by = u.op, resolution_reason = u.why
           FROM unnest($1::bigint[], $2::text[], $3::uuid[], $4::text[], $5::text[])
                AS u(id, how, eid, op, why)
          WHERE f.id = u.id AND f.resolved_at IS NULL
      RETURNING f.id",
    )
    .bind(column(rows, |r| r.failed_intake_id))
    .bind(column(rows, |r| r.how.as_str()))
    .bind(column(rows, |r| r.event_id))
    .bind(column(rows, |r| r.operator.as_deref()))
    .bind(column(rows, |r| r.reason.as_deref()))
    .bind(now)
    .fetch_all(&mut *tx)
    .await
}

/// Of the failed intakes an operator's retry names (replay, edit), those still open, each
/// locked (`FOR UPDATE`) until the retry's transaction ends. The retry's check-and-set: a row
/// resolved meanwhile (its sender's resend committed first, another replay, a dismissal) is
/// not returned (`READ COMMITTED` re-reads a row whose writer it waited for), and while the
/// lock is held no resend can resolve the row, as a resend resolves the failure it supersedes
/// in its own transaction.
pub async fn lock_open_failed(
    tx: &mut PgConnection,
    ids: &[i64],
) -> Result<std::collections::HashSet<i64>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(std::collections::HashSet::new());
    }
    let open: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM failed_intakes
          WHERE id = ANY($1) AND resolved_at IS NULL
          ORDER BY id
            FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await?;
    Ok(open.into_iter().collect())
}

/// Which failed intakes a listing or a replay selects.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub key: Option<String>,
    pub code: Option<String>,
    pub network: Option<i64>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Exactly these failing fields (`error_fields`: sorted, comma-separated, `''` for none):
    /// with `code`, one failure group.
    pub fields: Option<String>,
    /// Include failed intakes already resolved by a replay.
    pub include_resolved: bool,
    pub limit: i64,
}

/// One failed intake as listed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedIntake {
    pub id: i64,
    pub network_id: Option<i64>,
    pub message_key: Option<String>,
    pub correlation_id: Option<String>,
    pub error_code: String,
    pub error: Value,
    pub attempts: i32,
    pub event_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    /// How it was resolved (`replayed`, `resent`, `edited`, `dismissed`); none while open.
    pub resolution: Option<String>,
    /// The operator who resolved it (none when its sender resent the key).
    pub resolved_by: Option<String>,
    /// A dismissal's reason.
    pub resolution_reason: Option<String>,
    /// The outcome event of the attempt that resolved it.
    pub resolved_event_id: Option<Uuid>,
}

/// A failed intake with what a replay or `failed show` needs besides: its payload, still
/// sealed, and the token it came with.
#[derive(sqlx::FromRow)]
pub struct StoredFailure {
    #[sqlx(flatten)]
    pub intake: FailedIntake,
    /// Sealed with `payload_key_id` (see `crypto`).
    pub payload_sealed: Vec<u8>,
    pub payload_key_id: String,
    pub token_hash: Option<Vec<u8>>,
    /// Set when only a prefix of an oversized body was stored, with the whole body's length and
    /// SHA-256 (absent on rows older than that record).
    pub payload_truncated: bool,
    pub payload_bytes: Option<i64>,
    pub payload_sha256: Option<Vec<u8>>,
}

/// The selection of a [`Filter`]: `$1`–`$6` its fields, `$7` the id to start after, `$8` the
/// id to stop at (both for paging and for a replay that must not pick up its own failures),
/// `$9` the exact failing fields.
const WHERE: &str = "WHERE ($1::text IS NULL OR message_key = $1)
                       AND ($2::text IS NULL OR error_code = $2)
                       AND ($3::bigint IS NULL OR network_id = $3)
                       AND ($4::timestamptz IS NULL OR created_at >= $4)
                       AND ($5::timestamptz IS NULL OR created_at < $5)
                       AND ($6 OR resolved_at IS NULL)
                       AND id > $7
                       AND ($8::bigint IS NULL OR id <= $8)
                       AND ($9::text IS NULL OR error_fields = $9)";

/// Columns by the names of [`StoredFailure`]'s fields.
const COLUMNS: &str = "SELECT id, network_id, message_key, correlation_id, error_code, error,
                              attempts, event_id, created_at, resolved_at, resolution,
                              resolved_by, resolution_reason, resolved_event_id, payload_sealed,
                              token_hash, payload_key_id, payload_truncated, payload_bytes,
                              payload_sha256
                         FROM failed_intakes";

/// Binds a [`Filter`]'s selection as `$1`–`$9` (see [`WHERE`]).
fn bind_selection<'q, O>(
    query: sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>,
    f: &'q Filter,
    after: i64,
    upto: Option<i64>,
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments> {
    query
        .bind(&f.key)
        .bind(&f.code)
        .bind(f.network)
        .bind(f.since)
        .bind(f.until)
        .bind(f.include_resolved)
        .bind(after)
        .bind(upto)
        .bind(&f.fields)
}

/// The failed intakes matching `f` with an id above `after` (and at most `upto`), in id
/// order, at most `f.limit` of them.
pub async fn select_failed(
    pool: &PgPool,
    f: &Filter,
    after: i64,
    upto: Option<i64>,
) -> Result<Vec<StoredFailure>, sqlx::Error> {
    // Made of constants only: nothing a caller passes is spliced into the text.
    let sql = format!("{COLUMNS} {WHERE} ORDER BY id LIMIT $10");
    bind_selection(sqlx::query_as(sqlx::AssertSqlSafe(sql)), f, after, upto)
        .bind(f.limit)
        .fetch_all(pool)
        .await
}

/// The ids of every failed intake matching `f` with an id at most `upto`, in id order
/// (`f.limit` does not apply): the fixed selection of a bulk command.
pub async fn select_failed_ids(
    pool: &PgPool,
    f: &Filter,
    upto: Option<i64>,
) -> Result<Vec<i64>, sqlx::Error> {
    // Made of constants only, like `select_failed`'s.
    let sql = format!("SELECT id FROM failed_intakes {WHERE} ORDER BY id");
    let rows: Vec<(i64,)> = bind_selection(sqlx::query_as(sqlx::AssertSqlSafe(sql)), f, 0, upto)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}

/// The failed intakes with these ids, open or resolved, in id order (a row purged meanwhile is
/// missing).
pub async fn failed_by_ids(pool: &PgPool, ids: &[i64]) -> Result<Vec<StoredFailure>, sqlx::Error> {
    // Made of constants only.
    let sql = format!("{COLUMNS} WHERE id = ANY($1) ORDER BY id");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(ids)
        .fetch_all(pool)
        .await
}

/// How many failed intakes match `f` with an id above `after` (and at most `upto`).
pub async fn count_failed(
    pool: &PgPool,
    f: &Filter,
    after: i64,
    upto: Option<i64>,
) -> Result<i64, sqlx::Error> {
    // Made of constants only, like `select_failed`'s.
    let sql = format!("SELECT count(*) FROM failed_intakes {WHERE}");
    let (n,): (i64,) = bind_selection(sqlx::query_as(sqlx::AssertSqlSafe(sql)), f, after, upto)
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// The id of the newest failed intake (`None` when there is none).
pub async fn newest_failed_id(pool: &PgPool) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT max(id) FROM failed_intakes")
        .fetch_one(pool)
        .await
}

/// The open failed intakes of one group: one cause (code and failing fields) in one network.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct GroupRow {
    pub network_id: Option<i64>,
    pub error_code: String,
    pub error_fields: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

/// The open failed intakes per group (network, code, failing fields), most numerous first;
/// of one network when `network` is given (operators are trusted: `None` is every network).
/// Each open failure is in exactly one group.
pub async fn failure_groups(
    pool: &PgPool,
    network: Option<i64>,
) -> Result<Vec<GroupRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT network_id, error_code, error_fields, count(*) AS count,
                min(created_at) AS first_seen, max(created_at) AS last_seen
           FROM failed_intakes
          WHERE resolved_at IS NULL AND ($1::bigint IS NULL OR network_id = $1)
          GROUP BY network_id, error_code, error_fields
          ORDER BY count DESC, error_code, error_fields, network_id NULLS FIRST",
    )
    .bind(network)
    .fetch_all(pool)
    .await
}
