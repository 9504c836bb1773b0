//! The report of a phase: its figures, as printed lines (their names are those of
//! docs/benchmarks.md) and as JSON.

use std::collections::BTreeMap;

use case_intake::infra::settings::Settings;
use case_intake_harness::cli;
use case_intake_harness::latency::Latency;
use serde::Serialize;

use crate::Ctx;
use crate::args::Policy;
use crate::evaluate::{Resources, Tally};
use crate::measure::Measured;
use crate::phases::Phase;

#[derive(Serialize, Default)]
pub struct Outcomes {
    pub created: usize,
    pub failed: BTreeMap<String, usize>,
    pub duplicates: usize,
    pub missing: usize,
    /// Created cases whose event names possible duplicates, by the share of the mix.
    pub flagged: BTreeMap<String, usize>,
}

#[derive(Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Serialize)]
pub struct Report {
    /// This measured phase, 1-based, of `phases`.
    pub phase: usize,
    pub phases: usize,
    /// The measured network's duplicate_policy during the phase.
    pub policy: Policy,
    pub count: usize,
    pub mix: BTreeMap<String, usize>,
    pub workers: usize,
    pub in_process: bool,
    pub window: usize,
    pub prefetch: u16,
    pub consumers: usize,
    pub pool: u32,
    pub window_wait_ms: u64,
    pub rate: Option<f64>,
    pub preload: u64,
    pub households: usize,
    pub hot: usize,
    pub elapsed_s: f64,
    pub intakes_per_s: f64,
    pub publish_per_s: f64,
    pub latency_ms: Option<Latency>,
    pub worker_peak_rss_kib: Vec<u64>,
    pub outcomes: Outcomes,
    pub cpu_cores: BTreeMap<String, f64>,
    pub db_bytes_per_intake: f64,
    /// Server-wide: includes whatever else wrote to this PostgreSQL meanwhile.
    pub wal_bytes_per_intake: f64,
    pub checks: Vec<Check>,
    pub ok: bool,
}

/// The report: the run's settings, its figures and the checks.
#[allow(clippy::too_many_arguments)]
pub fn report_of(
    ctx: &Ctx<'_>,
    phase: &Phase,
    settings: &Settings,
    m: Measured,
    mix: BTreeMap<String, usize>,
    t: Tally,
    used: Resources,
    checks: Vec<Check>,
) -> Report {
    let elapsed = match (m.sent.first(), t.last_arrival) {
        (Some(a), Some(b)) => b.saturating_duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let publish_secs = match (m.sent.first(), m.sent.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let n = m.msgs.len();
    // Publications that got their outcome: all of them unless the run was cut short.
    let done = t.latencies.len().max(1) as f64;
    let per_second = |count: f64, secs: f64| if secs > 0.0 { count / secs } else { 0.0 };
    let ok = checks.iter().all(|c| c.ok);
    Report {
        phase: phase.index,
        phases: phase.of,
        policy: phase.policy,
        count: n,
        mix,
        workers: ctx.args.workers,
        in_process: ctx.args.in_process,
        window: settings.intake.window_size,
        prefetch: settings.amqp.prefetch,
        consumers: settings.intake.consumers,
        pool: settings.database.max_connections,
        window_wait_ms: settings.intake.window_wait_ms,
        rate: ctx.args.rate,
        preload: ctx.args.preload,
        households: ctx.args.households,
        hot: ctx.args.hot,
        elapsed_s: elapsed,
        intakes_per_s: per_second(done, elapsed),
        publish_per_s: per_second(n as f64, publish_secs),
        latency_ms: Latency::of(&t.latencies),
        worker_peak_rss_kib: used.rss,
        outcomes: t.outcomes,
        cpu_cores: m.cpu,
        db_bytes_per_intake: used.db_bytes as f64 / done,
        wal_bytes_per_intake: used.wal_bytes / done,
        checks,
        ok,
    }
}

pub fn print_report(r: &Report) {
    print_setup(r);
    print_figures(r);
    for c in &r.checks {
        println!(
            "check      : {} {}{}",
            if c.ok { "ok    " } else { "FAILED" },
            c.name,
            if c.ok || c.detail.is_empty() {
                String::new()
            } else {
                format!(": {}", c.detail)
            }
        );
    }
    println!("result     : {}", if r.ok { "ok" } else { "FAILED" });
}

/// The first line: what was measured, how.
pub fn print_setup(r: &Report) {
    println!(
        "case-intake-bench: {} intakes ({}); {} {} worker(s); window {}, prefetch {}, \
         consumers {}, pool {}, window wait {} ms; {}; preloaded {} cases; duplicate_policy {}{}",
        r.count,
        cli::listed(&r.mix, " "),
        r.workers,
        if r.in_process {
            "in-process"
        } else {
            "process"
        },
        r.window,
        r.prefetch,
        r.consumers,
        r.pool,
        r.window_wait_ms,
        r.rate
            .map_or("full speed".to_owned(), |x| format!("offered {x}/s")),
        r.preload,
        r.policy.as_str(),
        if r.phases > 1 {
            format!(" (phase {}/{})", r.phase, r.phases)
        } else {
            String::new()
        },
    );
}

/// Throughput, latency, outcomes and resources.
pub fn print_figures(r: &Report) {
    println!(
        "throughput : {:.0} intakes/s end to end ({:.1} s from first publish to last outcome); \
         published at {:.0}/s",
        r.intakes_per_s, r.elapsed_s, r.publish_per_s
    );
    if let Some(l) = &r.latency_ms {
        println!(
            "latency    : publish → event p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms \
             (mean {:.1} ms)",
            l.p50, l.p95, l.p99, l.max, l.mean
        );
    }
    println!(
        "outcomes   : created {}, failed [{}], duplicates {}, missing {}; flagged as possible \
         duplicates [{}]",
        r.outcomes.created,
        cli::listed(&r.outcomes.failed, " "),
        r.outcomes.duplicates,
        r.outcomes.missing,
        cli::listed(&r.outcomes.flagged, " ")
    );
    let rss: Vec<String> = r
        .worker_peak_rss_kib
        .iter()
        .map(|k| format!("{:.1} MiB", *k as f64 / 1024.0))
        .collect();
    println!(
        "peak RSS   : {} ({})",
        rss.join(", "),
        if r.in_process {
            "this process, workers in-process"
        } else {
            "VmHWM of each worker process"
        }
    );
    let cpu = r.cpu_cores.iter().map(|(k, v)| (k, format!("{v:.2}")));
    println!("cpu (cores): {}", cli::listed(cpu, " "));
    println!(
        "database   : {:.0} bytes per intake stored, {:.0} bytes of WAL per intake (server-wide)",
        r.db_bytes_per_intake, r.wal_bytes_per_intake
    );
}
