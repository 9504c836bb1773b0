//! Evaluating a phase: pairing events with publications, and the exactly-once and household checks,
//! over this phase's keys and every earlier phase's.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use case_intake::infra::settings::Settings;
use case_intake_harness::checks;
use case_intake_harness::checks::Expected;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;

use crate::database::db_size;
use crate::measure::Measured;
use crate::phases::Phase;
use crate::plan::Msg;
use crate::report::{Check, Outcomes, Report, report_of};
use crate::{Ctx, Result};

/// Every publication of a key, in publish order: whether the key's intake is valid, and for
/// each publication the index of the measured message (`None` for the pre-phase).
pub type PerKey<'a> = HashMap<&'a str, (bool, Vec<Option<usize>>)>;

/// The publications of the run by key, and the measured mix by kind.
pub fn publications(m: &Measured) -> (PerKey<'_>, BTreeMap<String, usize>) {
    let mut per_key: PerKey<'_> = HashMap::new();
    for p in &m.prephase {
        per_key.insert(p.key.as_ref(), (true, vec![None]));
    }
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for (i, msg) in m.msgs.iter().enumerate() {
        *mix.entry(msg.mix_name().to_owned()).or_default() += 1;
        per_key
            .entry(msg.key.as_ref())
            .or_insert_with(|| (msg.kind.valid(), Vec::new()))
            .1
            .push(Some(i));
    }
    (per_key, mix)
}

/// What the received events say about the measured publications.
pub struct Tally {
    pub latencies: Vec<Duration>,
    pub outcomes: Outcomes,
    pub last_arrival: Option<Instant>,
}

/// Pairs the n-th event of each key with its n-th publication.
pub fn tally(log: &EventLog, per_key: &PerKey<'_>, msgs: &[Msg], sent: &[Instant]) -> Tally {
    let mut t = Tally {
        latencies: Vec::with_capacity(sent.len()),
        outcomes: Outcomes::default(),
        last_arrival: None,
    };
    for (key, (_, pubs)) in per_key {
        let arrivals = log.arrivals(key);
        for (k, idx) in pubs.iter().enumerate() {
            let Some(idx) = idx else { continue };
            let Some(a) = arrivals.get(k) else {
                t.outcomes.missing += 1;
                continue;
            };
            if let Some(at) = sent.get(*idx) {
                t.latencies.push(a.at.saturating_duration_since(*at));
            }
            t.last_arrival = Some(t.last_arrival.map_or(a.at, |l| l.max(a.at)));
            if k > 0 {
                t.outcomes.duplicates += 1;
            } else if a.event_type == "case.created" {
                t.outcomes.created += 1;
                if a.possible_duplicates > 0
                    && let Some(m) = msgs.get(*idx)
                {
                    *t.outcomes.flagged.entry(m.mix_name().into()).or_default() += 1;
                }
            } else {
                let code = a.code.clone().unwrap_or_else(|| a.event_type.clone());
                *t.outcomes.failed.entry(code).or_default() += 1;
            }
        }
    }
    t
}

/// The checks' verdicts, in report order.
#[derive(Default)]
pub struct Checks(pub Vec<Check>);

impl Checks {
    pub fn add(&mut self, name: &'static str, ok: bool, detail: String) {
        self.0.push(Check { name, ok, detail });
    }
}

pub fn check_finished(checks: &mut Checks, m: &Measured, timeout: u64) {
    let detail = if m.timed_out {
        format!("gave up after {timeout} s")
    } else if m.interrupted {
        "interrupted".into()
    } else {
        String::new()
    };
    checks.add("finished in time", !m.timed_out && !m.interrupted, detail);
}

/// The checks of the events against the publications.
pub fn check_events(
    checks: &mut Checks,
    log: &EventLog,
    expected: &[Expected<'_>],
    missing: usize,
) {
    let mut short = checks::short_of_events(expected, log);
    short.sort_unstable();
    let detail = if short.is_empty() {
        String::new()
    } else {
        format!(
            "{} keys short of events ({missing} measured publications), e.g. {}",
            short.len(),
            short[..short.len().min(5)].join(", ")
        )
    };
    checks.add(
        "an outcome event for every publication",
        short.is_empty(),
        detail,
    );
    let extra = checks::extra_events(expected, log);
    let unexpected = checks::events_for_unknown_keys(expected, log);
    let unparsable = log.unparsable;
    checks.add(
        "no extra events",
        extra == 0 && unexpected == 0 && unparsable == 0,
        format!("{extra} extra, {unexpected} for unknown keys, {unparsable} unparsable"),
    );
    let known: HashSet<&str> = expected.iter().map(|e| e.key).collect();
    let multi_id = checks::several_event_ids(log)
        .iter()
        .filter(|(k, _)| known.contains(k))
        .count();
    checks.add(
        "one distinct event id per key (duplicates repeat it)",
        multi_id == 0,
        format!("{multi_id} keys with more than one event id"),
    );
    let wrong = checks::unexpected_first_events(expected, log).len();
    checks.add(
        "outcome as expected (valid → created, invalid → validation_failed)",
        wrong == 0,
        format!("{wrong} keys with an unexpected outcome"),
    );
}

/// The checks of what the database holds (beyond what the preload put there).
pub async fn check_database(
    checks: &mut Checks,
    ctx: &Ctx<'_>,
    expected: &[Expected<'_>],
) -> Result<()> {
    let network = ctx.net.network_id;
    let valid_keys = expected.iter().filter(|e| e.valid).count() as i64;
    let cases = checks::cases_in(ctx.pool, network).await? - ctx.preloaded.cases;
    checks.add(
        "cases = distinct valid keys",
        cases == valid_keys,
        format!("{cases} cases beyond the preload, {valid_keys} distinct valid keys"),
    );
    let recorded =
        checks::outcome_rows(ctx.pool, Some(network)).await?.len() - ctx.preloaded.outcomes;
    checks.add(
        "one recorded outcome per distinct key",
        recorded == expected.len(),
        format!(
            "{recorded} outcomes beyond the preload, {} distinct keys",
            expected.len()
        ),
    );
    let unpublished = checks::unpublished_outbox(ctx.pool).await?.len();
    checks.add(
        "outbox drained",
        unpublished == 0,
        format!("{unpublished} unpublished rows"),
    );
    let bad = checks::households_without_one_head(ctx.pool).await?.len();
    checks.add(
        "every household has exactly one head, its own case",
        bad == 0,
        format!("{bad} households violate it"),
    );
    Ok(())
}

/// A key of an earlier phase and the outcome events it is owed.
pub struct Owed {
    pub key: String,
    pub valid: bool,
    pub owed: usize,
}

/// Matches events to messages, computes the figures and runs the checks; the checks also
/// cover the keys of earlier phases (`prior`), to which this phase's keys are then added.
pub async fn evaluate(
    ctx: &Ctx<'_>,
    phase: &Phase,
    settings: &Settings,
    m: Measured,
    rss: Vec<u64>,
    stopped: Vec<String>,
    prior: &mut Vec<Owed>,
) -> Result<Report> {
    let mut checks = Checks::default();
    check_finished(&mut checks, &m, ctx.args.timeout);
    let (per_key, mix) = publications(&m);
    let mut expected: Vec<Expected<'_>> = prior
        .iter()
        .map(|o| Expected {
            key: &o.key,
            valid: o.valid,
            owed: o.owed,
        })
        .collect();
    expected.extend(per_key.iter().map(|(key, (valid, pubs))| Expected {
        key,
        valid: *valid,
        owed: pubs.len(),
    }));
    let t = {
        let log = lock(ctx.ledger);
        let t = tally(&log, &per_key, &m.msgs, &m.sent);
        check_events(&mut checks, &log, &expected, t.outcomes.missing);
        t
    };
    check_database(&mut checks, ctx, &expected).await?;
    checks.add(
        "workers stopped cleanly on SIGTERM",
        stopped.is_empty(),
        stopped.join("; "),
    );
    let db_bytes_after = db_size(ctx.pool).await?;
    let wal: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&m.wal_before)
            .fetch_one(ctx.pool)
            .await?;
    let used = Resources {
        rss,
        db_bytes: db_bytes_after - m.db_bytes_before,
        wal_bytes: wal,
    };
    let this_phase: Vec<Owed> = per_key
        .iter()
        .map(|(key, (valid, pubs))| Owed {
            key: (*key).to_owned(),
            valid: *valid,
            owed: pubs.len(),
        })
        .collect();
    drop(expected);
    drop(per_key);
    let report = report_of(ctx, phase, settings, m, mix, t, used, checks.0);
    prior.extend(this_phase);
    Ok(report)
}

/// What the measured phase used: the workers' peak memory, and the bytes it added to the
/// database and to the WAL.
pub struct Resources {
    pub rss: Vec<u64>,
    pub db_bytes: i64,
    pub wal_bytes: f64,
}
