//! The checks every run ends with, written once for the benchmark and the fault suite: one
//! outcome per key (exactly once), the outcome a key deserves, one event id per key, the
//! household invariant and a drained outbox. Each returns what breaks it (keys, ids, counts),
//! so that a run can show why it failed. Keys published with more than one body (fix and
//! resend, races) are checked by their history instead: every outcome but the current one is
//! a superseded failure.

use std::collections::{HashMap, HashSet};

use case_intake::domain::error::ErrorCode;
use sqlx::PgPool;
use uuid::Uuid;

use crate::ledger::{Arrival, EventLog};

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

/// What the events of a key published with several bodies say: its current outcome event,
/// the failures later attempts superseded (failure event → the event that superseded it) and
/// every rule the history breaks.
#[derive(Debug, Default)]
pub struct History {
    pub current: Option<Uuid>,
    pub superseded: HashMap<Uuid, Uuid>,
    pub problems: Vec<String>,
}

/// A refusal of another body under a key already decided: never the key's outcome.
fn is_refusal(a: &Arrival) -> bool {
    a.failure() == Some(ErrorCode::IdempotencyKeyReused.as_str())
}

/// A failure its sender may supersede with a corrected body.
fn is_resendable(a: &Arrival) -> bool {
    a.event_type == "case.failed"
        && a.code
            .as_deref()
            .and_then(ErrorCode::parse)
            .is_some_and(ErrorCode::resendable)
}

/// The history of one key (its events in arrival order, duplicates included): outcome events
/// (`case.created`, `case.failed`, at most one per publication in `publications`) and
/// refusals (`idempotency_key_reused`, any number); every outcome but one superseded by a later attempt (its
/// `data.replay.supersedes_event_id`), each superseded one a resendable failure superseded
/// once; the one current outcome the one deserved (a case when `deserves_case`, else
/// `validation_failed`); at most one case; and every `case.intake_resolved` naming a failure
/// that a case superseded, each such failure named once.
pub fn history(arrivals: &[Arrival], deserves_case: bool, publications: usize) -> History {
    let mut h = History::default();
    let mut seen = HashSet::new();
    let distinct: Vec<&Arrival> = arrivals.iter().filter(|a| seen.insert(a.id)).collect();
    let outcomes: Vec<&Arrival> = distinct
        .iter()
        .copied()
        .filter(|a| matches!(a.event_type.as_str(), "case.created" | "case.failed"))
        .collect();
    let by_id: HashMap<Uuid, &Arrival> = outcomes.iter().map(|a| (a.id, *a)).collect();
    for a in &outcomes {
        let Some(failure) = a.supersedes else {
            continue;
        };
        match by_id.get(&failure) {
            Some(f) if is_resendable(f) => {}
            Some(_) => h
                .problems
                .push(format!("{} supersedes a non-resendable outcome", a.id)),
            None => h
                .problems
                .push(format!("{} supersedes an unseen event", a.id)),
        }
        if h.superseded.insert(failure, a.id).is_some() {
            h.problems
                .push(format!("failure {failure} superseded twice"));
        }
    }
    let current: Vec<&Arrival> = outcomes
        .iter()
        .copied()
        .filter(|a| !is_refusal(a) && !h.superseded.contains_key(&a.id))
        .collect();
    match current.as_slice() {
        [one] => {
            h.current = Some(one.id);
            if !outcome_as_expected(deserves_case, one.failure()) {
                let got = one.failure().unwrap_or("created");
                h.problems.push(format!("current outcome {got}"));
            }
        }
        more => h.problems.push(format!("{} current outcomes", more.len())),
    }
    let cases = outcomes.iter().filter(|a| a.failure().is_none()).count();
    if cases > 1 {
        h.problems.push(format!("{cases} cases created"));
    }
    // Refusals are left out: a refusal records no outcome, so a redelivered refused body (a
    // worker killed between commit and ack) is refused again under a new event id.
    let decided = outcomes.iter().filter(|a| !is_refusal(a)).count();
    if decided > publications {
        h.problems.push(format!(
            "{decided} outcome events for {publications} publications"
        ));
    }
    resolutions(&distinct, &by_id, &mut h);
    h
}

/// Every `case.intake_resolved` names a failure that a case superseded, and every such
/// failure is named by exactly one; no other event type belongs to a key.
fn resolutions(distinct: &[&Arrival], by_id: &HashMap<Uuid, &Arrival>, h: &mut History) {
    let mut named: HashMap<Uuid, usize> = HashMap::new();
    for a in distinct {
        match a.event_type.as_str() {
            "case.created" | "case.failed" => {}
            "case.intake_resolved" => {
                let by_case = a
                    .resolves
                    .and_then(|f| h.superseded.get(&f))
                    .and_then(|by| by_id.get(by))
                    .is_some_and(|by| by.failure().is_none());
                if by_case {
                    *named.entry(a.resolves.unwrap_or_default()).or_insert(0) += 1;
                } else {
                    h.problems
                        .push(format!("{} resolves no failure a case superseded", a.id));
                }
            }
            other => h.problems.push(format!("unexpected event type {other}")),
        }
    }
    for (failure, by) in &h.superseded {
        let by_case = by_id.get(by).is_some_and(|b| b.failure().is_none());
        let n = named.get(failure).copied().unwrap_or(0);
        if by_case && n != 1 {
            h.problems
                .push(format!("failure {failure} announced resolved {n} times"));
        }
    }
}

/// One failed intake (`failed_intakes`) as the checks read it.
pub struct FailedIntakeRow {
    pub key: String,
    pub event_id: Uuid,
    pub resolution: Option<String>,
    pub resolved_event_id: Option<Uuid>,
}

/// Every failed intake with a key.
pub async fn failed_intake_rows(pool: &PgPool) -> sqlx::Result<Vec<FailedIntakeRow>> {
    type Row = (String, Uuid, Option<String>, Option<Uuid>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT message_key, event_id, resolution, resolved_event_id FROM failed_intakes
          WHERE message_key IS NOT NULL",
    )
    .fetch_all(pool)
    .await?;
    let row = |(key, event_id, resolution, resolved_event_id): Row| FailedIntakeRow {
        key,
        event_id,
        resolution,
        resolved_event_id,
    };
    Ok(rows.into_iter().map(row).collect())
}

/// How a key's failed intakes disagree with its history (`superseded`: failure event → the
/// event that superseded it): a superseded failure must be resolved `resent` by that event;
/// any other failed intake stays open.
pub fn failed_intakes_against(
    superseded: &HashMap<Uuid, Uuid>,
    rows: &[&FailedIntakeRow],
) -> Vec<String> {
    let mut problems = Vec::new();
    for (failure, by) in superseded {
        let row = rows.iter().find(|r| r.event_id == *failure);
        let resolved = row.is_some_and(|r| {
            r.resolution.as_deref() == Some("resent") && r.resolved_event_id == Some(*by)
        });
        if !resolved {
            problems.push(format!("failure {failure} not resolved as resent by {by}"));
        }
    }
    for r in rows {
        if r.resolution.is_some() && !superseded.contains_key(&r.event_id) {
            problems.push(format!("failure {} resolved, not superseded", r.event_id));
        }
    }
    problems
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

    /// A delivery of an event of `key`: `kind` with `code` (a failure), superseding
    /// `supersedes` (a later attempt) or resolving `resolves` (`case.intake_resolved`).
    fn history_event(id: Uuid, kind: &str, code: &str, supersedes: Option<Uuid>) -> Vec<u8> {
        let data = match kind {
            "case.failed" => serde_json::json!({"error": {"code": code}}),
            "case.intake_resolved" => serde_json::json!({"failed_event_id": supersedes}),
            _ => serde_json::json!({"household_id": 9, "household_created": true}),
        };
        let mut data = data;
        if kind != "case.intake_resolved" && supersedes.is_some() {
            data["replay"] = serde_json::json!({"attempt": 2, "how": "resent",
                                                "supersedes_event_id": supersedes});
        }
        serde_json::to_vec(
            &serde_json::json!({"id": id, "type": kind, "subject": "k", "data": data}),
        )
        .unwrap()
    }

    fn log_of(events: &[(Uuid, &str, &str, Option<Uuid>)]) -> EventLog {
        let mut log = EventLog::default();
        for (id, kind, code, sup) in events {
            log.record(&history_event(*id, kind, code, *sup), Instant::now());
        }
        log
    }

    #[test]
    fn a_fixed_and_resent_history_passes() {
        let [f, c, r, x] = [(); 4].map(|_| Uuid::new_v4());
        // The failure (twice), the corrected case, its announcement, a refused old body, and
        // the case again for a duplicate of the corrected body.
        let log = log_of(&[
            (f, "case.failed", "validation_failed", None),
            (f, "case.failed", "validation_failed", None),
            (c, "case.created", "", Some(f)),
            (r, "case.intake_resolved", "", Some(f)),
            (x, "case.failed", "idempotency_key_reused", None),
            (c, "case.created", "", Some(f)),
        ]);
        let h = history(log.arrivals("k"), true, 5);
        assert!(h.problems.is_empty(), "{:?}", h.problems);
        assert_eq!(h.current, Some(c));
        assert_eq!(h.superseded, HashMap::from([(f, c)]));
        // Only the failed body confirmed: the failure is what the key deserves.
        let log = log_of(&[(f, "case.failed", "validation_failed", None)]);
        let h = history(log.arrivals("k"), false, 1);
        assert!(h.problems.is_empty() && h.current == Some(f));
    }

    #[test]
    fn the_history_checks_find_what_breaks_them() {
        let [f, c, d, r, x] = [(); 5].map(|_| Uuid::new_v4());
        let problems = |events: &[(Uuid, &str, &str, Option<Uuid>)], case: bool, n: usize| {
            history(log_of(events).arrivals("k"), case, n).problems
        };
        // A case that supersedes nothing beside the failure: two current outcomes.
        let p = problems(
            &[
                (f, "case.failed", "validation_failed", None),
                (c, "case.created", "", None),
            ],
            true,
            2,
        );
        assert_eq!(p, ["2 current outcomes"]);
        // A created case superseded; the failure superseded twice; two cases.
        let p = problems(
            &[
                (f, "case.failed", "validation_failed", None),
                (c, "case.created", "", Some(f)),
                (d, "case.created", "", Some(f)),
                (r, "case.intake_resolved", "", Some(f)),
            ],
            true,
            3,
        );
        assert!(
            p.contains(&format!("failure {f} superseded twice")),
            "{p:?}"
        );
        assert!(p.contains(&"2 cases created".to_owned()), "{p:?}");
        // A refusal superseded, an announcement of nothing, a missing announcement, too many
        // outcomes, and the wrong current outcome.
        let p = problems(
            &[
                (x, "case.failed", "idempotency_key_reused", None),
                (f, "case.failed", "validation_failed", Some(x)),
                (d, "case.failed", "validation_failed", None),
                (r, "case.intake_resolved", "", Some(c)),
            ],
            true,
            1,
        );
        for want in [
            format!("{f} supersedes a non-resendable outcome"),
            format!("{r} resolves no failure a case superseded"),
            "2 current outcomes".to_owned(),
            "2 outcome events for 1 publications".to_owned(),
        ] {
            assert!(p.contains(&want), "{want} not in {p:?}");
        }
        let p = problems(
            &[
                (f, "case.failed", "validation_failed", None),
                (c, "case.created", "", Some(f)),
            ],
            true,
            2,
        );
        assert_eq!(p, [format!("failure {f} announced resolved 0 times")]);
        // Only refusals: no current outcome.
        let p = problems(
            &[(x, "case.failed", "idempotency_key_reused", None)],
            true,
            1,
        );
        assert_eq!(p, ["0 current outcomes"]);
        // Refusals repeated by redeliveries are no excess.
        let p = problems(
            &[
                (c, "case.created", "", None),
                (x, "case.failed", "idempotency_key_reused", None),
                (d, "case.failed", "idempotency_key_reused", None),
            ],
            true,
            2,
        );
        assert!(p.is_empty(), "{p:?}");
        let p = problems(&[(f, "case.failed", "validation_failed", None)], true, 1);
        assert_eq!(p, ["current outcome validation_failed"]);
    }

    #[test]
    fn failed_intakes_must_follow_the_history() {
        let [f, c, g] = [(); 3].map(|_| Uuid::new_v4());
        let row = |event_id, resolution: Option<&str>, by| FailedIntakeRow {
            key: "k".into(),
            event_id,
            resolution: resolution.map(str::to_owned),
            resolved_event_id: by,
        };
        let superseded = HashMap::from([(f, c)]);
        let good = [row(f, Some("resent"), Some(c)), row(g, None, None)];
        assert!(failed_intakes_against(&superseded, &good.iter().collect::<Vec<_>>()).is_empty());
        // Left open, resolved by another event, or resolved without being superseded.
        let open = [row(f, None, None)];
        assert_eq!(
            failed_intakes_against(&superseded, &open.iter().collect::<Vec<_>>()).len(),
            1
        );
        let other = [row(f, Some("resent"), Some(g))];
        assert_eq!(
            failed_intakes_against(&superseded, &other.iter().collect::<Vec<_>>()).len(),
            1
        );
        let stray = [row(g, Some("replayed"), Some(c))];
        assert_eq!(
            failed_intakes_against(&HashMap::new(), &stray.iter().collect::<Vec<_>>()).len(),
            1
        );
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
