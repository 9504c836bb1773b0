//! `case-intake-bench`: end-to-end throughput and latency benchmark of the worker (RabbitMQ →
//! PostgreSQL → outbox → events) on its own database, queue and exchange, followed by the
//! exactly-once and household checks. Results and method: docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use case_intake::admin::provision::{self, Provisioned};
use case_intake::app::supervisor;
use case_intake::infra::db as service_db;
use case_intake::infra::settings::Settings;
use case_intake::intake::matching::MatchKeys;
use case_intake::outbox::topology;
use case_intake::store::crypto::{Purpose, Vault};
use case_intake_harness::broker;
use case_intake_harness::checks::{self, Expected};
use case_intake_harness::cli::{self, BoxError};
use case_intake_harness::db;
use case_intake_harness::kinds::{self, Flaw, Kind};
use case_intake_harness::ledger::{EventLog, SharedLog, lock};
use case_intake_harness::people::Person;
use case_intake_harness::workers::{self, End, RunningWorker, WorkerCommand};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sqlx::types::chrono::NaiveDate;
use sqlx::{PgPool, Postgres, Transaction};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Benchmark of the case-intake worker on a private database, queue and exchange.
#[derive(Parser, Debug)]
#[command(
    name = "case-intake-bench",
    version,
    about = "End-to-end benchmark of the case-intake worker on its own database, queue and exchange"
)]
struct Args {
    /// Intakes published in the measured phase (re-published duplicates included).
    #[arg(long, default_value_t = 100_000)]
    count: usize,
    /// Offered load in intakes per second; full speed (pipelined confirms) when absent.
    #[arg(long)]
    rate: Option<f64>,
    /// Worker processes (or in-process workers with --in-process).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Run `case_intake::app::supervisor::run` inside this process instead of spawning `case-intake`.
    #[arg(long)]
    in_process: bool,
    /// intake.window_size of the workers.
    #[arg(long)]
    window: Option<usize>,
    /// amqp.prefetch of the workers (default: the built-in one, raised to --window if lower).
    #[arg(long)]
    prefetch: Option<u16>,
    /// intake.consumers of each worker.
    #[arg(long)]
    consumers: Option<usize>,
    /// database.max_connections of each worker.
    #[arg(long)]
    pool: Option<u32>,
    /// Any other worker setting, SECTION.KEY=VALUE (repeatable), e.g. outbox.batch_size=1000.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    set: Vec<String>,
    /// The benchmark's own database; dropped and recreated unless --keep-db.
    #[arg(long, default_value = "case_intake_bench")]
    db: String,
    /// PostgreSQL server URL, without a database name.
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// RabbitMQ URL.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp: String,
    /// Neither drop the database at start nor at the end.
    #[arg(long)]
    keep_db: bool,
    /// Give up waiting for outcome events after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Also print the report as one JSON line.
    #[arg(long)]
    json: bool,
    /// Cases inserted directly with SQL into the measured network before measuring, each a
    /// distinct made-up person (SSN, names, date of birth, address, matching keys).
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// The measured network's duplicate_policy: off or flag (reject and link would need the
    /// checks to know which intakes must fail or link, so the benchmark refuses them).
    #[arg(long, default_value = "flag", value_parser = parse_policy)]
    policy: Policy,
    /// Measure alternately with the policy off and flag, on the same database and preload:
    /// --rounds pairs of measured phases (off, flag, then flag, off, …), then their ratio.
    #[arg(long)]
    alternate_policy: bool,
    /// With --alternate-policy: pairs of measured phases (default 3).
    #[arg(long)]
    rounds: Option<usize>,
    /// Households created before measuring (not measured), target of joins and replacements.
    #[arg(long, default_value_t = 200)]
    households: usize,
    /// How many of those households receive the head replacements.
    #[arg(long, default_value_t = 8)]
    hot: usize,
    /// Percentages of the measured messages by kind; new households are the rest. `duplicate`
    /// re-publishes an earlier message (same key); `person` is a new key whose body is a person
    /// already on file (preloaded or earlier in the phase), written differently.
    #[arg(long, default_value = "join=20,replace=13,invalid=2,duplicate=5,person=0", value_parser = parse_mix)]
    mix: Mix,
    /// Publisher confirms outstanding at most.
    #[arg(long, default_value_t = 1000)]
    outstanding: usize,
    /// Seed of the message mix (random when absent).
    #[arg(long)]
    seed: Option<u64>,
    /// The worker binary (default: `case-intake` next to this executable).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Only delete the queues and exchange left by run ID (a run killed with SIGKILL), then
    /// exit.
    #[arg(long, value_name = "ID")]
    cleanup: Option<String>,
}

/// One message to publish.
#[derive(Clone)]
struct Msg {
    key: Arc<str>,
    body: Arc<[u8]>,
    /// For a duplicate: the kind of the message it repeats.
    kind: Kind,
    /// The made-up person of the body (`people::Person::of`); for an invalid intake, none.
    person: Option<u64>,
    /// An identical re-publication of an earlier message.
    duplicate: bool,
}

impl Msg {
    /// The name of the share of the mix this message belongs to.
    fn mix_name(&self) -> &'static str {
        if self.duplicate {
            "duplicate"
        } else {
            self.kind.name()
        }
    }
}

/// Why waiting for events cannot go on.
fn wait_broken(ctx: &Ctx<'_>, workers: &mut Workers) -> Result<(), String> {
    if ctx.stop.is_cancelled() {
        return Err("interrupted".into());
    }
    if lock(ctx.ledger).closed {
        return Err(
            "the events tap lost its broker connection (closed by someone else?): \
                    the run is void"
                .into(),
        );
    }
    workers.check_alive()
}

/// Publisher progress, read by the progress line.
#[derive(Default)]
struct Progress {
    published: AtomicUsize,
    confirmed: AtomicUsize,
}

/// The broker objects of this run.
struct Names {
    intake: String,
    events: String,
    tap: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit_code_of("case-intake-bench", ExitCode::from(2), run(args))
}

/// Shares of the message kinds, in percent (new households: the rest).
#[derive(Debug, Clone, Copy, Serialize)]
struct Mix {
    join: f64,
    replace: f64,
    invalid: f64,
    duplicate: f64,
    person: f64,
}

/// The measured network's `duplicate_policy` that the benchmark supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Policy {
    Off,
    Flag,
}

impl Policy {
    fn as_str(self) -> &'static str {
        match self {
            Policy::Off => "off",
            Policy::Flag => "flag",
        }
    }
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    match s {
        "off" => Ok(Policy::Off),
        "flag" => Ok(Policy::Flag),
        "reject" | "link" => Err(format!(
            "{s} is not supported by the benchmark: its checks expect every valid intake to \
             create a case, and do not know which intakes {s} would turn away; use off or flag"
        )),
        other => Err(format!("unknown policy {other}: use off or flag")),
    }
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        join: 0.0,
        replace: 0.0,
        invalid: 0.0,
        duplicate: 0.0,
        person: 0.0,
    };
    for part in s.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part}: expected KIND=PERCENT"))?;
        let v: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("{part}: not a number"))?;
        if !(0.0..=100.0).contains(&v) {
            return Err(format!("{part}: a percentage is 0 to 100"));
        }
        match k.trim() {
            "join" => mix.join = v,
            "replace" => mix.replace = v,
            "invalid" => mix.invalid = v,
            "duplicate" => mix.duplicate = v,
            "person" => mix.person = v,
            other => {
                return Err(format!(
                    "unknown kind {other}: use join, replace, invalid, duplicate, person"
                ));
            }
        }
    }
    if mix.join + mix.replace + mix.invalid + mix.duplicate + mix.person > 100.0 {
        return Err("the percentages add up to more than 100".into());
    }
    Ok(mix)
}

fn check_args(args: &Args) -> Result<()> {
    if args.count == 0 || args.workers == 0 || args.households == 0 || args.outstanding == 0 {
        return Err("--count, --workers, --households and --outstanding must be positive".into());
    }
    if args.hot == 0 || args.hot > args.households {
        return Err("--hot must be between 1 and --households".into());
    }
    if args.rounds == Some(0) {
        return Err("--rounds must be positive".into());
    }
    if args.rounds.is_some() && !args.alternate_policy {
        return Err("--rounds goes with --alternate-policy".into());
    }
    if args.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
        return Err("--rate must be a positive number".into());
    }
    if args.db.is_empty()
        || !args
            .db
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        return Err("--db must be made of lowercase letters, digits and underscores".into());
    }
    Ok(())
}

/// The worker settings this run changes, as (section, key, value).
fn overrides(args: &Args, db_url: &str, names: &Names) -> Result<Vec<(String, String, String)>> {
    let mut o: Vec<(String, String, String)> = Vec::new();
    let mut put = |s: &str, k: &str, v: String| o.push((s.into(), k.into(), v));
    put("database", "url", db_url.to_owned());
    put("database", "create_database", "false".into());
    put("amqp", "url", args.amqp.clone());
    put("amqp", "intake_queue", names.intake.clone());
    put("amqp", "events_exchange", names.events.clone());
    put("log", "filter", "warn".into());
    put("log", "format", "text".into());
    // Several workers on one machine: no health/metrics server (it would fight over a port).
    put("http", "address", String::new());
    if let Some(w) = args.window {
        put("intake", "window_size", w.to_string());
    }
    match (args.prefetch, args.window) {
        (Some(p), _) => put("amqp", "prefetch", p.to_string()),
        // The worker refuses a window larger than the prefetch.
        (None, Some(w)) if w > 400 => put("amqp", "prefetch", w.min(u16::MAX as usize).to_string()),
        _ => {}
    }
    if let Some(c) = args.consumers {
        put("intake", "consumers", c.to_string());
        if args.pool.is_none() && c + 1 > 10 {
            put("database", "max_connections", (c + 2).to_string());
        }
    }
    if let Some(p) = args.pool {
        put("database", "max_connections", p.to_string());
    }
    for s in &args.set {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| format!("--set {s}: expected SECTION.KEY=VALUE"))?;
        let (section, key) = path
            .split_once('.')
            .ok_or_else(|| format!("--set {s}: expected SECTION.KEY=VALUE"))?;
        put(section, key, value.to_owned());
    }
    Ok(o)
}

/// The overrides as a TOML file for `Settings::load` (later entries win).
fn toml_of(overrides: &[(String, String, String)]) -> String {
    let mut sections: BTreeMap<&str, BTreeMap<&str, &str>> = BTreeMap::new();
    for (s, k, v) in overrides {
        sections.entry(s).or_default().insert(k, v);
    }
    let mut out = String::new();
    for (section, keys) in sections {
        out.push_str(&format!("[{section}]\n"));
        for (k, v) in keys {
            let raw =
                v.parse::<i64>().is_ok() || v.parse::<f64>().is_ok() || v == "true" || v == "false";
            let value = if raw {
                (*v).to_owned()
            } else {
                serde_json::to_string(v).unwrap_or_default()
            };
            out.push_str(&format!("{k} = {value}\n"));
        }
    }
    out
}

async fn run(args: Args) -> Result<bool> {
    check_args(&args)?;
    if let Some(id) = &args.cleanup {
        let conn = broker::connect(&args.amqp, None).await?;
        cleanup_broker(&conn, &names_of(id)).await;
        let _ = conn.close(200, "OK".into()).await;
        eprintln!("deleted the broker objects of run {id}");
        return Ok(true);
    }
    let stop = stop_on_signal();
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = names_of(&id);
    let db_url = db::database_url(&args.pg, &args.db);
    let overrides = overrides(&args, &db_url, &names)?;
    let settings = load_settings(&id, &overrides)?;
    let worker_bin = workers::worker_binary(args.worker_bin.as_deref())?;
    if !args.in_process && !worker_bin.exists() {
        return Err(format!(
            "worker binary {} not found: build it with `cargo build --release --bins`",
            worker_bin.display()
        )
        .into());
    }
    announce(&args, &id, &names, &settings);
    let (pool, net, preloaded) = open_database(&args, &id, &settings).await?;
    let bus = open_broker(&args, &names, &settings).await?;

    let ctx = Ctx {
        args: &args,
        id: &id,
        net: &net,
        names: &names,
        publish: &bus.publish,
        ledger: &bus.ledger,
        pool: &pool,
        stop: &stop,
        preloaded,
        seed: args.seed.unwrap_or_else(rand::random),
    };
    let start = WorkerStart {
        settings: &settings,
        overrides: &overrides,
        bin: &worker_bin,
    };
    let result = all_phases(&ctx, &start).await;
    tear_down(&args, &names, bus, pool).await;
    result
}

/// How each measured phase starts its workers.
struct WorkerStart<'a> {
    settings: &'a Settings,
    overrides: &'a [(String, String, String)],
    bin: &'a std::path::Path,
}

/// One measured phase: its place in the run, its policy and its people.
#[derive(Debug, Clone, Copy)]
struct Phase {
    /// 1-based.
    index: usize,
    of: usize,
    policy: Policy,
}

/// The policy of each measured phase: --policy once, or with --alternate-policy pairs of off
/// and flag in the order off, flag, flag, off, off, flag, … so that a drift during the run
/// (the database growing by each phase's cases) weighs on both policies alike.
fn phase_policies(args: &Args) -> Vec<Policy> {
    if !args.alternate_policy {
        return vec![args.policy];
    }
    (0..args.rounds.unwrap_or(3))
        .flat_map(|r| {
            if r % 2 == 0 {
                [Policy::Off, Policy::Flag]
            } else {
                [Policy::Flag, Policy::Off]
            }
        })
        .collect()
}

/// Runs every measured phase on the same database, each with fresh workers (which read the
/// network's policy anew); the checks of a phase cover every earlier phase too.
async fn all_phases(ctx: &Ctx<'_>, start: &WorkerStart<'_>) -> Result<bool> {
    let policies = phase_policies(ctx.args);
    let mut prior: Vec<Owed> = Vec::new();
    let mut results: Vec<(Policy, f64, bool)> = Vec::new();
    for (i, policy) in policies.iter().enumerate() {
        let phase = Phase {
            index: i + 1,
            of: policies.len(),
            policy: *policy,
        };
        set_policy(ctx.pool, ctx.net.network_id, phase.policy).await?;
        if phase.of > 1 {
            eprintln!(
                "phase {}/{}: duplicate_policy {}",
                phase.index,
                phase.of,
                phase.policy.as_str()
            );
        }
        let mut workers = Workers::start(ctx.args, start.settings, start.overrides, start.bin)?;
        let report =
            measure_and_report(ctx, &phase, start.settings, &mut workers, &mut prior).await?;
        results.push((phase.policy, report.intakes_per_s, report.ok));
        if ctx.stop.is_cancelled() {
            break;
        }
    }
    if policies.len() > 1 {
        print_comparison(&results, ctx.args.json)?;
    }
    Ok(results.iter().all(|(_, _, ok)| *ok) && results.len() == policies.len())
}

/// The off/flag comparison of an alternating run.
#[derive(Serialize)]
struct Comparison {
    phases: Vec<ComparedPhase>,
    off_mean_per_s: f64,
    flag_mean_per_s: f64,
    /// flag / off of the means.
    ratio: f64,
    ok: bool,
}

#[derive(Serialize)]
struct ComparedPhase {
    policy: Policy,
    intakes_per_s: f64,
    ok: bool,
}

fn print_comparison(results: &[(Policy, f64, bool)], json: bool) -> Result<()> {
    let mean = |p: Policy| {
        let v: Vec<f64> = results.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let (off, flag) = (mean(Policy::Off), mean(Policy::Flag));
    let c = Comparison {
        phases: results
            .iter()
            .map(|(policy, intakes_per_s, ok)| ComparedPhase {
                policy: *policy,
                intakes_per_s: *intakes_per_s,
                ok: *ok,
            })
            .collect(),
        off_mean_per_s: off,
        flag_mean_per_s: flag,
        ratio: if off > 0.0 { flag / off } else { 0.0 },
        ok: results.iter().all(|r| r.2),
    };
    println!("comparison : phase  policy  intakes/s  checks");
    for (i, p) in c.phases.iter().enumerate() {
        println!(
            "comparison : {:>5}  {:<6}  {:>9.0}  {}",
            i + 1,
            p.policy.as_str(),
            p.intakes_per_s,
            if p.ok { "ok" } else { "FAILED" }
        );
    }
    println!(
        "comparison : mean off {off:.0}/s, mean flag {flag:.0}/s, flag/off {:.3}",
        c.ratio
    );
    if json {
        println!("{}", serde_json::json!({ "comparison": c }));
    }
    Ok(())
}

/// Cancelled by SIGINT or SIGTERM.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let cancel = stop.clone();
    tokio::spawn(async move {
        if supervisor::wait_for_signal().await.is_ok() {
            eprintln!("signal: stopping the workers and cleaning up");
            cancel.cancel();
        }
    });
    stop
}

/// The workers' settings as they will load them: through a TOML file of the overrides.
fn load_settings(id: &str, overrides: &[(String, String, String)]) -> Result<Settings> {
    let config_path = std::env::temp_dir().join(format!("case-intake-bench-{id}.toml"));
    std::fs::write(&config_path, toml_of(overrides))?;
    let loaded = Settings::load(Some(&config_path));
    let _ = std::fs::remove_file(&config_path);
    Ok(loaded?)
}

fn announce(args: &Args, id: &str, names: &Names, settings: &Settings) {
    eprintln!(
        "bench {id}: database {}, queue {}, exchange {}; {} {} worker(s), window {}, prefetch {}, \
         consumers {}, pool {}",
        args.db,
        names.intake,
        names.events,
        args.workers,
        if args.in_process {
            "in-process"
        } else {
            "process"
        },
        settings.intake.window_size,
        settings.amqp.prefetch,
        settings.intake.consumers,
        settings.database.max_connections,
    );
}

/// The benchmark's database: fresh (unless --keep-db), migrated, provisioned, preloaded.
async fn open_database(
    args: &Args,
    id: &str,
    settings: &Settings,
) -> Result<(PgPool, Provisioned, Preloaded)> {
    if !args.keep_db {
        db::drop_database(&args.pg, &args.db).await?;
    }
    let mut bench_db = settings.database.clone();
    bench_db.max_connections = 4;
    bench_db.statement_timeout_ms = 600_000;
    bench_db.create_database = true;
    let pool = service_db::migrate(&bench_db).await?;
    let net = provision::provision(
        &pool,
        &format!("bench {id}"),
        "Bench agency",
        "bench agent",
        &["Kings".into(), "Queens".into()],
    )
    .await?;
    let mut preloaded = Preloaded {
        count: args.preload,
        ..Preloaded::default()
    };
    if args.preload > 0 {
        // Into the measured network: matching looks up the caller's network only.
        let vault = Vault::from_settings(&settings.crypto)?;
        preloaded.first_person = preload(&pool, &net, vault, args.preload).await?;
    }
    preloaded.cases = checks::cases_in(&pool, net.network_id).await?;
    preloaded.outcomes = checks::outcome_rows(&pool, Some(net.network_id))
        .await?
        .len();
    Ok((pool, net, preloaded))
}

/// Sets the measured network's duplicate policy (read by workers started afterwards).
async fn set_policy(pool: &PgPool, network: i64, policy: Policy) -> Result<()> {
    sqlx::query("UPDATE networks SET duplicate_policy = $1 WHERE id = $2")
        .bind(policy.as_str())
        .bind(network)
        .execute(pool)
        .await?;
    Ok(())
}

/// The run's broker side: a publishing and a consuming connection, the events tap.
struct Bus {
    publishing: Connection,
    consuming: Connection,
    publish: Channel,
    ledger: SharedLog,
    tap: JoinHandle<()>,
}

/// Declares the topology and binds the events tap before any worker can publish.
async fn open_broker(args: &Args, names: &Names, settings: &Settings) -> Result<Bus> {
    let name = Some("case-intake-bench");
    let publishing = broker::connect(&args.amqp, name).await?;
    let consuming = broker::connect(&args.amqp, name).await?;
    {
        topology::declare(&publishing, &settings.amqp).await?;
    }
    let ledger = SharedLog::default();
    let tap = start_tap(&consuming, names, ledger.clone()).await?;
    let publish = broker::confirming_channel(&publishing).await?;
    Ok(Bus {
        publishing,
        consuming,
        publish,
        ledger,
        tap,
    })
}

/// Measures, stops the workers, runs the checks (of this phase's keys and `prior`'s) and
/// prints the report; adds this phase's keys to `prior`.
async fn measure_and_report(
    ctx: &Ctx<'_>,
    phase: &Phase,
    settings: &Settings,
    workers: &mut Workers,
    prior: &mut Vec<Owed>,
) -> Result<Report> {
    let measured = measure(ctx, phase, workers).await;
    let rss = workers.peak_rss_kib();
    eprintln!("stopping workers");
    let stopped = workers.stop().await;
    let report = evaluate(ctx, phase, settings, measured?, rss, stopped, prior).await?;
    print_report(&report);
    if ctx.args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(report)
}

/// Cleanup, whatever happened.
async fn tear_down(args: &Args, names: &Names, bus: Bus, pool: PgPool) {
    bus.tap.abort();
    cleanup_broker(&bus.publishing, names).await;
    let _ = bus.publishing.close(200, "OK".into()).await;
    let _ = bus.consuming.close(200, "OK".into()).await;
    pool.close().await;
    if !args.keep_db
        && let Err(e) = db::drop_database(&args.pg, &args.db).await
    {
        eprintln!("case-intake-bench: dropping the database failed: {e}");
    }
}

fn names_of(id: &str) -> Names {
    Names {
        intake: format!("bench.{id}.intake"),
        events: format!("bench.{id}.events"),
        tap: format!("bench.{id}.events.tap"),
    }
}

/// What the phases share.
struct Ctx<'a> {
    args: &'a Args,
    id: &'a str,
    net: &'a Provisioned,
    names: &'a Names,
    publish: &'a Channel,
    ledger: &'a SharedLog,
    pool: &'a PgPool,
    /// Cancelled by SIGINT or SIGTERM: stop, then clean up as usual.
    stop: &'a CancellationToken,
    preloaded: Preloaded,
    /// The seed of the message mix, the same for every phase.
    seed: u64,
}

/// Rows of one preload chunk: cases `c0..c0+n`, households `h0..h0+households`.
struct Chunk {
    c0: i64,
    h0: i64,
    n: i64,
    households: i64,
}

/// What the preloaded cases share: the network and the vault's key id.
struct PreloadCase<'a> {
    p: &'a Provisioned,
    key_id: &'a str,
}

/// The made-up people of the preload, and what the network held once they were in.
#[derive(Debug, Clone, Copy, Default)]
struct Preloaded {
    /// Person number of the first preloaded case (`people::Person::of`).
    first_person: u64,
    count: u64,
    /// Cases and recorded outcomes of the measured network before any measured phase.
    cases: i64,
    outcomes: usize,
}

/// Takes `n` consecutive person numbers from the bench database's own sequence: every case a
/// run writes, preloaded or published, is a distinct person unless it is meant to be the same
/// (the `person` kind), also across runs on a kept database.
async fn reserve_people(pool: &PgPool, n: u64) -> Result<u64> {
    let mut tx = pool.begin().await?;
    sqlx::query("CREATE SEQUENCE IF NOT EXISTS bench_people MINVALUE 0 START 0")
        .execute(&mut *tx)
        .await?;
    let first = reserve_ids(&mut tx, "bench_people", n as i64).await?;
    tx.commit().await?;
    Ok(first as u64)
}

/// Inserts `total` cases (two per household, the first its head) with their households and
/// outcomes into the network `p`, in chunks, straight with SQL; returns the first person number.
/// The next chunk's people (sealing, HMAC and matching keys, CPU-bound) are computed on a
/// blocking thread while PostgreSQL inserts the current one.
async fn preload(pool: &PgPool, p: &Provisioned, vault: Vault, total: u64) -> Result<u64> {
    const CHUNK: u64 = 50_000;
    let started = Instant::now();
    let first_person = reserve_people(pool, total).await?;
    let vault = Arc::new(vault);
    let compute = |person0: u64, n: u64| {
        let vault = vault.clone();
        tokio::task::spawn_blocking(move || PeopleColumns::of(&vault, person0, n as usize))
    };
    let case = PreloadCase {
        p,
        key_id: vault.active_key(),
    };
    let mut next = Some(compute(first_person, CHUNK.min(total)));
    let mut done = 0u64;
    while let Some(computing) = next.take() {
        let columns = computing.await?;
        let n = columns.first.len() as u64;
        let after = done + n;
        if after < total {
            next = Some(compute(first_person + after, CHUNK.min(total - after)));
        }
        preload_chunk(pool, &case, &columns).await?;
        done = after;
        eprintln!(
            "preload: {done}/{total} cases ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    let inserted = started.elapsed().as_secs_f64();
    sqlx::raw_sql("VACUUM (ANALYZE) cases, households, intake_outcomes")
        .execute(pool)
        .await?;
    eprintln!(
        "preload: {total} cases inserted in {inserted:.1} s, done in {:.1} s (vacuumed and \
         analyzed)",
        started.elapsed().as_secs_f64()
    );
    Ok(first_person)
}

/// One transaction of the preload: the cases of `columns`, their households and outcomes.
async fn preload_chunk(
    pool: &PgPool,
    case: &PreloadCase<'_>,
    columns: &PeopleColumns,
) -> Result<()> {
    let n = columns.first.len() as i64;
    let households = (n + 1) / 2;
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL statement_timeout = 0")
        .execute(&mut *tx)
        .await?;
    let chunk = Chunk {
        c0: reserve_ids(&mut tx, "cases_id_seq", n).await?,
        h0: reserve_ids(&mut tx, "households_id_seq", households).await?,
        n,
        households,
    };
    preload_cases(&mut tx, case, &chunk, columns).await?;
    sqlx::query(HOUSEHOLDS_SQL)
        .bind(case.p.network_id)
        .bind(chunk.c0)
        .bind(chunk.h0)
        .bind(chunk.households)
        .execute(&mut *tx)
        .await?;
    sqlx::query(OUTCOMES_SQL)
        .bind(case.p.network_id)
        .bind(chunk.c0)
        .bind(chunk.n)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Takes `n` consecutive ids of `sequence`; returns the first.
async fn reserve_ids(tx: &mut Transaction<'_, Postgres>, sequence: &str, n: i64) -> Result<i64> {
    let first: i64 = sqlx::query_scalar("SELECT nextval($1::regclass)")
        .bind(sequence)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query("SELECT setval($1::regclass, $2)")
        .bind(sequence)
        .bind(first + n - 1)
        .execute(&mut **tx)
        .await?;
    Ok(first)
}

/// The columns of one chunk's people, bound as arrays and inserted with one `unnest`.
#[derive(Default)]
struct PeopleColumns {
    first: Vec<String>,
    last: Vec<String>,
    dob: Vec<NaiveDate>,
    street: Vec<String>,
    sealed: Vec<Vec<u8>>,
    hmac: Vec<Vec<u8>>,
    last4: Vec<String>,
    match_name: Vec<Option<i64>>,
    match_address: Vec<Option<i64>>,
}

impl PeopleColumns {
    /// People `person0..person0+n`, with the SSN sealed and hashed and the matching keys
    /// computed as the service computes them.
    fn of(vault: &Vault, person0: u64, n: usize) -> Self {
        let mut c = PeopleColumns::default();
        for k in 0..n as u64 {
            let person = Person::of(person0 + k);
            let street = person.street_address();
            let keys = MatchKeys::from_parts(
                person.first_name(),
                person.last_name,
                Some(person.date_of_birth),
                Some(&street),
            );
            c.sealed
                .push(vault.seal(Purpose::Ssn, person.ssn.as_bytes()));
            c.hmac.push(vault.ssn_hmac(&person.ssn).to_vec());
            c.last4.push(person.ssn[5..].to_owned());
            c.first.push(person.first_name().to_owned());
            c.last.push(person.last_name.to_owned());
            c.dob.push(person.date_of_birth);
            c.street.push(street);
            c.match_name.push(keys.name);
            c.match_address.push(keys.address);
        }
        c
    }
}

async fn preload_cases(
    tx: &mut Transaction<'_, Postgres>,
    case: &PreloadCase<'_>,
    chunk: &Chunk,
    c: &PeopleColumns,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO cases (id, network_id, household_id, head_of_household, entry_agent,
                            mod_agent, \"group\", first_name, last_name, date_of_birth, email,
                            mailing_address, mailing_city, mailing_state, mailing_zip_code,
                            street_address, street_city, street_state, street_zip_code,
                            street_county, yearly_expenses, yearly_income, ss_number_sealed,
                            ss_number_key_id, ss_number_hmac, ss_number_last4, match_name,
                            match_address)
         SELECT $1 + u.g - 1, $2, $3 + (u.g - 1) / 2, (u.g - 1) % 2 = 0, $4, $4, $5, u.first,
                u.last, u.dob, 'pre' || ($1 + u.g - 1) || '@example.org', u.street,
                'Exampleville', 'NY', '12345', u.street, 'Exampleville', 'NY', '12345', $6,
                11580, 15350, u.sealed, $7, u.hmac, u.last4, u.match_name, u.match_address
           FROM unnest($8::text[], $9::text[], $10::date[], $11::text[], $12::bytea[],
                       $13::bytea[], $14::text[], $15::int8[], $16::int8[])
                WITH ORDINALITY AS u(first, last, dob, street, sealed, hmac, last4, match_name,
                                     match_address, g)",
    )
    .bind(chunk.c0)
    .bind(case.p.network_id)
    .bind(chunk.h0)
    .bind(case.p.agent_id)
    .bind(case.p.group_id)
    .bind(case.p.county_ids[0])
    .bind(case.key_id)
    .bind(&c.first)
    .bind(&c.last)
    .bind(&c.dob)
    .bind(&c.street)
    .bind(&c.sealed)
    .bind(&c.hmac)
    .bind(&c.last4)
    .bind(&c.match_name)
    .bind(&c.match_address)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The preloaded households: $1 network, $2 first case, $3 first household, $4 households.
const HOUSEHOLDS_SQL: &str = "INSERT INTO households (id, network_id, head_case_id)
     SELECT $3 + j, $1, $2 + 2 * j FROM generate_series(0::bigint, $4 - 1) AS j";

/// The preloaded cases' outcomes, from the cases just inserted: $1 network, $2 first case,
/// $3 cases.
const OUTCOMES_SQL: &str = "INSERT INTO intake_outcomes (network_id, message_key, payload_hash,
                                  outcome, case_id, event_id, event, routing_key)
     SELECT $1, 'preload-' || c.id, sha256(convert_to('preload-' || c.id, 'UTF8')),
            'created', c.id, gen_random_uuid(),
            jsonb_build_object('specversion', '1.0', 'type', 'case.created',
                'source', 'urn:case-intake', 'subject', 'preload-' || c.id,
                'data', jsonb_build_object('id', c.id, 'household_id', c.household_id,
                    'first_name', c.first_name, 'last_name', c.last_name,
                    'street_address', c.street_address, 'street_city', c.street_city,
                    'street_state', c.street_state, 'street_zip_code', c.street_zip_code)),
            'case.created'
       FROM cases c
      WHERE c.id >= $2 AND c.id < $2 + $3";

/// Binds a private queue to every routing key of the events exchange (declared with the
/// topology) and records every event into `ledger`.
async fn start_tap(conn: &Connection, names: &Names, ledger: SharedLog) -> Result<JoinHandle<()>> {
    let ch = conn.create_channel().await?;
    broker::declare_private_queue(&ch, &names.tap).await?;
    broker::bind_all_events(&ch, &names.tap, &names.events).await?;
    let no_ack = BasicConsumeOptions {
        no_ack: true,
        ..Default::default()
    };
    let mut consumer = ch
        .basic_consume(
            names.tap.as_str().into(),
            "case-intake-bench".into(),
            no_ack,
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let _channel = ch;
        while let Some(Ok(delivery)) = consumer.next().await {
            let at = Instant::now();
            lock(&ledger).record(&delivery.data, at);
        }
        lock(&ledger).closed = true;
    }))
}

async fn cleanup_broker(conn: &Connection, names: &Names) {
    let taps = [names.tap.as_str()];
    for problem in broker::delete_run_objects(conn, &names.intake, &names.events, &taps).await {
        eprintln!("case-intake-bench: {problem}");
    }
}

/// The workers under test.
enum Workers {
    Processes(Vec<Child>),
    InProcess(Vec<RunningWorker>),
}

impl Workers {
    fn start(
        args: &Args,
        settings: &Settings,
        overrides: &[(String, String, String)],
        bin: &std::path::Path,
    ) -> Result<Self> {
        if args.in_process {
            case_intake::app::telemetry::init(&settings.log);
            let workers = (0..args.workers)
                .map(|_| RunningWorker::start(settings))
                .collect();
            return Ok(Workers::InProcess(workers));
        }
        let command = WorkerCommand {
            bin: bin.to_owned(),
            env: overrides
                .iter()
                .map(|(s, k, v)| (workers::setting_env(s, k), v.clone()))
                .collect(),
            inherit_rust_log: true,
        };
        let mut children = Vec::with_capacity(args.workers);
        for _ in 0..args.workers {
            match command.spawn(Stdio::null(), Stdio::inherit()) {
                Ok(c) => children.push(c),
                Err(e) => {
                    // Drop kills the ones already started.
                    drop(Workers::Processes(children));
                    return Err(format!("starting {}: {e}", bin.display()).into());
                }
            }
        }
        Ok(Workers::Processes(children))
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Workers::Processes(c) => c.iter().map(Child::id).collect(),
            Workers::InProcess(_) => Vec::new(),
        }
    }

    /// An error if a worker has exited before being asked to.
    fn check_alive(&mut self) -> Result<(), String> {
        match self {
            Workers::Processes(children) => {
                for c in children.iter_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        return Err(format!("worker {} exited early: {status}", c.id()));
                    }
                }
            }
            Workers::InProcess(workers) => {
                if workers.iter().any(|w| w.handle.is_finished()) {
                    return Err("an in-process worker stopped early".into());
                }
            }
        }
        Ok(())
    }

    /// Peak resident set (VmHWM) of each worker process, or of this process when in-process.
    fn peak_rss_kib(&self) -> Vec<u64> {
        match self {
            Workers::Processes(c) => c
                .iter()
                .filter_map(|c| workers::peak_rss_kib(c.id()))
                .collect(),
            Workers::InProcess(_) => workers::peak_rss_kib(std::process::id())
                .into_iter()
                .collect(),
        }
    }

    /// SIGTERM, then waits up to 60 s (SIGKILL after that); describes any unclean exit.
    async fn stop(&mut self) -> Vec<String> {
        match self {
            Workers::Processes(children) => {
                let stopped = workers::stop_processes(children, Duration::from_secs(60)).await;
                stopped.iter().flat_map(unclean_stop).collect()
            }
            Workers::InProcess(running) => workers::stop_in_process(std::mem::take(running)).await,
        }
    }
}

/// What was unclean about how a worker process stopped.
fn unclean_stop(s: &workers::Stopped) -> Vec<String> {
    let mut problems = Vec::new();
    if !s.signalled {
        problems.push(format!("could not signal worker {}", s.pid));
    }
    match &s.end {
        End::Exited(status) if !status.success() => {
            problems.push(format!("worker {} exited: {status}", s.pid));
        }
        End::Exited(_) => {}
        End::Killed(_) => problems.push(format!("worker {} killed after 60 s", s.pid)),
    }
    problems
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Workers::Processes(children) = self {
            workers::kill_running(children);
        }
    }
}

/// A valid body (the seed's example) of made-up person `n`, head of a new household or not.
fn body_of(n: u64, county: i64, household: Option<i64>, head: bool) -> serde_json::Value {
    let mut body = kinds::intake_body(county, "", head, household);
    Person::of(n).apply(&mut body);
    body
}

fn msg(key: String, body: &serde_json::Value, kind: Kind, person: Option<u64>) -> Msg {
    Msg {
        key: key.into(),
        body: serde_json::to_vec(body).unwrap_or_default().into(),
        kind,
        person,
        duplicate: false,
    }
}

/// Where a phase's messages come from: the households to join, and the made-up people.
struct Source<'a> {
    households: &'a [i64],
    /// Person number of the phase's first measured message (message `i` is `people0 + i`).
    people0: u64,
    /// People whose case the phase (or the preload) created: the `person` kind's originals.
    on_file: Vec<u64>,
}

/// The measured messages, by default ~60% new households, ~20% joins, ~13% head replacements
/// on the hot households, ~2% invalid, ~5% identical re-publications of an earlier key; with
/// `person=P`, P% new keys for a person already on file.
fn plan(ctx: &Ctx<'_>, phase: &Phase, rng: &mut StdRng, source: &mut Source<'_>) -> Vec<Msg> {
    let mut msgs: Vec<Msg> = Vec::with_capacity(ctx.args.count);
    for _ in 0..ctx.args.count {
        let m = plan_one(ctx, phase, rng, source, &msgs);
        if m.kind.valid()
            && m.kind != Kind::SamePerson
            && !m.duplicate
            && let Some(p) = m.person
        {
            source.on_file.push(p);
        }
        msgs.push(m);
    }
    msgs
}

/// Message `earlier.len()` of the measured phase, drawn by the mix.
fn plan_one(
    ctx: &Ctx<'_>,
    phase: &Phase,
    rng: &mut StdRng,
    source: &Source<'_>,
    earlier: &[Msg],
) -> Msg {
    let i = earlier.len();
    let households = source.households;
    let counties = &ctx.net.county_ids;
    let hot = &households[..ctx.args.hot.min(households.len())];
    let key = format!("bench-{}-{}-{i}", ctx.id, phase.index);
    let county = counties[rng.random_range(0..counties.len())];
    // A person of their own, distinct from every other of the run and of the preload.
    let person = source.people0 + i as u64;
    let roll: f64 = rng.random::<f64>() * 100.0;
    let mix = ctx.args.mix;
    let new_household = |key: String| {
        msg(
            key,
            &body_of(person, county, None, true),
            Kind::NewHousehold,
            Some(person),
        )
    };
    if roll < mix.duplicate && i > 0 {
        let original = earlier[rng.random_range(0..i)].clone();
        Msg {
            duplicate: true,
            ..original
        }
    } else if roll < mix.duplicate + mix.person {
        match same_person(ctx, rng, &source.on_file) {
            Some(p) => {
                let mut body = kinds::intake_body(county, "", true, None);
                Person::of(p).apply_varied(&mut body, rng.random());
                msg(key, &body, Kind::SamePerson, Some(p))
            }
            None => new_household(key),
        }
    } else if roll < mix.duplicate + mix.person + mix.invalid {
        let mut body = body_of(person, county, None, true);
        let flaw = if i.is_multiple_of(2) {
            Flaw::MissingLastName
        } else {
            Flaw::ShortZipCode
        };
        kinds::spoil(&mut body, flaw);
        msg(key, &body, Kind::Invalid, None)
    } else if roll < mix.duplicate + mix.person + mix.invalid + mix.replace {
        let h = hot[rng.random_range(0..hot.len())];
        let body = body_of(person, county, Some(h), true);
        msg(key, &body, Kind::ReplaceHead, Some(person))
    } else if roll < mix.duplicate + mix.person + mix.invalid + mix.replace + mix.join {
        let h = households[rng.random_range(0..households.len())];
        let body = body_of(person, county, Some(h), false);
        msg(key, &body, Kind::Join, Some(person))
    } else {
        new_household(key)
    }
}

/// A person already on file for the `person` kind: preloaded or created earlier in the
/// phase, half and half when both exist.
fn same_person(ctx: &Ctx<'_>, rng: &mut StdRng, on_file: &[u64]) -> Option<u64> {
    let pre = ctx.preloaded;
    let preloaded = pre.count > 0 && (on_file.is_empty() || rng.random_bool(0.5));
    if preloaded {
        Some(pre.first_person + rng.random_range(0..pre.count))
    } else if on_file.is_empty() {
        None
    } else {
        Some(on_file[rng.random_range(0..on_file.len())])
    }
}

/// Publishes `msgs` in order with pipelined publisher confirms (at most `outstanding`
/// unconfirmed), at `rate` per second if given; returns when each was handed to the client.
async fn publish_all(
    channel: Channel,
    queue: String,
    msgs: Arc<Vec<Msg>>,
    headers: FieldTable,
    rate: Option<f64>,
    outstanding: usize,
    progress: Arc<Progress>,
) -> Result<Vec<Instant>, String> {
    let mut sent = Vec::with_capacity(msgs.len());
    let mut pending = VecDeque::with_capacity(outstanding);
    let settle = |c: lapin::Result<lapin::Confirmation>| -> Result<(), String> {
        let c = c.map_err(|e| format!("publisher confirm: {e}"))?;
        if let Some(problem) = broker::confirm_problem(c) {
            return Err(problem.into());
        }
        progress.confirmed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    };
    let start = tokio::time::Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        if let Some(r) = rate {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / r)).await;
        }
        while pending.len() >= outstanding {
            if let Some(c) = pending.pop_front() {
                settle(c.await)?;
            }
        }
        let props = broker::keyed_intake(&m.key, headers.clone());
        sent.push(Instant::now());
        let confirm = broker::publish_intake(&channel, &queue, &m.body, props)
            .await
            .map_err(|e| format!("publish: {e}"))?;
        progress.published.fetch_add(1, Ordering::Relaxed);
        pending.push_back(confirm);
    }
    while let Some(c) = pending.pop_front() {
        settle(c.await)?;
    }
    Ok(sent)
}

/// CPU time (clock ticks) of the processes that matter, and of the whole machine.
#[derive(Default)]
struct CpuSnap {
    at: Option<Instant>,
    machine_busy: u64,
    machine_total: u64,
    procs: HashMap<u32, (Role, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Role {
    Bench,
    Workers,
    Postgres,
    Rabbitmq,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Bench => "bench",
            Role::Workers => "workers",
            Role::Postgres => "postgres",
            Role::Rabbitmq => "rabbitmq",
        }
    }
}

fn proc_ticks(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name.
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// Busy and total clock ticks of the whole machine (the first line of /proc/stat).
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.get(..8)?.iter().sum();
    Some((total - v[3] - v[4], total))
}

/// The ids of the running processes.
fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The role of process `pid`, if it is one that matters.
fn role_of(pid: u32, workers: &[u32]) -> Option<Role> {
    if pid == std::process::id() {
        return Some(Role::Bench);
    }
    if workers.contains(&pid) {
        return Some(Role::Workers);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()?
        .trim()
    {
        "postgres" => Some(Role::Postgres),
        "beam.smp" => Some(Role::Rabbitmq),
        _ => None,
    }
}

fn cpu_snapshot(workers: &[u32]) -> CpuSnap {
    let mut snap = CpuSnap {
        at: Some(Instant::now()),
        ..Default::default()
    };
    if let Some((busy, total)) = machine_ticks() {
        (snap.machine_busy, snap.machine_total) = (busy, total);
    }
    for pid in all_pids() {
        if let Some(role) = role_of(pid, workers)
            && let Some(t) = proc_ticks(pid)
        {
            snap.procs.insert(pid, (role, t));
        }
    }
    snap
}

/// Cores used by each role between two snapshots (USER_HZ is 100 on Linux).
fn cores_used(a: &CpuSnap, b: &CpuSnap) -> BTreeMap<String, f64> {
    let wall = match (a.at, b.at) {
        (Some(x), Some(y)) => y.duration_since(x).as_secs_f64().max(1e-3),
        _ => return BTreeMap::new(),
    };
    let mut ticks: BTreeMap<Role, u64> = BTreeMap::new();
    for (pid, (role, t)) in &b.procs {
        let before = a.procs.get(pid).map_or(0, |(_, t)| *t);
        *ticks.entry(*role).or_default() += t.saturating_sub(before);
    }
    let mut out: BTreeMap<String, f64> = ticks
        .into_iter()
        .map(|(r, t)| (r.name().to_owned(), t as f64 / 100.0 / wall))
        .collect();
    let total = b.machine_total.saturating_sub(a.machine_total) as f64;
    if total > 0.0 {
        let busy = b.machine_busy.saturating_sub(a.machine_busy) as f64;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let machine = busy / total * cpus;
        // Whatever else ran meanwhile (builds, other services) competes for the same cores.
        let known: f64 = out.values().sum();
        out.insert("other".into(), (machine - known).max(0.0));
        out.insert("machine".into(), machine);
    }
    out
}

/// What the measured phase produced.
struct Measured {
    prephase: Vec<Msg>,
    msgs: Vec<Msg>,
    sent: Vec<Instant>,
    cpu: BTreeMap<String, f64>,
    timed_out: bool,
    interrupted: bool,
    db_bytes_before: i64,
    wal_before: String,
}

async fn wal_lsn(pool: &PgPool) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?)
}

async fn db_size(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT pg_database_size(current_database())")
            .fetch_one(pool)
            .await?,
    )
}

/// Creates the household pool (not measured), then publishes and waits for the measured phase.
async fn measure(ctx: &Ctx<'_>, phase: &Phase, workers: &mut Workers) -> Result<Measured> {
    let args = ctx.args;
    // Every phase draws the same mix: phases of an alternating run differ by policy only.
    let seed = ctx.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let headers = broker::token_headers(&ctx.net.token);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let people0 = reserve_people(ctx.pool, (args.households + args.count) as u64).await?;
    let (prephase, households) = prephase(ctx, phase, workers, &headers, people0, deadline).await?;
    let base_total = lock(ctx.ledger).total;

    let mut source = Source {
        households: &households,
        people0: people0 + args.households as u64,
        on_file: Vec::new(),
    };
    let msgs = Arc::new(plan(ctx, phase, &mut rng, &mut source));
    let db_bytes_before = db_size(ctx.pool).await?;
    let wal_before = wal_lsn(ctx.pool).await?;
    eprintln!(
        "measuring: {} intakes {}",
        msgs.len(),
        args.rate
            .map_or("at full speed".to_owned(), |r| format!("at {r}/s"))
    );
    let progress = Arc::new(Progress::default());
    let pids = workers.pids();
    let cpu_start = cpu_snapshot(&pids);
    let publisher = tokio::spawn(publish_all(
        ctx.publish.clone(),
        ctx.names.intake.clone(),
        msgs.clone(),
        headers,
        args.rate,
        args.outstanding,
        progress.clone(),
    ));
    let watched = Watch {
        base_total,
        expected: msgs.len(),
        deadline,
        progress: &progress,
    };
    let end = watch(ctx, workers, publisher, &watched).await?;
    let cpu_end = cpu_snapshot(&pids);
    // Late or extra events (a re-published outbox row) would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Measured {
        prephase,
        msgs: Arc::unwrap_or_clone(msgs),
        sent: end.sent,
        cpu: cores_used(&cpu_start, &cpu_end),
        timed_out: end.timed_out,
        interrupted: end.interrupted,
        db_bytes_before,
        wal_before,
    })
}

/// Pre-phase: households that joins and head replacements refer to; returns their messages
/// and ids.
async fn prephase(
    ctx: &Ctx<'_>,
    phase: &Phase,
    workers: &mut Workers,
    headers: &FieldTable,
    people0: u64,
    deadline: Instant,
) -> Result<(Vec<Msg>, Vec<i64>)> {
    let counties = &ctx.net.county_ids;
    let prephase: Vec<Msg> = (0..ctx.args.households)
        .map(|j| {
            let county = counties[j % counties.len()];
            let person = people0 + j as u64;
            let body = body_of(person, county, None, true);
            let key = format!("bench-{}-{}-h{j}", ctx.id, phase.index);
            msg(key, &body, Kind::NewHousehold, Some(person))
        })
        .collect();
    eprintln!(
        "pre-phase: creating {} households (seed {})",
        prephase.len(),
        ctx.seed
    );
    // Events of earlier phases are in the ledger too.
    let before = lock(ctx.ledger).total;
    publish_all(
        ctx.publish.clone(),
        ctx.names.intake.clone(),
        Arc::new(prephase.clone()),
        headers.clone(),
        None,
        ctx.args.outstanding,
        Arc::default(),
    )
    .await?;
    await_events(ctx, workers, before + prephase.len(), deadline).await?;
    let households: Vec<i64> = {
        let l = lock(ctx.ledger);
        prephase
            .iter()
            .filter_map(|m| l.arrivals(&m.key).first().and_then(|a| a.household_id))
            .collect()
    };
    if households.len() != prephase.len() {
        return Err(format!(
            "only {} of {} pre-phase households were created",
            households.len(),
            prephase.len()
        )
        .into());
    }
    Ok((prephase, households))
}

/// Waits until `n` events arrived.
async fn await_events(
    ctx: &Ctx<'_>,
    workers: &mut Workers,
    n: usize,
    deadline: Instant,
) -> Result<()> {
    loop {
        wait_broken(ctx, workers)?;
        if lock(ctx.ledger).total >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(
                "timed out waiting for the pre-phase events (is the worker running?)".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the watch of the measured phase goes by.
struct Watch<'a> {
    /// Events received before the measured phase.
    base_total: usize,
    /// Outcome events the measured phase is owed.
    expected: usize,
    deadline: Instant,
    progress: &'a Progress,
}

/// How the measured phase ended.
struct WatchEnd {
    sent: Vec<Instant>,
    timed_out: bool,
    interrupted: bool,
}

/// Watches the measured phase until every outcome arrived (or the deadline, or a signal),
/// printing a progress line every second.
async fn watch(
    ctx: &Ctx<'_>,
    workers: &mut Workers,
    publisher: JoinHandle<Result<Vec<Instant>, String>>,
    w: &Watch<'_>,
) -> Result<WatchEnd> {
    let mut publisher = Some(publisher);
    let mut end = WatchEnd {
        sent: Vec::new(),
        timed_out: false,
        interrupted: false,
    };
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    let mut last = (t0, 0usize);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.stop.cancelled() => end.interrupted = true,
        }
        ticks += 1;
        let outcomes = lock(ctx.ledger).total - w.base_total;
        if ticks.is_multiple_of(10) {
            print_progress(t0, &mut last, outcomes, w);
        }
        if publisher.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = publisher.take()
        {
            end.sent = handle.await??;
        }
        if end.interrupted || (publisher.is_none() && outcomes >= w.expected) {
            break;
        }
        if Instant::now() > w.deadline {
            end.timed_out = true;
            break;
        }
        if let Err(e) = wait_broken(ctx, workers) {
            if let Some(handle) = publisher.take() {
                handle.abort();
            }
            return Err(e.into());
        }
    }
    match publisher {
        None => Ok(end),
        Some(handle) => {
            handle.abort();
            Err(cut_short(&end, ctx.args.timeout, w.progress).into())
        }
    }
}

/// Why the measured phase ended before its publisher did.
fn cut_short(end: &WatchEnd, timeout: u64, progress: &Progress) -> String {
    if end.interrupted {
        "interrupted while publishing".into()
    } else {
        format!(
            "timed out after {timeout} s while publishing ({} published)",
            progress.published.load(Ordering::Relaxed)
        )
    }
}

fn print_progress(t0: Instant, last: &mut (Instant, usize), outcomes: usize, w: &Watch<'_>) {
    let now = Instant::now();
    let rate = (outcomes - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
    *last = (now, outcomes);
    eprintln!(
        "[{:>4.0} s] published {:>7}/{} confirmed {:>7} outcomes {:>7} ({:>6.0}/s)",
        t0.elapsed().as_secs_f64(),
        w.progress.published.load(Ordering::Relaxed),
        w.expected,
        w.progress.confirmed.load(Ordering::Relaxed),
        outcomes,
        rate
    );
}
#[derive(Serialize)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

#[derive(Serialize, Default)]
struct Outcomes {
    created: usize,
    failed: BTreeMap<String, usize>,
    duplicates: usize,
    missing: usize,
    /// Created cases whose event names possible duplicates, by the share of the mix.
    flagged: BTreeMap<String, usize>,
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
    /// This measured phase, 1-based, of `phases`.
    phase: usize,
    phases: usize,
    /// The measured network's duplicate_policy during the phase.
    policy: Policy,
    count: usize,
    mix: BTreeMap<String, usize>,
    workers: usize,
    in_process: bool,
    window: usize,
    prefetch: u16,
    consumers: usize,
    pool: u32,
    window_wait_ms: u64,
    rate: Option<f64>,
    preload: u64,
    households: usize,
    hot: usize,
    elapsed_s: f64,
    intakes_per_s: f64,
    publish_per_s: f64,
    latency_ms: Option<Latency>,
    worker_peak_rss_kib: Vec<u64>,
    outcomes: Outcomes,
    cpu_cores: BTreeMap<String, f64>,
    db_bytes_per_intake: f64,
    /// Server-wide: includes whatever else wrote to this PostgreSQL meanwhile.
    wal_bytes_per_intake: f64,
    checks: Vec<Check>,
    ok: bool,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn latency(mut v: Vec<Duration>) -> Option<Latency> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let q = |p: f64| ms(v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]);
    let mean = v.iter().map(|d| d.as_secs_f64()).sum::<f64>() / v.len() as f64 * 1000.0;
    Some(Latency {
        p50: q(0.50),
        p95: q(0.95),
        p99: q(0.99),
        max: ms(v[v.len() - 1]),
        mean,
    })
}

/// Every publication of a key, in publish order: whether the key's intake is valid, and for
/// each publication the index of the measured message (`None` for the pre-phase).
type PerKey<'a> = HashMap<&'a str, (bool, Vec<Option<usize>>)>;

/// The publications of the run by key, and the measured mix by kind.
fn publications(m: &Measured) -> (PerKey<'_>, BTreeMap<String, usize>) {
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
struct Tally {
    latencies: Vec<Duration>,
    outcomes: Outcomes,
    last_arrival: Option<Instant>,
}

/// Pairs the n-th event of each key with its n-th publication.
fn tally(log: &EventLog, per_key: &PerKey<'_>, msgs: &[Msg], sent: &[Instant]) -> Tally {
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
struct Checks(Vec<Check>);

impl Checks {
    fn add(&mut self, name: &'static str, ok: bool, detail: String) {
        self.0.push(Check { name, ok, detail });
    }
}

fn check_finished(checks: &mut Checks, m: &Measured, timeout: u64) {
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
fn check_events(checks: &mut Checks, log: &EventLog, expected: &[Expected<'_>], missing: usize) {
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
async fn check_database(
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
struct Owed {
    key: String,
    valid: bool,
    owed: usize,
}

/// Matches events to messages, computes the figures and runs the checks; the checks also
/// cover the keys of earlier phases (`prior`), to which this phase's keys are then added.
async fn evaluate(
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
struct Resources {
    rss: Vec<u64>,
    db_bytes: i64,
    wal_bytes: f64,
}

/// The report: the run's settings, its figures and the checks.
#[allow(clippy::too_many_arguments)]
fn report_of(
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
        latency_ms: latency(t.latencies),
        worker_peak_rss_kib: used.rss,
        outcomes: t.outcomes,
        cpu_cores: m.cpu,
        db_bytes_per_intake: used.db_bytes as f64 / done,
        wal_bytes_per_intake: used.wal_bytes / done,
        checks,
        ok,
    }
}

fn print_report(r: &Report) {
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
fn print_setup(r: &Report) {
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
fn print_figures(r: &Report) {
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
