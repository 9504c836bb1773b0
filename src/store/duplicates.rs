//! Possible duplicates for operators (`case-intake duplicates …`): the flagged pairs listed,
//! read with the two cases an administrator decides between, dismissed; a network's duplicate
//! policy read and set; and the match keys of cases written before matching existed computed
//! batch by batch. Trusted like every operator statement: they name any network, or none.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::store::unnest::column;

/// One flagged pair as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct PairRow {
    pub id: i64,
    pub network_id: i64,
    /// The case the intake created.
    pub case_id: i64,
    /// The existing case it may duplicate.
    pub candidate_case_id: i64,
    pub rules: Vec<String>,
    pub score: f32,
    /// Created past a `reject` policy by its sender's override.
    pub overridden: bool,
    pub message_key: Option<String>,
    pub event_id: Uuid,
    /// When the intake flagged it.
    pub created_at: DateTime<Utc>,
    /// `dismissed`, or none while open.
    pub resolution: Option<String>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_by: Option<String>,
    pub resolution_reason: Option<String>,
}

/// Which pairs `list` selects.
#[derive(Debug, Clone, Default)]
pub struct PairFilter {
    pub network: Option<i64>,
    pub open: bool,
    pub dismissed: bool,
    /// Only pairs that matched this rule (`Rule::as_str`).
    pub rule: Option<String>,
    pub limit: i64,
}

const PAIR_COLUMNS: &str = "SELECT id, network_id, case_id, candidate_case_id, rules, score,
                                   overridden, message_key, event_id, created_at, resolution,
                                   resolved_at, resolved_by, resolution_reason
                              FROM possible_duplicates";

/// The pairs `f` selects, newest first, at most `f.limit`.
pub async fn list(pool: &PgPool, f: &PairFilter) -> Result<Vec<PairRow>, sqlx::Error> {
    // Made of constants only: nothing a caller passes is spliced into the text.
    let sql = format!(
        "{PAIR_COLUMNS}
          WHERE ($1::bigint IS NULL OR network_id = $1)
            AND (($2 AND resolved_at IS NULL) OR ($3 AND resolved_at IS NOT NULL))
            AND ($4::text IS NULL OR $4 = ANY (rules))
          ORDER BY id DESC
          LIMIT $5"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(f.network)
        .bind(f.open)
        .bind(f.dismissed)
        .bind(&f.rule)
        .bind(f.limit)
        .fetch_all(pool)
        .await
}

/// One pair by id.
pub async fn get(pool: &PgPool, id: i64) -> Result<Option<PairRow>, sqlx::Error> {
    let sql = format!("{PAIR_COLUMNS} WHERE id = $1");
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
}

/// What an administrator needs of one case of a pair. The SSN only as its last four digits:
/// it is never unsealed here.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CaseForReview {
    pub id: i64,
    pub network_id: i64,
    pub household_id: i64,
    pub group_id: i64,
    pub created_at: DateTime<Utc>,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub street_address: Option<String>,
    pub ss_number_last4: Option<String>,
    pub private: bool,
}

/// The cases with these ids (those that exist), in no particular order.
pub async fn cases_for_review(
    pool: &PgPool,
    ids: &[i64],
) -> Result<Vec<CaseForReview>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, network_id, household_id, \"group\" AS group_id, created_at, first_name,
                last_name, date_of_birth, street_address, ss_number_last4, private
           FROM cases
          WHERE id = ANY ($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The pairs among `ids` that exist, each with whether it is still open.
pub async fn states(pool: &PgPool, ids: &[i64]) -> Result<Vec<(i64, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, resolved_at IS NULL FROM possible_duplicates WHERE id = ANY ($1) ORDER BY id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await
}

/// The ids of the open pairs of `network`, oldest first.
pub async fn open_ids(pool: &PgPool, network: i64) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT id FROM possible_duplicates
          WHERE network_id = $1 AND resolved_at IS NULL
          ORDER BY id",
    )
    .bind(network)
    .fetch_all(pool)
    .await
}

/// Marks the pairs among `ids` that are still open dismissed, by `operator` for `reason`.
/// Returns the ids it changed: a pair dismissed meanwhile is left as it was.
pub async fn dismiss(
    pool: &PgPool,
    ids: &[i64],
    operator: &str,
    reason: &str,
) -> Result<Vec<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE possible_duplicates
            SET resolution = 'dismissed', resolved_at = now(), resolved_by = $2,
                resolution_reason = $3
          WHERE id = ANY ($1) AND resolved_at IS NULL
      RETURNING id",
    )
    .bind(ids)
    .bind(operator)
    .bind(reason)
    .fetch_all(pool)
    .await
}

/// A network's duplicate policy as stored (`None`: no such network).
pub async fn policy(pool: &PgPool, network: i64) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT duplicate_policy FROM networks WHERE id = $1")
        .bind(network)
        .fetch_optional(pool)
        .await
}

/// Sets a network's duplicate policy; returns the one it replaces (`None`: no such network).
pub async fn set_policy(
    pool: &PgPool,
    network: i64,
    policy: &str,
) -> Result<Option<String>, sqlx::Error> {
    // The self-join reads the row as it was before this statement changed it: the old value,
    // from the same row version the update replaces.
    sqlx::query_scalar(
        "UPDATE networks n SET duplicate_policy = $2
           FROM networks old
          WHERE n.id = $1 AND old.id = n.id
      RETURNING old.duplicate_policy",
    )
    .bind(network)
    .bind(policy)
    .fetch_optional(pool)
    .await
}

/// A case without match keys, with the columns they are computed from.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UnindexedCase {
    pub id: i64,
    pub first_name: String,
    pub last_name: String,
    pub date_of_birth: Option<NaiveDate>,
    pub street_address: Option<String>,
}

/// The next `limit` cases (of `network`, or any) with an id above `after` and neither match
/// key, in id order.
pub async fn unindexed_cases(
    tx: &mut PgConnection,
    network: Option<i64>,
    after: i64,
    limit: i64,
) -> Result<Vec<UnindexedCase>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, first_name, last_name, date_of_birth, street_address
           FROM cases
          WHERE id > $1 AND match_name IS NULL AND match_address IS NULL
            AND ($2::bigint IS NULL OR network_id = $2)
          ORDER BY id
          LIMIT $3",
    )
    .bind(after)
    .bind(network)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
}

/// The match keys computed for one case.
#[derive(Debug, Clone, Copy)]
pub struct CaseKeys {
    pub case_id: i64,
    pub name: Option<i64>,
    pub address: Option<i64>,
}

/// Writes match keys in one statement, only where the case still has neither (a worker that
/// wrote them meanwhile computed the same ones). Returns how many cases it changed.
pub async fn set_match_keys(tx: &mut PgConnection, keys: &[CaseKeys]) -> Result<u64, sqlx::Error> {
    if keys.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "UPDATE cases c SET match_name = u.n, match_address = u.a
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) AS u(id, n, a)
          WHERE c.id = u.id AND c.match_name IS NULL AND c.match_address IS NULL",
    )
    .bind(column(keys, |k| k.case_id))
    .bind(column(keys, |k| k.name))
    .bind(column(keys, |k| k.address))
    .execute(&mut *tx)
    .await?;
    Ok(done.rows_affected())
}
