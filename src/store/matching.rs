//! Possible-duplicate matching in the database: the network's policy, the locks that keep two
//! windows from both missing the same person, the one candidate lookup per window, and the
//! flagged pairs (`possible_duplicates`).
//!
//! Scoped like every statement the pipeline calls: a probe carries the caller's network (and
//! group, for private cases), and only that network's cases are candidates.

use sqlx::PgConnection;

use crate::domain::matching::Rule;
use crate::store::ids::NetworkId;
use crate::store::unnest::column;

/// What a network does with an intake that matches an existing client (`networks.duplicate_policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DuplicatePolicy {
    /// No matching.
    Off,
    /// Create the case and flag the pairs (`possible_duplicates`, and the event says so).
    #[default]
    Flag,
    /// Fail `possible_duplicate` unless the sender overrides.
    Reject,
    /// No new case: the key's outcome is the best candidate (`case.matched`).
    Link,
}

impl DuplicatePolicy {
    pub const ALL: [DuplicatePolicy; 4] = [Self::Off, Self::Flag, Self::Reject, Self::Link];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Flag => "flag",
            Self::Reject => "reject",
            Self::Link => "link",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// One intake's lookup: its network and group, and its keys.
#[derive(Debug, Clone)]
pub struct Probe {
    pub network_id: NetworkId,
    pub group_id: i64,
    pub ssn_hmac: Option<[u8; 32]>,
    pub name: Option<i64>,
    pub address: Option<i64>,
}

/// An existing case found for probe `probe`, with the rules it matched.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub probe: usize,
    pub case_id: i64,
    pub household_id: i64,
    pub rules: Vec<Rule>,
}

/// Candidates kept per intake at most: enough for an administrator, bounded for a common name.
pub const MAX_CANDIDATES: i64 = 10;

/// Takes the transaction-scoped advisory locks of `keys` (sorted and distinct, so that
/// concurrent windows take them in one order and cannot deadlock). A window that could match
/// a person another running window is writing waits for that window's commit, then sees its
/// case: two intakes of one person in two windows at once cannot both miss each other.
pub async fn lock_keys(tx: &mut PgConnection, keys: &[i64]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "SELECT count(pg_advisory_xact_lock(k))
           FROM unnest($1::bigint[]) WITH ORDINALITY AS u(k, o)",
    )
    .bind(keys)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// The existing cases each probe matches, in one statement: cases of the probe's network
/// with the same SSN HMAC, name key or address key, a private case only for an intake of the
/// case's own group. Each rule contributes its oldest [`MAX_CANDIDATES`] cases through its
/// index (network, key, id), so a key shared by thousands of cases costs a bounded read;
/// which rules a found case matches is then read off the case itself. A probe without a key
/// skips that rule's scan (the `IS NOT NULL` is a one-time filter per probe). With realistic
/// data each rule is an index scan on `(network_id, key, id)` that stops after the limit; were
/// one key value on most rows (statistics that skewed come from test data, not people),
/// PostgreSQL could prefer walking the primary key instead.
pub async fn candidates(
    tx: &mut PgConnection,
    probes: &[Probe],
) -> Result<Vec<Found>, sqlx::Error> {
    if probes.is_empty() {
        return Ok(Vec::new());
    }
    let index: Vec<i32> = (0..probes.len() as i32).collect();
    let rows: Vec<(i32, i64, i64, bool, bool, bool)> = sqlx::query_as(
        "SELECT u.i, c.id, c.household_id,
                coalesce(c.ss_number_hmac = u.ssn, false),
                coalesce(c.match_name = u.name, false),
                coalesce(c.match_address = u.address, false)
           FROM unnest($1::int[], $2::bigint[], $3::bigint[], $4::bytea[], $5::bigint[],
                       $6::bigint[]) AS u(i, n, g, ssn, name, address)
          CROSS JOIN LATERAL (
                SELECT DISTINCT f.id FROM (
                    (SELECT id FROM cases
                      WHERE u.ssn IS NOT NULL AND network_id = u.n AND ss_number_hmac = u.ssn
                        AND (NOT private OR \"group\" = u.g)
                      ORDER BY id LIMIT $7)
                    UNION ALL
                    (SELECT id FROM cases
                      WHERE u.name IS NOT NULL AND network_id = u.n AND match_name = u.name
                        AND (NOT private OR \"group\" = u.g)
                      ORDER BY id LIMIT $7)
                    UNION ALL
                    (SELECT id FROM cases
                      WHERE u.address IS NOT NULL AND network_id = u.n AND match_address = u.address
                        AND (NOT private OR \"group\" = u.g)
                      ORDER BY id LIMIT $7)) f) m
           JOIN cases c ON c.id = m.id",
    )
    .bind(&index)
    .bind(column(probes, |p| p.network_id))
    .bind(column(probes, |p| p.group_id))
    .bind(column(probes, |p| p.ssn_hmac.map(|h| h.to_vec())))
    .bind(column(probes, |p| p.name))
    .bind(column(probes, |p| p.address))
    .bind(MAX_CANDIDATES)
    .fetch_all(&mut *tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(i, case_id, household_id, ssn, name, address)| {
            let rules = [
                (ssn, Rule::Ssn),
                (name, Rule::NameDob),
                (address, Rule::LastNameDobAddress),
            ]
            .into_iter()
            .filter_map(|(hit, rule)| hit.then_some(rule))
            .collect();
            Found {
                probe: i as usize,
                case_id,
                household_id,
                rules,
            }
        })
        .collect())
}

/// A flagged pair to record.
#[derive(Debug, Clone)]
pub struct PairRow {
    pub network_id: NetworkId,
    pub case_id: i64,
    pub candidate_case_id: i64,
    pub rules: Vec<Rule>,
    pub score: f64,
    pub overridden: bool,
    pub message_key: Option<String>,
    pub event_id: uuid::Uuid,
}

/// Records a window's flagged pairs in one statement.
pub async fn insert_pairs(tx: &mut PgConnection, rows: &[PairRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    // Rules travel as one comma-joined text per row (arrays of arrays must be rectangular).
    let rules: Vec<String> = rows
        .iter()
        .map(|r| {
            let names: Vec<&str> = r.rules.iter().map(|x| x.as_str()).collect();
            names.join(",")
        })
        .collect();
    sqlx::query(
        "INSERT INTO possible_duplicates (network_id, case_id, candidate_case_id, rules, score,
                                          overridden, message_key, event_id)
         SELECT n, c, cand, string_to_array(r, ','), s, o, k, e
           FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::real[],
                       $6::bool[], $7::text[], $8::uuid[]) AS u(n, c, cand, r, s, o, k, e)
         ON CONFLICT (case_id, candidate_case_id) DO NOTHING",
    )
    .bind(column(rows, |r| r.network_id))
    .bind(column(rows, |r| r.case_id))
    .bind(column(rows, |r| r.candidate_case_id))
    .bind(&rules)
    .bind(column(rows, |r| r.score as f32))
    .bind(column(rows, |r| r.overridden))
    .bind(column(rows, |r| r.message_key.as_deref()))
    .bind(column(rows, |r| r.event_id))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
