//! The checks: the figures computed from the database and the events against the ledger; the must-
//! be-zero ones decide the run (names as in docs/faults.md).

use std::collections::HashMap;
use std::collections::HashSet;

use case_intake_harness::checks;
use case_intake_harness::checks::FailedIntakeRow;
use case_intake_harness::checks::OutcomeRow;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;
use case_intake_harness::retry_race;
use sqlx::PgPool;

use crate::Res;
use crate::ledger::{Entry, Ledger, unconfirmed_bodies};
use crate::run::Run;

pub struct Figure {
    pub name: &'static str,
    pub value: usize,
    /// Must be 0 for the run to pass.
    pub must_be_zero: bool,
    /// Keys (or ids) behind a non-zero value, for the post-mortem.
    pub examples: Vec<String>,
}

/// A figure shown for information.
pub fn count(name: &'static str, value: usize) -> Figure {
    Figure {
        name,
        value,
        must_be_zero: false,
        examples: Vec::new(),
    }
}

pub fn figure(name: &'static str, must_be_zero: bool, examples: Vec<String>) -> Figure {
    Figure {
        name,
        value: examples.len(),
        must_be_zero,
        examples,
    }
}

/// What the database holds after the run, as the checks read it.
pub struct Stored {
    pub outcomes: Vec<OutcomeRow>,
    pub failed: Vec<FailedIntakeRow>,
    /// Keys with more than one case, and cases without an outcome.
    pub duplicated: Vec<String>,
    pub bad_households: Vec<i64>,
    pub unpublished: Vec<i64>,
}

pub async fn read_stored(pool: &PgPool) -> Res<Stored> {
    let mut duplicated = checks::keys_with_several_cases(pool).await?;
    let orphans = checks::cases_without_outcome(pool).await?;
    duplicated.extend(orphans.iter().map(|id| format!("case {id} (no outcome)")));
    Ok(Stored {
        outcomes: checks::outcome_rows(pool, None).await?,
        failed: checks::failed_intake_rows(pool).await?,
        duplicated,
        bad_households: checks::households_without_one_head(pool).await?,
        unpublished: checks::unpublished_outbox(pool).await?,
    })
}

/// Runs the shared checks of the database and the events against the ledger.
pub async fn check(run: &Run, unconfirmed: usize) -> Res<Vec<Figure>> {
    let stored = read_stored(&run.setup.pool).await?;
    let retry_failures = retry_race::open_retry_failures_of_cases(&run.setup.pool).await?;
    let ledger = lock(&run.ledger);
    let seen = lock(&run.seen);
    let unconfirmed_keys: Vec<String> = unconfirmed_bodies(&ledger)
        .into_iter()
        .map(|(i, b)| format!("{} (body {b})", ledger.entries[i].key))
        .collect();
    if unconfirmed != usize::MAX && unconfirmed != unconfirmed_keys.len() {
        say!(
            "note: {unconfirmed} unconfirmed at the end of re-publishing, {} now",
            unconfirmed_keys.len()
        );
    }
    let (mut figures, deserved) = outcome_figures(&ledger, &seen, &stored);
    figures.push(figure_of_ids(
        "outbox rows still unpublished",
        &stored.unpublished,
        "outbox",
    ));
    figures.extend(deserved);
    figures.extend(history_figures(&ledger, &seen, &stored));
    figures.push(figure(
        "operator retries acting on a superseded failure",
        true,
        retry_race::retries_that_acted(&lock(&run.operator.results)),
    ));
    figures.push(figure(
        "open retry failures of keys with a case",
        true,
        retry_failures,
    ));
    figures.push(figure(
        "intakes still unconfirmed after healing",
        true,
        unconfirmed_keys,
    ));
    figures.push(longest_gap(&ledger, &seen));
    Ok(figures)
}

/// The longest time from a key's first publish to its first outcome event, over the keys
/// that got one: how long the worst fault held intake up (a figure, not a check).
pub fn longest_gap(ledger: &Ledger, seen: &EventLog) -> Figure {
    let gap = |e: &Entry| {
        let first = seen.arrivals(&e.key).iter().map(|a| a.at).min()?;
        Some((
            first.saturating_duration_since(e.first_sent?),
            e.key.clone(),
        ))
    };
    let worst = ledger.entries.iter().filter_map(gap).max();
    Figure {
        name: "longest gap publish -> first event (ms)",
        value: worst.as_ref().map_or(0, |(d, _)| d.as_millis() as usize),
        must_be_zero: false,
        examples: worst.into_iter().map(|(_, key)| key).collect(),
    }
}

/// Exactly once, per key: every confirmed intake has one outcome with one event id, and
/// nothing else has one; then (second) whether each outcome is the one it deserves.
pub fn outcome_figures(
    ledger: &Ledger,
    seen: &EventLog,
    stored: &Stored,
) -> (Vec<Figure>, Vec<Figure>) {
    let by_key: HashMap<&str, &OutcomeRow> = stored
        .outcomes
        .iter()
        .map(|o| (o.key.as_str(), o))
        .collect();
    let published: Vec<&Entry> = ledger
        .entries
        .iter()
        .filter(|e| !e.attempts.is_empty())
        .collect();
    let ledger_keys: HashSet<&str> = published.iter().map(|e| e.key.as_str()).collect();
    let lost = published
        .iter()
        .filter(|e| e.confirmed() && !by_key.contains_key(e.key.as_str()))
        .map(|e| e.key.clone())
        .collect();
    let unexpected = stored
        .outcomes
        .iter()
        .filter(|o| !ledger_keys.contains(o.key.as_str()))
        .map(|o| o.key.clone())
        .collect();
    let no_event = stored
        .outcomes
        .iter()
        .filter(|o| o.event_id.is_none_or(|id| !seen.event_ids.contains(&id)))
        .map(|o| o.key.clone())
        .collect();
    let (valid_failed, invalid_accepted) = wrong_outcomes(&published, &by_key);
    let deserved = vec![
        figure(
            "valid intakes failed (outage, retries, ...)",
            true,
            valid_failed,
        ),
        figure(
            "invalid intakes not failed as validation_failed",
            true,
            invalid_accepted,
        ),
    ];
    let counted = vec![
        count("intakes published (distinct keys)", published.len()),
        count("outcomes (distinct keys with an outcome row)", by_key.len()),
        figure("lost (confirmed, no outcome)", true, lost),
        figure(
            "duplicated (keys with >1 case, cases without outcome)",
            true,
            stored.duplicated.clone(),
        ),
        figure(
            "unexpected (outcomes for keys never published)",
            true,
            unexpected,
        ),
        figure(
            "keys with more than one outcome (event ids)",
            true,
            several_outcomes(ledger, seen, stored),
        ),
        figure_of_ids(
            "households without exactly one head",
            &stored.bad_households,
            "household",
        ),
        figure("outcomes without a published event", true, no_event),
    ];
    (counted, deserved)
}

/// More than one event id seen for a key of one body (keys of several bodies have their
/// history checked instead), or outcome rows for one key in two namespaces (e.g. an
/// `unauthorized` outcome under network 0 beside the real one).
pub fn several_outcomes(ledger: &Ledger, seen: &EventLog, stored: &Stored) -> Vec<String> {
    let several: HashSet<&str> = ledger
        .entries
        .iter()
        .filter(|e| e.kind.several_bodies())
        .map(|e| e.key.as_str())
        .collect();
    let ids = checks::several_event_ids(seen)
        .into_iter()
        .filter(|(k, _)| !several.contains(k))
        .map(|(k, n)| format!("{k} ({n} event ids)"));
    let rows = checks::several_outcome_rows(&stored.outcomes)
        .into_iter()
        .map(|(k, n)| format!("{k} ({n} outcome rows)"));
    ids.chain(rows).collect()
}

/// Published intakes whose outcome is not the one they deserve: valid ones that failed, and
/// invalid ones not failed as `validation_failed`.
pub fn wrong_outcomes(
    published: &[&Entry],
    by_key: &HashMap<&str, &OutcomeRow>,
) -> (Vec<String>, Vec<String>) {
    let (mut valid_failed, mut invalid_accepted) = (Vec::new(), Vec::new());
    for e in published {
        let Some(o) = by_key.get(e.key.as_str()) else {
            continue;
        };
        if checks::outcome_as_expected(e.deserves_case(), o.error_code.as_deref()) {
            continue;
        }
        if e.deserves_case() {
            let code = o.error_code.as_deref().unwrap_or_default();
            valid_failed.push(format!("{} ({code}, {:?})", e.key, e.kind));
        } else {
            let shown = format!("{} (case {:?}, code {:?})", e.key, o.case_id, o.error_code);
            invalid_accepted.push(shown);
        }
    }
    (valid_failed, invalid_accepted)
}

/// Fix and resend: the keys of several bodies whose history breaks a rule (see
/// [`checks::history`]) or whose outcome row is not its current outcome; and, for every key,
/// failed intakes not resolved as its history says (superseded ones resolved `resent` by the
/// event that superseded them, every other one open).
pub fn history_figures(ledger: &Ledger, seen: &EventLog, stored: &Stored) -> Vec<Figure> {
    let rows: HashMap<&str, &OutcomeRow> = stored
        .outcomes
        .iter()
        .map(|o| (o.key.as_str(), o))
        .collect();
    let mut failed: HashMap<&str, Vec<&FailedIntakeRow>> = HashMap::new();
    for r in &stored.failed {
        failed.entry(r.key.as_str()).or_default().push(r);
    }
    let (mut broken, mut unresolved) = (Vec::new(), Vec::new());
    for e in ledger.entries.iter().filter(|e| !e.attempts.is_empty()) {
        let superseded = if e.kind.several_bodies() {
            let h = checks::history(seen.arrivals(&e.key), e.deserves_case(), e.publications());
            let row = rows.get(e.key.as_str()).and_then(|o| o.event_id);
            let mut problems = h.problems;
            if row != h.current {
                problems.push(format!(
                    "outcome row event {row:?}, current {:?}",
                    h.current
                ));
            }
            if !problems.is_empty() {
                broken.push(format!("{} ({:?}): {}", e.key, e.kind, problems.join("; ")));
            }
            h.superseded
        } else {
            HashMap::new()
        };
        let rows = failed.get(e.key.as_str()).map_or(&[][..], Vec::as_slice);
        let problems = checks::failed_intakes_against(&superseded, rows);
        if !problems.is_empty() {
            unresolved.push(format!("{}: {}", e.key, problems.join("; ")));
        }
    }
    vec![
        figure("resent and raced keys breaking their history", true, broken),
        figure(
            "failed intakes not resolved as the history says",
            true,
            unresolved,
        ),
    ]
}

/// A must-be-zero figure of database ids, shown as `<what> <id>`.
pub fn figure_of_ids(name: &'static str, ids: &[i64], what: &str) -> Figure {
    figure(
        name,
        true,
        ids.iter().map(|i| format!("{what} {i}")).collect(),
    )
}
