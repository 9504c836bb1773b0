//! The printed report: the summary of the run, the table of figures, and for a failing run what the
//! database holds for the failing keys and the workers' log tails.

use sqlx::Row;
use std::path::Path;

use case_intake_harness::cli;
use case_intake_harness::kinds::Kind;
use case_intake_harness::ledger::lock;
use sqlx::PgPool;

use crate::figures::Figure;
use crate::fleet::Workers;
use crate::logs::{strip_ansi, summarize_logs};
use crate::run::Run;
use crate::{SHOWN_KEYS, elapsed};

/// More about failing keys: what the database holds for them.
pub async fn explain(pool: &PgPool, keys: &[String]) {
    for key in keys.iter().take(SHOWN_KEYS) {
        let key = key.split(' ').next().unwrap_or(key);
        let outcome = sqlx::query(
            "SELECT outcome, case_id, error_code, event_id::text, created_at::text
               FROM intake_outcomes WHERE message_key = $1",
        )
        .bind(key)
        .fetch_optional(pool)
        .await;
        let failed = sqlx::query(
            "SELECT error_code, error::text, attempts, created_at::text
               FROM failed_intakes WHERE message_key = $1 ORDER BY id",
        )
        .bind(key)
        .fetch_all(pool)
        .await;
        println!("    {key}:");
        match outcome {
            Ok(Some(r)) => println!(
                "      outcome {:?} case {:?} code {:?} event {:?} at {:?}",
                r.try_get::<Option<String>, _>(0).ok().flatten(),
                r.try_get::<Option<i64>, _>(1).ok().flatten(),
                r.try_get::<Option<String>, _>(2).ok().flatten(),
                r.try_get::<Option<String>, _>(3).ok().flatten(),
                r.try_get::<Option<String>, _>(4).ok().flatten(),
            ),
            Ok(None) => println!("      no intake_outcomes row"),
            Err(e) => println!("      intake_outcomes: {e}"),
        }
        for r in failed.unwrap_or_default() {
            println!(
                "      failed_intakes {:?} attempts {:?} at {:?}: {}",
                r.try_get::<String, _>(0).unwrap_or_default(),
                r.try_get::<i32, _>(2).ok(),
                r.try_get::<Option<String>, _>(3).ok().flatten(),
                r.try_get::<String, _>(1).unwrap_or_default(),
            );
        }
    }
}

pub fn print_tail(path: &Path, lines: usize) {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            println!(
                "---- last {} lines of {}",
                lines.min(all.len()),
                path.display()
            );
            for l in &all[all.len().saturating_sub(lines)..] {
                println!("{}", strip_ansi(l));
            }
        }
        Err(e) => println!("---- {}: {e}", path.display()),
    }
}

pub fn report(run: &Run, figures: &[Figure], drained: bool) -> bool {
    let mut workers = lock(&run.workers);
    print_summary(run, &workers);
    let passed = print_figures(figures) && drained;
    if !drained {
        println!("drain timed out: the queue or the outbox did not empty in time");
    }
    for (fault, gap) in &run.gaps {
        println!(
            "longest gap in outcomes, {fault}: {:.1} s",
            gap.as_secs_f64()
        );
    }
    for e in &run.fault_errors {
        println!("fault error: {e}");
    }
    for e in &workers.unexpected_exits {
        println!("note: {e}");
    }
    print_log_summary(&workers);
    println!("result: {}", if passed { "PASS" } else { "FAIL" });
    if !passed {
        for path in workers.log_paths() {
            print_tail(&path, 40);
        }
        println!("worker logs kept in {}", workers.dir.display());
    }
    workers.supervise = false;
    passed
}

/// What the run did: faults, worker starts, the intake mix, publishes and events.
pub fn print_summary(run: &Run, workers: &Workers) {
    let ledger = lock(&run.ledger);
    let seen = lock(&run.seen);
    let kinds = |k: Kind| ledger.entries.iter().filter(|e| e.kind == k).count();
    println!();
    println!(
        "case-intake fault-injection suite: seed {}, {:.0} s",
        run.plan.seed,
        elapsed()
    );
    println!("faults injected: {}", cli::listed(&run.injected, " x"));
    println!(
        "worker starts: {} (kills {}, unexpected exits {})",
        workers.starts,
        workers.kills,
        workers.unexpected_exits.len()
    );
    println!(
        "intake mix: {} new households, {} joins, {} head replacements, {} invalid, {} duplicate publishes",
        kinds(Kind::NewHousehold),
        kinds(Kind::Join),
        kinds(Kind::ReplaceHead),
        kinds(Kind::Invalid),
        ledger.duplicates
    );
    let created = |k: Kind| {
        let keys = ledger.entries.iter().filter(|e| e.kind == k);
        keys.filter(|e| seen.arrivals(&e.key).iter().any(|a| a.failure().is_none()))
            .count()
    };
    println!(
        "fix and resend: {} resent keys ({} corrections published, {} ended in a case), {} races ({} ended in a case)",
        kinds(Kind::Resent),
        ledger.corrections,
        created(Kind::Resent),
        kinds(Kind::Race),
        created(Kind::Race)
    );
    let results = lock(&run.operator.results);
    let ran = |k: Kind| results.iter().filter(|r| r.kind == k).count();
    let alone = results
        .iter()
        .filter(|r| r.outcome == "already_resolved")
        .count();
    println!(
        "retry races: {} replay-vs-resend keys ({} replays run after the resend), {} edit-vs-resend keys ({} edits), {alone} of them already_resolved",
        kinds(Kind::ReplayRace),
        ran(Kind::ReplayRace),
        kinds(Kind::EditRace),
        ran(Kind::EditRace),
    );
    println!(
        "publish attempts: {} (re-published after healing: {})",
        cli::listed(ledger.attempt_counts(), " "),
        ledger.republished
    );
    println!(
        "events received: {} deliveries, {} distinct event ids, {} consumer reconnects",
        seen.total,
        seen.event_ids.len(),
        seen.reconnects
    );
}

/// The table of figures; whether every must-be-zero figure is zero.
pub fn print_figures(figures: &[Figure]) -> bool {
    println!();
    println!("{:<56} {:>7}  check", "figure", "value");
    let mut passed = true;
    for f in figures {
        let verdict = if !f.must_be_zero {
            ""
        } else if f.value == 0 {
            "ok"
        } else {
            passed = false;
            "FAIL"
        };
        println!("{:<56} {:>7}  {verdict}", f.name, f.value);
    }
    passed
}

pub fn print_log_summary(workers: &Workers) {
    let summary = summarize_logs(&workers.log_paths());
    if !summary.is_empty() {
        println!("worker log lines (WARN/ERROR), most frequent first:");
        for (n, line) in summary.iter().take(12) {
            println!("  {n:>6}  {line}");
        }
    }
}
