//! Fault-injection suite: proves that every intake enqueued ends in exactly one outcome while
//! workers are killed, RabbitMQ and PostgreSQL restart, sessions are terminated and tables are
//! locked. Jepsen's queue method on one machine: publish with confirms into a ledger, inject
//! faults, heal, re-publish what was not confirmed, drain, then check the database and the
//! events against the ledger. See `docs/faults.md`.
//!
//! This file holds the run as a whole (start, exercise, teardown) and the suite's log line;
//! the steps are in the modules below.

/// A line of the suite's own log, stamped with the seconds since the start. Defined before
/// the modules so that every one of them can use it.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("[{:>7.1}s] {}", $crate::elapsed(), format_args!($($arg)*))
    };
}

mod amqp;
mod args;
mod drain;
mod figures;
mod fleet;
mod inject;
mod ledger;
mod logs;
mod publisher;
mod report;
mod run;
mod services;
mod setup;

use clap::Parser;
use rand::SeedableRng;
use std::collections::BTreeMap;
use std::path::Path;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use case_intake::outbox::topology;
use case_intake_harness::cli;
use case_intake_harness::cli::BoxError;
use case_intake_harness::cluster::Cluster;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;
use case_intake_harness::pgpair::{PgPair, Replication};
use case_intake_harness::retry_race::Operator;
use case_intake_harness::workers;
use rand::rngs::SmallRng;
use tokio::sync::Semaphore;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::amqp::{CLUSTER, collect_events, queue_ready, teardown_broker};
use crate::args::{Args, Plan};
use crate::figures::{check, count};
use crate::fleet::{Workers, await_workers, stop_workers, supervise, worker_command};
use crate::ledger::Ledger;
use crate::publisher::{MAX_IN_FLIGHT, Publisher};
use crate::report::{explain, print_tail, report};
use crate::run::{CLUSTER_WEIGHT, Run};
use crate::services::ensure_services;
use crate::setup::{SERVER, Setup, drop_database, run_lock, setup};

pub type Res<T> = Result<T, BoxError>;

/// The suite's own database, dropped and recreated at every start.
pub const DB_NAME: &str = "case_intake_faults";

/// How many failing keys are listed per failing figure.
pub const SHOWN_KEYS: usize = 10;

static START: OnceLock<Instant> = OnceLock::new();

pub fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

async fn exercise(run: &mut Run) -> Res<bool> {
    // Each repetition gets a burst sized by the fault's weight; the warm-up (at least a tenth)
    // takes the rest. Duplicates ride on top of the count: about 5% of the publishes.
    let units: usize = run
        .plan
        .phases
        .iter()
        .map(|(f, r)| f.weight() * *r as usize)
        .sum::<usize>()
        + run
            .plan
            .cluster
            .iter()
            .map(|(_, r)| CLUSTER_WEIGHT * *r as usize)
            .sum::<usize>();
    let warm_min = (run.plan.count / 10).max(50).min(run.plan.count);
    let unit = (run.plan.count - warm_min).checked_div(units).unwrap_or(0);
    run.warm_up(run.plan.count - unit * units).await;
    let phases = run.plan.phases.clone();
    for (fault, reps) in phases {
        run.phase(fault, reps, unit * fault.weight()).await;
    }
    for (fault, reps) in run.plan.cluster.clone() {
        run.cluster_phase(fault, reps, unit * CLUSTER_WEIGHT).await;
    }
    let (unconfirmed, drained) = run.heal_and_drain().await;
    say!("stopping the workers with SIGTERM");
    for (pid, status) in stop_workers(&run.workers).await {
        say!("worker pid {pid}: {status}");
    }
    // The last events (re-published duplicates) may still be on their way to the suite.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let before = lock(&run.seen).total;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let ready = queue_ready(&run.setup.capture_queue).await.ok();
        if ready == Some(0) && lock(&run.seen).total == before {
            break;
        }
    }

    let mut figures = check(run, unconfirmed).await?;
    let dead = topology::dead_letter_queue(&run.setup.intake_queue);
    let left = queue_ready(&dead).await.map_or(usize::MAX, |n| n as usize);
    figures.push(count("messages left in the dead-letter queue", left));
    let passed = report(run, &figures, drained);
    if !passed {
        for f in figures.iter().filter(|f| f.must_be_zero && f.value > 0) {
            println!("\n{} = {}; first keys:", f.name, f.value);
            for e in f.examples.iter().take(SHOWN_KEYS) {
                println!("  {e}");
            }
            explain(&run.setup.pool, &f.examples).await;
        }
    }
    Ok(passed && drained)
}

async fn suite(args: Args) -> Res<bool> {
    elapsed();
    let plan = Plan::from_args(&args);
    let _lock = run_lock().await?;
    let exe = workers::worker_binary(None)?;
    if !exe.exists() {
        return Err(format!(
            "{} not found: build it first (cargo build --release --bins)",
            exe.display()
        )
        .into());
    }
    let names: Vec<&str> = plan.phases.iter().map(|(f, _)| f.name()).collect();
    say!(
        "plan: {} intakes, faults {}, outage {:?}, seed {}",
        plan.count,
        names.join(","),
        plan.outage,
        plan.seed
    );
    if !plan.cluster.is_empty() {
        start_cluster().await?;
    }
    ensure_services().await;
    // Dropped (its servers stopped, its folder removed) when the suite returns, however.
    let pair = match plan.db_failover {
        Some((replication, _)) => Some(start_pair(replication)?),
        None => None,
    };
    let setup = setup().await?;
    say!(
        "database {DB_NAME}, intake queue {}, worker logs in {}",
        setup.intake_queue,
        setup.dir.display()
    );
    let stop = CancellationToken::new();
    let operator = Operator::new(setup.pool.clone(), &setup.db_url)?;
    let (mut run, mut tasks) = start(plan, setup, exe, operator, &stop);
    run.pair = pair;
    if !await_workers(&run.workers, Duration::from_secs(30)).await {
        say!("warning: both workers are not running 30 s after start");
    }
    let limit = run.plan.limit;
    let result = tokio::select! {
        r = tokio::time::timeout(limit, exercise(&mut run)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("the run exceeded its limit of {limit:?}").into()),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
    };
    stop.cancel();
    tear_down(&run, &mut tasks, &result).await;
    if let Some(c) = CLUSTER.get() {
        match c.remove().await {
            Ok(()) => say!("cluster: removed"),
            Err(e) => say!("cluster: {e}"),
        }
    }
    result
}

/// `--cluster`: starts the three nodes and makes them the broker of every client.
async fn start_cluster() -> Res<()> {
    let c = Cluster::for_faults(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    say!("cluster: starting three nodes ({})", c.urls().join(","));
    let began = Instant::now();
    if let Err(e) = c.start().await {
        let _ = c.remove().await;
        return Err(e.into());
    }
    say!("cluster: up in {:.0} s", began.elapsed().as_secs_f64());
    let _ = CLUSTER.set(c);
    Ok(())
}

/// `--db-failover`: starts the PostgreSQL pair and makes its address the run's server.
fn start_pair(replication: Replication) -> Res<Arc<PgPair>> {
    say!(
        "starting a PostgreSQL primary and standby ({} replication) behind haproxy",
        replication.name()
    );
    let pair = Arc::new(PgPair::start(replication)?);
    let _ = SERVER.set(pair.server.clone());
    say!("database server {}", pair.server);
    Ok(pair)
}

/// Starts the workers' supervisor, the events collector and the publisher.
fn start(
    plan: Plan,
    setup: Setup,
    exe: PathBuf,
    operator: Operator,
    stop: &CancellationToken,
) -> (Run, JoinSet<()>) {
    let command = worker_command(&setup, exe);
    let workers = Arc::new(Mutex::new(Workers::new(command, setup.dir.clone())));
    let seen = Arc::new(Mutex::new(EventLog::default()));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut tasks = JoinSet::new();
    tasks.spawn(collect_events(
        setup.capture_queue.clone(),
        seen.clone(),
        stop.clone(),
    ));
    tasks.spawn(supervise(workers.clone(), stop.clone()));
    let (tx, rx) = mpsc::channel(4);
    let publisher = Publisher {
        ledger: ledger.clone(),
        seen: seen.clone(),
        queue: setup.intake_queue.clone(),
        token: setup.token.clone(),
        county: setup.county,
        run_id: format!("f{}", &setup.suffix[..8]),
        rng: SmallRng::seed_from_u64(plan.seed),
        conn: None,
        inflight: JoinSet::new(),
        permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        stop: stop.clone(),
        corrections: Vec::new(),
        operator: operator.clone(),
        retries: JoinSet::new(),
    };
    tasks.spawn(publisher.run(rx));
    let run = Run {
        plan,
        setup,
        workers,
        ledger,
        seen,
        commands: tx,
        injected: BTreeMap::new(),
        fault_errors: Vec::new(),
        operator,
        pair: None,
        gaps: Vec::new(),
    };
    (run, tasks)
}

/// Teardown, whatever happened: services up, workers stopped, broker objects and database
/// removed.
async fn tear_down(run: &Run, tasks: &mut JoinSet<()>, result: &Res<bool>) {
    ensure_services().await;
    for (pid, status) in stop_workers(&run.workers).await {
        say!("worker pid {pid}: {status}");
    }
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    teardown_broker(&run.setup).await;
    run.setup.pool.close().await;
    if run.plan.keep_db {
        say!("database {DB_NAME} kept");
    } else if let Err(e) = drop_database().await {
        say!("cleanup: could not drop {DB_NAME}: {e}");
    }
    if matches!(result, Ok(true)) {
        let _ = std::fs::remove_dir_all(&run.setup.dir);
        return;
    }
    say!("worker logs kept in {}", run.setup.dir.display());
    if result.is_err() {
        let w = lock(&run.workers);
        for path in w.log_paths() {
            print_tail(&path, 40);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit_code_of("case-intake-faults", ExitCode::FAILURE, suite(args))
}
