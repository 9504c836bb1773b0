//! The checks every run ends with, written once for the benchmark and the fault suite: one
//! outcome per key (exactly once), the outcome a key deserves, one event id per key, the
//! household invariant and a drained outbox. Each returns what breaks it (keys, ids, counts),
//! so that a run can show why it failed.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::EventLog;

/// What one message key was published as, and how many outcome events it is owed.
pub struct Expected<'a> {
    pub key: &'a str,
    /// A valid intake must be created; an invalid one must fail as `validation_failed`.
    pub valid: bool,
    /// Outcome events owed: one per publication known to be in the queue.
    pub owed: usize,
}

/// Whether an outcome (`failure`: its failure code, none for a created case) is the one an
/// intake deserves: valid → created, invalid → `validation_failed`.
pub fn outcome_as_expected(valid: bool, failure: Option<&str>) -> bool {
    if valid {
        failure.is_none()
    } else {
        failure == Some("validation_failed")
    }
}

/// Keys owed more outcome events than arrived.
pub fn short_of_events<'a>(expected: &[Expected<'a>], log: &EventLog) -> Vec<&'a str> {
    expected
        .iter()
        .filter(|e| log.arrivals(e.key).len() < e.owed)
        .map(|e| e.key)
        .collect()
}

/// Events beyond those owed (e.g. an outbox row published twice).
pub fn extra_events(expected: &[Expected<'_>], log: &EventLog) -> usize {
    expected
        .iter()
        .map(|e| log.arrivals(e.key).len().saturating_sub(e.owed))
        .sum()
}

/// Keys that events arrived for but that were never published.
pub fn events_for_unknown_keys(expected: &[Expected<'_>], log: &EventLog) -> usize {
    let known: HashSet<&str> = expected.iter().map(|e| e.key).collect();
    log.by_key
        .keys()
        .filter(|k| !known.contains(k.as_str()))
        .count()
}

/// Keys whose events carry more than one event id (a duplicate must repeat the first one),
/// with the number of ids.
pub fn several_event_ids(log: &EventLog) -> Vec<(&str, usize)> {
    log.by_key
        .iter()
        .filter_map(|(key, arrivals)| {
            let ids: HashSet<Uuid> = arrivals.iter().map(|a| a.id).collect();
            (ids.len() > 1).then_some((key.as_str(), ids.len()))
        })
        .collect()
}

/// Keys whose first event is not the outcome they deserve.
pub fn unexpected_first_events<'a>(expected: &[Expected<'a>], log: &EventLog) -> Vec<&'a str> {
    expected
        .iter()
        .filter(|e| {
            log.arrivals(e.key)
                .first()
                .is_some_and(|a| !outcome_as_expected(e.valid, a.failure()))
        })
        .map(|e| e.key)
        .collect()
}

/// One recorded outcome (`intake_outcomes` with its outcome decided).
pub struct OutcomeRow {
    pub key: String,
    pub case_id: Option<i64>,
    pub error_code: Option<String>,
    pub event_id: Option<Uuid>,
}

/// The recorded outcomes, of network `network` or of all.
pub async fn outcome_rows(pool: &PgPool, network: Option<i64>) -> sqlx::Result<Vec<OutcomeRow>> {
    type Row = (String, Option<i64>, Option<String>, Option<Uuid>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT message_key, case_id, error_code, event_id FROM intake_outcomes
          WHERE outcome IS NOT NULL AND ($1::bigint IS NULL OR network_id = $1)",
    )
    .bind(network)
    .fetch_all(pool)
    .await?;
    let row = |(key, case_id, error_code, event_id): Row| OutcomeRow {
        key,
        case_id,
        error_code,
        event_id,
    };
    Ok(rows.into_iter().map(row).collect())
}

/// Keys with more than one outcome row (e.g. an `unauthorized` outcome under network 0 beside
/// the real one), with the number of rows.
pub fn several_outcome_rows(rows: &[OutcomeRow]) -> Vec<(&str, usize)> {
    let mut per_key: HashMap<&str, usize> = HashMap::new();
    for r in rows {
        *per_key.entry(r.key.as_str()).or_insert(0) += 1;
    }
    per_key.into_iter().filter(|(_, n)| *n > 1).collect()
}

/// Cases of network `network`.
pub async fn cases_in(pool: &PgPool, network: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT count(*) FROM cases WHERE network_id = $1")
        .bind(network)
        .fetch_one(pool)
        .await
}

/// Keys that made more than one case.
pub async fn keys_with_several_cases(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT o.message_key FROM intake_outcomes o JOIN cases c ON c.id = o.case_id
          GROUP BY o.network_id, o.message_key HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
}

/// Cases that no outcome names (made outside the exactly-once claim).
pub async fn cases_without_outcome(pool: &PgPool) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT c.id FROM cases c
          WHERE NOT EXISTS (SELECT 1 FROM intake_outcomes o WHERE o.case_id = c.id)",
    )
    .fetch_all(pool)
    .await
}

/// Households that break the invariant: exactly one head, and it is one of their own cases.
pub async fn households_without_one_head(pool: &PgPool) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT h.id FROM households h
          WHERE (SELECT count(*) FROM cases c
                  WHERE c.household_id = h.id AND c.head_of_household) <> 1
             OR NOT EXISTS (SELECT 1 FROM cases c
                             WHERE c.id = h.head_case_id AND c.household_id = h.id
                               AND c.head_of_household)",
    )
    .fetch_all(pool)
    .await
}

/// Outbox rows not published yet.
pub async fn unpublished_outbox(pool: &PgPool) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn event(id: Uuid, key: &str, kind: &str) -> Vec<u8> {
        let data = if kind == "case.failed" {
            serde_json::json!({"error": {"code": "validation_failed"}})
        } else {
            serde_json::json!({"household_id": 7, "household_created": true})
        };
        serde_json::to_vec(&serde_json::json!({
            "id": id, "type": kind, "subject": key, "data": data
        }))
        .unwrap()
    }

    #[test]
    fn the_checks_find_what_breaks_them() {
        let mut log = EventLog::default();
        let (one, two) = (Uuid::new_v4(), Uuid::new_v4());
        log.record(&event(one, "a", "case.created"), Instant::now());
        log.record(&event(two, "a", "case.created"), Instant::now());
        log.record(&event(one, "b", "case.created"), Instant::now());
        log.record(&event(two, "stray", "case.failed"), Instant::now());
        log.record(b"not json", Instant::now());
        let expected = [
            Expected {
                key: "a",
                valid: true,
                owed: 1,
            },
            Expected {
                key: "b",
                valid: false,
                owed: 1,
            },
            Expected {
                key: "c",
                valid: true,
                owed: 1,
            },
        ];
        assert_eq!(short_of_events(&expected, &log), ["c"]);
        assert_eq!(extra_events(&expected, &log), 1);
        assert_eq!(events_for_unknown_keys(&expected, &log), 1);
        assert_eq!(several_event_ids(&log), [("a", 2)]);
        assert_eq!(unexpected_first_events(&expected, &log), ["b"]);
        assert_eq!((log.total, log.unparsable), (5, 1));
        // A repeated event id (the one of "b") is not a household created again.
        assert_eq!(log.households_created, [7, 7]);
    }

    #[test]
    fn an_outcome_is_expected_by_validity() {
        assert!(outcome_as_expected(true, None));
        assert!(!outcome_as_expected(true, Some("validation_failed")));
        assert!(outcome_as_expected(false, Some("validation_failed")));
        assert!(!outcome_as_expected(false, None));
        assert!(!outcome_as_expected(false, Some("unauthorized")));
    }
}
