//! Fault-injection suite: proves that every intake enqueued ends in exactly one outcome while
//! workers are killed, RabbitMQ and PostgreSQL restart, sessions are terminated and tables are
//! locked. Jepsen's queue method on one machine: publish with confirms into a ledger, inject
//! faults, heal, re-publish what was not confirmed, drain, then check the database and the
//! events against the ledger. See `docs/faults.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Confirmation, Connection};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use case_intake::admin::provision;
use case_intake::infra::db as service_db;
use case_intake::infra::settings::Settings;
use case_intake::outbox::topology;
use case_intake_harness::broker::{self, LOCAL_BROKER};
use case_intake_harness::checks::{self, Expected, FailedIntakeRow, OutcomeRow};
use case_intake_harness::cli::{self, BoxError};
use case_intake_harness::cluster::{self, Cluster, ClusterFault};
use case_intake_harness::db::{self, LOCAL_SERVER};
use case_intake_harness::kinds::{self, Flaw, Kind};
use case_intake_harness::ledger::{EventLog, lock};
use case_intake_harness::pgpair::{PgPair, Replication};
use case_intake_harness::retry_race::{self, Operator};
use case_intake_harness::workers::{self, End, WorkerCommand};

type Res<T> = Result<T, BoxError>;

/// The suite's own database, dropped and recreated at every start.
const DB_NAME: &str = "case_intake_faults";
/// How long a publish waits for its confirm before it is recorded as indeterminate.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Publishes awaiting a confirm at once.
const MAX_IN_FLIGHT: usize = 500;
/// How long the table lock of the `lock` fault is held (the worker's lock_timeout is 2 s).
const LOCK_HOLD: Duration = Duration::from_secs(5);
/// Households that receive head replacements over and over.
const HOT_HOUSEHOLDS: usize = 3;
/// How many failing keys are listed per failing figure.
const SHOWN_KEYS: usize = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
enum Fault {
    /// `kill -9` of a worker by pid; the supervisor restarts it.
    Kill,
    /// `rabbitmqctl stop_app`, a pause, `start_app`, `await_startup`.
    Broker,
    /// `rabbitmqctl close_all_connections`.
    Close,
    /// PostgreSQL fast restart.
    Pgrestart,
    /// PostgreSQL stopped for `--outage-secs`.
    Outage,
    /// `pg_terminate_backend` of every worker session.
    Terminate,
    /// `LOCK TABLE households IN ACCESS EXCLUSIVE MODE` held past the worker's lock_timeout.
    Lock,
    /// `--db-failover` only: `kill -9` of the primary of the PostgreSQL pair, the address
    /// moved to the standby, its promotion; then the dead node rebuilt as the new standby.
    Failover,
}

impl Fault {
    /// Relative size of the burst published around one repetition: larger where the fault
    /// lasts longer, so that intakes keep arriving while it lasts.
    fn weight(self) -> usize {
        match self {
            Fault::Kill | Fault::Terminate => 1,
            Fault::Pgrestart | Fault::Lock => 2,
            Fault::Close | Fault::Outage | Fault::Failover => 4,
            Fault::Broker => 8,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Broker => "broker",
            Fault::Close => "close",
            Fault::Pgrestart => "pgrestart",
            Fault::Outage => "outage",
            Fault::Terminate => "terminate",
            Fault::Lock => "lock",
            Fault::Failover => "failover",
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "case-intake-faults",
    about = "Fault-injection suite: every intake enqueued ends in exactly one outcome"
)]
struct Args {
    /// Faults to inject, each in its own phase, in the order given.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "kill,broker,close,pgrestart,outage,terminate,lock"
    )]
    faults: Vec<Fault>,
    /// Intakes to publish (distinct keys, duplicates not counted) [default: 3000, quick: 600].
    #[arg(long)]
    count: Option<usize>,
    /// The CI variant: 600 intakes, 3 kills, one of each other fault, a 10 s outage.
    #[arg(long)]
    quick: bool,
    /// Length of the PostgreSQL outage [default: 60, quick: 10].
    #[arg(long)]
    outage_secs: Option<u64>,
    /// Worker kills in the `kill` phase [default: 10, quick: 3].
    #[arg(long)]
    kills: Option<u32>,
    /// Publish rate within a burst, intakes per second.
    #[arg(long, default_value_t = 250)]
    rate: u32,
    /// How long to wait for the queue to drain after healing, in seconds.
    #[arg(long, default_value_t = 300)]
    drain_secs: u64,
    /// Seed of the intake mix (printed; the default is taken from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the database afterwards for inspection.
    #[arg(long)]
    keep_db: bool,
    /// The database-failover run: the workers' database on a primary with a streaming standby
    /// behind haproxy (harness/pg-pair.sh), and the one fault `failover` [repetitions:
    /// default 3, quick 1]. `--faults` is ignored.
    #[arg(long)]
    db_failover: bool,
    /// With `--db-failover`: asynchronous replication, to measure what a failover loses.
    #[arg(long, requires = "db_failover")]
    async_replication: bool,
    /// With `--db-failover`: how long the address is on the standby before its promotion
    /// (writes meet a read-only server); 0 moves it just after the promotion.
    #[arg(long, default_value_t = 2, requires = "db_failover")]
    read_only_secs: u64,
    /// Run against a three-node cluster of .ci/rabbit-cluster (started and removed by the
    /// suite), the workers given all three endpoints, with the node faults instead of
    /// `--faults` (see harness/src/cluster.rs).
    #[arg(long)]
    cluster: bool,
}

/// The resolved plan of a run.
#[derive(Debug, Clone)]
struct Plan {
    count: usize,
    outage: Duration,
    rate: f64,
    drain: Duration,
    seed: u64,
    /// Each fault with its number of repetitions.
    phases: Vec<(Fault, u32)>,
    /// `--cluster`: each node fault with its number of repetitions (`phases` is then empty).
    cluster: Vec<(ClusterFault, u32)>,
    /// Hard bound of the whole run.
    limit: Duration,
    keep_db: bool,
    /// `--db-failover`: the replication of the pair, and the read-only time of a failover.
    db_failover: Option<(Replication, Duration)>,
}

impl Plan {
    fn from_args(args: &Args) -> Self {
        let quick = args.quick;
        let kills = args.kills.unwrap_or(if quick { 3 } else { 10 });
        let mut seen = HashSet::new();
        let faults = if args.db_failover {
            vec![Fault::Failover]
        } else {
            args.faults.clone()
        };
        let phases = faults
            .iter()
            .filter(|f| seen.insert(**f))
            .map(|&f| {
                let reps = match f {
                    Fault::Kill => kills,
                    _ if quick => 1,
                    Fault::Failover => 3,
                    Fault::Broker | Fault::Pgrestart | Fault::Lock => 2,
                    Fault::Close | Fault::Terminate => 3,
                    Fault::Outage => 1,
                };
                (f, reps)
            })
            .collect();
        let seed = args.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
        let (phases, cluster) = if args.cluster {
            let reps = if quick { 1 } else { 2 };
            (Vec::new(), ClusterFault::ALL.map(|f| (f, reps)).to_vec())
        } else {
            (phases, Vec::new())
        };
        Plan {
            count: args.count.unwrap_or(if quick { 600 } else { 3000 }).max(1),
            outage: Duration::from_secs(args.outage_secs.unwrap_or(if quick { 10 } else { 60 })),
            rate: f64::from(args.rate.clamp(1, 5000)),
            drain: Duration::from_secs(args.drain_secs.max(10)),
            seed,
            phases,
            cluster,
            limit: Duration::from_secs(if quick { 15 * 60 } else { 60 * 60 }),
            keep_db: args.keep_db,
            db_failover: args.db_failover.then(|| {
                let replication = if args.async_replication {
                    Replication::Async
                } else {
                    Replication::Sync
                };
                (replication, Duration::from_secs(args.read_only_secs))
            }),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logging of the suite itself.

static START: OnceLock<Instant> = OnceLock::new();

fn elapsed() -> f64 {
    START.get_or_init(Instant::now).elapsed().as_secs_f64()
}

macro_rules! say {
    ($($arg:tt)*) => {
        println!("[{:>7.1}s] {}", elapsed(), format_args!($($arg)*))
    };
}

// ---------------------------------------------------------------------------------------------
// The ledger: every intake and every publish attempt.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempt {
    /// Published; the confirm has not been decided yet.
    Pending,
    Ok,
    /// Nacked, returned as unroutable, or refused before it was sent.
    Failed,
    /// The confirm did not arrive (timeout, connection lost): the intake may or may not be in
    /// the queue.
    Indeterminate,
}

/// One publish attempt of one of a key's bodies.
#[derive(Debug, Clone, Copy)]
struct Try {
    body: usize,
    status: Attempt,
}

struct Entry {
    key: String,
    /// The bodies published under the key: one, or two for a resent key (the invalid one,
    /// then the correction) and a race (two valid ones).
    bodies: Vec<Arc<Vec<u8>>>,
    kind: Kind,
    attempts: Vec<Try>,
    /// When the key was first published: where its gap to its first event starts.
    first_sent: Option<Instant>,
}

impl Entry {
    fn confirmed(&self) -> bool {
        self.attempts.iter().any(|t| t.status == Attempt::Ok)
    }
    fn published(&self, body: usize) -> bool {
        self.attempts.iter().any(|t| t.body == body)
    }
    fn body_confirmed(&self, body: usize) -> bool {
        self.attempts
            .iter()
            .any(|t| t.body == body && t.status == Attempt::Ok)
    }
    /// Whether the key must end in a case: a valid body of it was confirmed (for a key of
    /// one body, its kind says).
    fn deserves_case(&self) -> bool {
        if !self.kind.several_bodies() {
            return self.kind.valid();
        }
        self.attempts
            .iter()
            .any(|t| t.status == Attempt::Ok && self.kind.body_valid(t.body))
    }
    /// Publications that may have reached the queue (confirmed or indeterminate).
    fn publications(&self) -> usize {
        let may = |t: &&Try| matches!(t.status, Attempt::Ok | Attempt::Indeterminate);
        self.attempts.iter().filter(may).count()
    }
}

#[derive(Default)]
struct Ledger {
    entries: Vec<Entry>,
    /// Publishes of a key that was published before (same key, same body).
    duplicates: usize,
    republished: usize,
    /// Corrected bodies published under resent keys.
    corrections: usize,
}

impl Ledger {
    fn begin(&mut self, idx: usize, body: usize) -> usize {
        self.entries[idx]
            .first_sent
            .get_or_insert_with(Instant::now);
        let attempts = &mut self.entries[idx].attempts;
        attempts.push(Try {
            body,
            status: Attempt::Pending,
        });
        attempts.len() - 1
    }
    fn settle(&mut self, idx: usize, attempt: usize, status: Attempt) {
        self.entries[idx].attempts[attempt].status = status;
    }
    fn attempt_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for t in self.entries.iter().flat_map(|e| &e.attempts) {
            let name = match t.status {
                Attempt::Pending => "pending",
                Attempt::Ok => "ok",
                Attempt::Failed => "failed",
                Attempt::Indeterminate => "indeterminate",
            };
            *m.entry(name).or_insert(0) += 1;
        }
        m
    }
}

// ---------------------------------------------------------------------------------------------
// Shell commands, each bounded by `timeout`.

async fn run_cmd(program: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = Command::new("timeout");
    cmd.arg("-k")
        .arg("5")
        .arg(limit.as_secs().max(1).to_string())
        .arg(program)
        .args(args)
        .stdin(Stdio::null());
    let shown = format!("{program} {}", args.join(" "));
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| format!("{shown}: {e}"))?
        .map_err(|e| format!("{shown}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{shown}: {} {}", out.status, text.trim()))
    }
}

/// The PostgreSQL major version directory under /etc/postgresql (e.g. `15`).
fn pg_version() -> Res<String> {
    let mut versions: Vec<String> = std::fs::read_dir("/etc/postgresql")?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    versions.sort();
    versions
        .pop()
        .ok_or_else(|| "no cluster under /etc/postgresql".into())
}

async fn pg_ctl(action: &str) -> Result<String, String> {
    let version = pg_version().map_err(|e| e.to_string())?;
    let mut args = vec![
        "--skip-systemctl-redirect",
        version.as_str(),
        "main",
        action,
    ];
    if action != "start" {
        args.extend(["-m", "fast"]);
    }
    run_cmd("pg_ctlcluster", &args, Duration::from_secs(120)).await
}

async fn pg_ready() -> bool {
    run_cmd(
        "pg_isready",
        &["-h", "127.0.0.1", "-p", "5432", "-q"],
        Duration::from_secs(10),
    )
    .await
    .is_ok()
}

/// Waits up to `limit` for PostgreSQL to accept connections.
async fn await_pg(limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if pg_ready().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

async fn rabbitmqctl(args: &[&str], limit: Duration) -> Result<String, String> {
    run_cmd("rabbitmqctl", args, limit).await
}

/// Makes sure PostgreSQL and RabbitMQ run and the RabbitMQ app is started.
async fn ensure_services() {
    if let Some(c) = CLUSTER.get()
        && let Err(e) = c.heal().await
    {
        say!("heal: cluster: {e}");
    }
    if !pg_ready().await {
        say!("heal: starting PostgreSQL");
        if let Err(e) = pg_ctl("start").await {
            say!("heal: {e}");
        }
    }
    if !await_pg(Duration::from_secs(90)).await {
        say!("heal: PostgreSQL still not ready after 90 s");
    }
    if let Err(e) = rabbitmqctl(&["-q", "start_app"], Duration::from_secs(120)).await {
        say!("heal: rabbitmqctl start_app: {e}");
    }
    if let Err(e) = rabbitmqctl(
        &["-q", "await_startup", "--timeout", "120"],
        Duration::from_secs(150),
    )
    .await
    {
        say!("heal: rabbitmqctl await_startup: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// The two worker processes and their supervisor.

struct Workers {
    command: WorkerCommand,
    dir: PathBuf,
    slots: Vec<Option<Child>>,
    starts: u32,
    kills: u32,
    /// Exits that the suite did not cause (crash, non-zero exit).
    unexpected_exits: Vec<String>,
    /// Off during the final SIGTERM: no restarts.
    supervise: bool,
}

impl Workers {
    fn log_path(&self, slot: usize) -> PathBuf {
        self.dir.join(format!("worker-{slot}.log"))
    }

    fn start(&mut self, slot: usize) -> std::io::Result<()> {
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(slot))?;
        self.starts += 1;
        writeln!(
            log,
            "==== case-intake-faults: start #{} (worker {slot}) at {:.1}s",
            self.starts,
            elapsed()
        )?;
        let child = self
            .command
            .spawn(Stdio::from(log.try_clone()?), Stdio::from(log))?;
        self.slots[slot] = Some(child);
        Ok(())
    }

    /// Notices exited workers and restarts them (the orchestrator's job).
    fn reap(&mut self) {
        if !self.supervise {
            return;
        }
        for slot in 0..self.slots.len() {
            if let Some(child) = &mut self.slots[slot] {
                match child.try_wait() {
                    Ok(None) => continue,
                    Ok(Some(status)) => {
                        let msg = format!(
                            "worker {slot} (pid {}) exited by itself at {:.1}s: {status}",
                            child.id(),
                            elapsed()
                        );
                        say!("{msg}");
                        self.unexpected_exits.push(msg);
                    }
                    Err(e) => say!("worker {slot}: try_wait: {e}"),
                }
                self.slots[slot] = None;
            }
            if self.slots[slot].is_none()
                && let Err(e) = self.start(slot)
            {
                say!("worker {slot}: cannot start: {e}");
            }
        }
    }

    fn alive(&mut self) -> usize {
        let mut n = 0;
        for c in self.slots.iter_mut().flatten() {
            if matches!(c.try_wait(), Ok(None)) {
                n += 1;
            }
        }
        n
    }

    /// SIGKILL by pid; returns the pid. The supervisor restarts the slot.
    fn kill9(&mut self, slot: usize) -> Option<u32> {
        let mut child = self.slots[slot].take()?;
        let pid = child.id();
        let _ = child.kill();
        let _ = child.wait();
        self.kills += 1;
        Some(pid)
    }

    /// Stops supervising and takes the worker processes out of their slots.
    fn take_all(&mut self) -> Vec<Child> {
        self.supervise = false;
        self.slots.iter_mut().filter_map(Option::take).collect()
    }
}

async fn supervise(workers: Arc<Mutex<Workers>>, stop: CancellationToken) {
    while !stop.is_cancelled() {
        lock(&workers).reap();
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
    }
}

/// Waits up to `limit` until both workers run.
async fn await_workers(workers: &Mutex<Workers>, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if lock(workers).alive() == 2 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// SIGTERM to every worker, then waits for them (bounded), then SIGKILL.
async fn stop_workers(workers: &Mutex<Workers>) -> Vec<(u32, String)> {
    let mut children = lock(workers).take_all();
    let stopped = workers::stop_processes(&mut children, Duration::from_secs(45)).await;
    stopped
        .into_iter()
        .map(|s| {
            let status = match s.end {
                End::Exited(status) => status.to_string(),
                End::Killed(status) => format!("killed after the grace period ({status:?})"),
            };
            (s.pid, status)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ helpers.

/// `--cluster`: the cluster every broker client of the suite and the workers use.
static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Weight of one node fault's burst (as [`Fault::weight`]).
const CLUSTER_WEIGHT: usize = 2;

async fn amqp_connect(name: &str) -> Res<Connection> {
    if let Some(c) = CLUSTER.get() {
        let urls: Vec<String> = c
            .urls()
            .iter()
            .map(|u| format!("{u}?heartbeat=10"))
            .collect();
        return Ok(cluster::connect_any(&urls, name).await?.0);
    }
    // A short heartbeat: a broker that went away is noticed within seconds.
    let url = format!("{LOCAL_BROKER}?heartbeat=10");
    let conn = tokio::time::timeout(Duration::from_secs(10), broker::connect(&url, Some(name)))
        .await
        .map_err(|_| "connecting to RabbitMQ timed out")??;
    Ok(conn)
}

/// Messages ready in `queue` (on a short-lived connection).
async fn queue_ready(queue: &str) -> Res<u32> {
    let conn = amqp_connect("case-intake-faults probe").await?;
    let ch = conn.create_channel().await?;
    let ready = broker::ready_in(&ch, queue).await;
    let _ = conn.close(200, "OK".into()).await;
    Ok(ready?)
}

/// Consumes the suite's events queue until `stop`, reconnecting after every broker fault.
async fn collect_events(queue: String, seen: Arc<Mutex<EventLog>>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        match consume_events(&queue, &seen, &stop).await {
            Ok(()) => return,
            Err(_) => {
                lock(&seen).reconnects += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

async fn consume_events(queue: &str, seen: &Mutex<EventLog>, stop: &CancellationToken) -> Res<()> {
    let conn = amqp_connect("case-intake-faults events").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "case-intake-faults".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "OK".into()).await;
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(d) => d?,
            None => return Err("the broker ended the events consumer".into()),
        };
        lock(seen).record(&delivery.data, Instant::now());
        if !delivery.ack(BasicAckOptions::default()).await? {
            return Err("events ack refused".into());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The publisher: builds the intake mix and publishes with confirms into the ledger.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    Normal,
    /// Mostly joins of existing households (while the households table is locked).
    Joins,
}

enum Cmd {
    Burst {
        n: usize,
        rate: f64,
        mix: Mix,
        done: oneshot::Sender<()>,
    },
    /// Re-publishes every key without a confirmed attempt, in rounds; answers how many remain
    /// unconfirmed.
    Republish { done: oneshot::Sender<usize> },
}

struct Publisher {
    ledger: Arc<Mutex<Ledger>>,
    seen: Arc<Mutex<EventLog>>,
    queue: String,
    token: String,
    county: i64,
    run_id: String,
    rng: SmallRng,
    conn: Option<(Connection, Channel)>,
    inflight: JoinSet<()>,
    permits: Arc<Semaphore>,
    stop: CancellationToken,
    /// Resent keys whose corrected body waits for the suite to see their failure.
    corrections: Vec<usize>,
    /// Stages the operator's retries of `ReplayRace`/`EditRace` keys; `retries` runs them.
    operator: Operator,
    retries: JoinSet<()>,
}

impl Publisher {
    async fn run(mut self, mut commands: mpsc::Receiver<Cmd>) {
        while let Some(cmd) = tokio::select! {
            _ = self.stop.cancelled() => None,
            c = commands.recv() => c,
        } {
            match cmd {
                Cmd::Burst { n, rate, mix, done } => {
                    // `n` new keys; duplicates ride on top (bounded: at most 2n + 10 publishes).
                    let start = tokio::time::Instant::now();
                    let mut fresh = 0;
                    for i in 0..(2 * n + 10) {
                        if fresh >= n || self.stop.is_cancelled() {
                            break;
                        }
                        let at = start + Duration::from_secs_f64(i as f64 / rate);
                        tokio::time::sleep_until(at).await;
                        self.send_corrections().await;
                        let (idx, body, new) = self.next_intake(mix);
                        fresh += usize::from(new);
                        self.publish(idx, body).await;
                        if new {
                            self.second_body(idx).await;
                        }
                    }
                    self.settle().await;
                    let _ = done.send(());
                }
                Cmd::Republish { done } => {
                    self.republish().await;
                    self.finish_corrections().await;
                    let left = self.republish().await;
                    let _ = done.send(left);
                }
            }
        }
        if let Some((conn, _)) = self.conn.take() {
            let _ = conn.close(200, "OK".into()).await;
        }
    }

    /// Waits for every pending confirm (each bounded by CONFIRM_TIMEOUT).
    async fn settle(&mut self) {
        let bound = CONFIRM_TIMEOUT + Duration::from_secs(20);
        let _ = tokio::time::timeout(bound, async {
            while self.inflight.join_next().await.is_some() {}
        })
        .await;
    }

    /// A new key's second body: a race publishes it at once; a resent key's correction waits
    /// until the suite has seen the failure of its first body (see docs/faults.md).
    async fn second_body(&mut self, idx: usize) {
        let kind = lock(&self.ledger).entries[idx].kind;
        match kind {
            Kind::Race => self.publish(idx, 1).await,
            Kind::Resent | Kind::ReplayRace | Kind::EditRace => self.corrections.push(idx),
            _ => {}
        }
    }

    /// Publishes the corrected body of every resent key whose failure event has arrived.
    async fn send_corrections(&mut self) {
        if self.corrections.is_empty() {
            return;
        }
        let ready: Vec<usize> = {
            let (seen, ledger) = (lock(&self.seen), lock(&self.ledger));
            let failed = |idx: &usize| {
                let arrivals = seen.arrivals(&ledger.entries[*idx].key);
                arrivals
                    .iter()
                    .any(|a| a.failure() == Some("validation_failed"))
            };
            self.corrections.iter().copied().filter(failed).collect()
        };
        self.corrections.retain(|i| !ready.contains(i));
        lock(&self.ledger).corrections += ready.len();
        for idx in ready {
            self.stage_retry(idx).await;
            self.publish(idx, 1).await;
        }
    }

    /// For a `ReplayRace`/`EditRace` key whose correction is about to be published: the
    /// operator's retry selects the failure now and runs once the workers committed the
    /// correction (see docs/faults.md). A retry that cannot be staged (a fault keeps the
    /// database away) leaves the key an ordinary resent one.
    async fn stage_retry(&mut self, idx: usize) {
        let (kind, key) = {
            let ledger = lock(&self.ledger);
            let e = &ledger.entries[idx];
            (e.kind, e.key.clone())
        };
        if !matches!(kind, Kind::ReplayRace | Kind::EditRace) {
            return;
        }
        match self.operator.stage(kind, &key).await {
            Ok(staged) => {
                let operator = self.operator.clone();
                self.retries
                    .spawn(async move { operator.finish(kind, key, staged).await });
            }
            Err(e) => say!("{key}: retry not staged: {e}"),
        }
    }

    /// After healing: the corrections still waiting, as their failures arrive (bounded).
    async fn finish_corrections(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.corrections.is_empty() && Instant::now() < deadline {
            self.send_corrections().await;
            if self.stop.is_cancelled() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.settle().await;
        let bound = Duration::from_secs(180);
        let _ = tokio::time::timeout(bound, async {
            while self.retries.join_next().await.is_some() {}
        })
        .await;
        if !self.corrections.is_empty() {
            say!(
                "{} resent keys never saw their failure: corrections not sent",
                self.corrections.len()
            );
        }
    }

    /// Re-publishes, in rounds, every body published under a key and never confirmed; answers
    /// how many remain.
    async fn republish(&mut self) -> usize {
        for round in 0..6 {
            let todo: Vec<(usize, usize)> = unconfirmed_bodies(&lock(&self.ledger));
            if todo.is_empty() || self.stop.is_cancelled() {
                return todo.len();
            }
            say!(
                "re-publishing {} unconfirmed intakes (round {})",
                todo.len(),
                round + 1
            );
            lock(&self.ledger).republished += todo.len();
            let start = tokio::time::Instant::now();
            for (i, (idx, body)) in todo.into_iter().enumerate() {
                let at = start + Duration::from_secs_f64(i as f64 / 500.0);
                tokio::time::sleep_until(at).await;
                self.publish(idx, body).await;
            }
            self.settle().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        unconfirmed_bodies(&lock(&self.ledger)).len()
    }

    /// Picks the next intake: a duplicate of an earlier key (one of the bodies published
    /// under it), or a new key (then `true`); with the body to publish.
    fn next_intake(&mut self, mix: Mix) -> (usize, usize, bool) {
        let roll: f64 = self.rng.random();
        let (known, hot) = {
            let seen = lock(&self.seen);
            let hot = seen.households_created.len().min(HOT_HOUSEHOLDS);
            let household = if seen.households_created.is_empty() {
                None
            } else {
                Some(
                    seen.households_created
                        [self.rng.random_range(0..seen.households_created.len())],
                )
            };
            let hot_household =
                (hot > 0).then(|| seen.households_created[self.rng.random_range(0..hot)]);
            (household, hot_household)
        };
        let mut ledger = lock(&self.ledger);
        if roll < 0.05 && !ledger.entries.is_empty() {
            ledger.duplicates += 1;
            let idx = self.rng.random_range(0..ledger.entries.len());
            let e = &ledger.entries[idx];
            let sent: Vec<usize> = (0..e.bodies.len()).filter(|b| e.published(*b)).collect();
            let body = sent.get(self.rng.random_range(0..sent.len().max(1)));
            return (idx, body.copied().unwrap_or(0), false);
        }
        let (kind, household) = match (mix, roll) {
            (_, r) if r < 0.10 => (Kind::Invalid, None),
            (_, r) if r < 0.13 => (Kind::Resent, None),
            (_, r) if r < 0.145 => (Kind::Race, None),
            (_, r) if r < 0.16 => (Kind::ReplayRace, None),
            (_, r) if r < 0.175 => (Kind::EditRace, None),
            (_, r) if r < 0.215 && hot.is_some() => (Kind::ReplaceHead, hot),
            (Mix::Normal, r) if r < 0.50 && known.is_some() => (Kind::Join, known),
            (Mix::Joins, _) if known.is_some() => (Kind::Join, known),
            _ => (Kind::NewHousehold, None),
        };
        let seq = ledger.entries.len();
        let key = format!("{}-{seq:06}", self.run_id);
        let bodies = (0..if kind.several_bodies() { 2 } else { 1 })
            .map(|n| Arc::new(intake_body(kind, n, seq, self.county, household)))
            .collect();
        ledger.entries.push(Entry {
            key,
            bodies,
            kind,
            attempts: Vec::new(),
            first_sent: None,
        });
        (seq, 0, true)
    }

    /// A channel in confirm mode, reconnecting (bounded) when the broker went away.
    async fn channel(&mut self) -> Option<Channel> {
        if let Some((conn, ch)) = &self.conn
            && conn.status().connected()
            && ch.status().connected()
        {
            return Some(ch.clone());
        }
        self.conn = None;
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut delay = Duration::from_millis(200);
        while Instant::now() < deadline && !self.stop.is_cancelled() {
            match open_publisher().await {
                Ok((conn, ch)) => {
                    self.conn = Some((conn, ch.clone()));
                    return Some(ch);
                }
                Err(_) => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        None
    }

    async fn publish(&mut self, idx: usize, n: usize) {
        let (key, body) = {
            let ledger = lock(&self.ledger);
            let e = &ledger.entries[idx];
            (e.key.clone(), e.bodies[n].clone())
        };
        let Some(channel) = self.channel().await else {
            let mut ledger = lock(&self.ledger);
            let a = ledger.begin(idx, n);
            ledger.settle(idx, a, Attempt::Failed);
            return;
        };
        let Ok(permit) = self.permits.clone().acquire_owned().await else {
            return;
        };
        let props = broker::keyed_intake(&key, broker::token_headers(&self.token));
        let attempt = lock(&self.ledger).begin(idx, n);
        let published = broker::publish_intake(&channel, &self.queue, &body, props).await;
        match published {
            Err(_) => {
                // It may have left before the channel broke: not known to be absent.
                lock(&self.ledger).settle(idx, attempt, Attempt::Indeterminate);
                self.conn = None;
            }
            Ok(confirm) => {
                let ledger = self.ledger.clone();
                self.inflight.spawn(async move {
                    let status = match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
                        Ok(Ok(Confirmation::Ack(None))) => Attempt::Ok,
                        Ok(Ok(Confirmation::Ack(Some(_)) | Confirmation::Nack(_))) => {
                            Attempt::Failed
                        }
                        Ok(Ok(Confirmation::NotRequested) | Err(_)) | Err(_) => {
                            Attempt::Indeterminate
                        }
                    };
                    lock(&ledger).settle(idx, attempt, status);
                    drop(permit);
                });
            }
        }
    }
}

async fn open_publisher() -> Res<(Connection, Channel)> {
    let conn = amqp_connect("case-intake-faults publisher").await?;
    let ch = broker::confirming_channel(&conn).await?;
    Ok((conn, ch))
}

/// Body `n` of an intake: the seed's example with a distinct first name and e-mail address
/// (a race's second body has another first name), without `last_name` when invalid.
fn intake_body(kind: Kind, n: usize, seq: usize, county: i64, household: Option<i64>) -> Vec<u8> {
    let head = kind == Kind::ReplaceHead;
    let name = format!(
        "Fault{seq}{}",
        if kind == Kind::Race && n > 0 { "b" } else { "" }
    );
    let mut body = kinds::intake_body(county, &name, head, household);
    body["email"] = json!(format!("fault{seq}@example.org"));
    if !kind.body_valid(n) {
        kinds::spoil(&mut body, Flaw::MissingLastName);
    }
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Every (key, body) published and never confirmed.
fn unconfirmed_bodies(ledger: &Ledger) -> Vec<(usize, usize)> {
    let mut todo = Vec::new();
    for (i, e) in ledger.entries.iter().enumerate() {
        for b in 0..e.bodies.len() {
            if e.published(b) && !e.body_confirmed(b) {
                todo.push((i, b));
            }
        }
    }
    todo
}

// ---------------------------------------------------------------------------------------------
// Setup.

struct Setup {
    suffix: String,
    db_url: String,
    pool: PgPool,
    intake_queue: String,
    events_exchange: String,
    capture_queue: String,
    token: String,
    county: i64,
    dir: PathBuf,
}

/// The PostgreSQL server of the run: the pair's address with `--db-failover`, else the
/// machine's own.
static SERVER: OnceLock<String> = OnceLock::new();

fn server() -> &'static str {
    SERVER.get().map_or(LOCAL_SERVER, String::as_str)
}

async fn drop_database() -> Res<()> {
    Ok(db::drop_database(server(), DB_NAME).await?)
}

/// The suite's own pool; its `application_name` keeps it out of the `terminate` fault.
fn suite_pool(url: &str) -> Res<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("case-intake-faults");
    Ok(PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options))
}

async fn setup() -> Res<Setup> {
    let suffix = Uuid::new_v4().simple().to_string()[..10].to_owned();
    drop_database().await?;
    let mut settings = Settings::load(None)?;
    let url = db::database_url(server(), DB_NAME);
    settings.database.url = url.clone().into();
    settings.database.create_database = true;
    settings.amqp.intake_queue = format!("faults.{suffix}.intake");
    settings.amqp.events_exchange = format!("faults.{suffix}.events");
    let migrated = service_db::migrate(&settings.database).await?;
    let p = provision::provision(
        &migrated,
        "faults network",
        "Faults agency",
        "faults agent",
        &["Kings".into(), "Queens".into()],
    )
    .await?;
    migrated.close().await;
    let capture_queue = format!("faults.{suffix}.captured-events");
    declare_broker(&settings, &capture_queue).await?;

    let dir = std::env::temp_dir().join(format!("case-intake-faults-{suffix}"));
    std::fs::create_dir_all(&dir)?;
    Ok(Setup {
        pool: suite_pool(&url)?,
        db_url: url,
        intake_queue: settings.amqp.intake_queue,
        events_exchange: settings.amqp.events_exchange,
        capture_queue,
        token: p.token,
        county: p.county_ids[0],
        dir,
        suffix,
    })
}

/// Declares the topology as the workers do, and the suite's durable capture queue bound to
/// every event (it keeps the events through broker restarts).
async fn declare_broker(settings: &Settings, capture_queue: &str) -> Res<()> {
    let conn = amqp_connect("case-intake-faults setup").await?;
    topology::declare(&conn, &settings.amqp).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), broker::text("quorum"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(capture_queue.into(), durable, args)
        .await?;
    broker::bind_all_events(&ch, capture_queue, &settings.amqp.events_exchange).await?;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

async fn teardown_broker(s: &Setup) {
    let Ok(conn) = amqp_connect("case-intake-faults cleanup").await else {
        say!("cleanup: RabbitMQ unreachable; queues of this run are left");
        return;
    };
    let taps = [s.capture_queue.as_str()];
    broker::delete_run_objects(&conn, &s.intake_queue, &s.events_exchange, &taps).await;
    let _ = conn.close(200, "OK".into()).await;
}

// ---------------------------------------------------------------------------------------------
// The run: warm-up, fault phases, heal, drain.

struct Run {
    plan: Plan,
    setup: Setup,
    workers: Arc<Mutex<Workers>>,
    ledger: Arc<Mutex<Ledger>>,
    seen: Arc<Mutex<EventLog>>,
    commands: mpsc::Sender<Cmd>,
    injected: BTreeMap<&'static str, u32>,
    fault_errors: Vec<String>,
    /// The publisher's operator (shared results): what its staged retries came to.
    operator: Operator,
    /// `--db-failover`: the PostgreSQL pair the workers' database is on.
    pair: Option<Arc<PgPair>>,
    /// `--cluster`: per node fault, the longest time without an outcome it caused.
    gaps: Vec<(&'static str, Duration)>,
}

impl Run {
    /// Starts a burst of `n` intakes; the receiver fires when all are confirmed or decided.
    async fn burst(&self, n: usize, rate: f64, mix: Mix) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        let cmd = Cmd::Burst {
            n,
            rate: rate.max(1.0),
            mix,
            done,
        };
        if self.commands.send(cmd).await.is_err() {
            say!("publisher gone");
        }
        rx
    }

    async fn await_burst(rx: oneshot::Receiver<()>) {
        if tokio::time::timeout(Duration::from_secs(600), rx)
            .await
            .is_err()
        {
            say!("a burst did not finish within 600 s");
        }
    }

    fn note(&mut self, fault: Fault, result: Result<String, String>) {
        *self.injected.entry(fault.name()).or_insert(0) += 1;
        if let Err(e) = result {
            say!("fault {}: {e}", fault.name());
            self.fault_errors.push(format!("{}: {e}", fault.name()));
        }
    }

    async fn warm_up(&self, n: usize) {
        say!("warm-up: {n} intakes, no fault");
        let rx = self.burst(n, self.plan.rate, Mix::Normal).await;
        Self::await_burst(rx).await;
        // Let the first households come back as events, so joins have targets.
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && lock(&self.seen).households_created.len() < HOT_HOUSEHOLDS
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn phase(&mut self, fault: Fault, reps: u32, per_burst: usize) {
        say!(
            "phase {}: {reps} time(s), {per_burst} intakes per burst",
            fault.name()
        );
        for rep in 0..reps {
            match fault {
                Fault::Lock => self.lock_fault(per_burst).await,
                Fault::Outage => {
                    let spread = (self.plan.outage.as_secs_f64() / 2.0).max(1.0);
                    let rx = self
                        .burst(per_burst, per_burst as f64 / spread, Mix::Normal)
                        .await;
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let r = self.outage().await;
                    self.note(fault, r);
                    Self::await_burst(rx).await;
                    tokio::time::sleep(Duration::from_secs(3)).await;
                }
                _ => {
                    if fault == Fault::Kill
                        && !await_workers(&self.workers, Duration::from_secs(20)).await
                    {
                        say!("kill: both workers were not running before kill {rep}");
                    }
                    // rabbitmqctl needs about a second to act: start it early in the burst so
                    // that the broker goes away with publishes and confirms in flight.
                    let lead = match fault {
                        Fault::Broker | Fault::Close => 0.1,
                        _ => 1.0,
                    };
                    let rate = match fault {
                        // Long enough to overlap the moment the broker acts.
                        Fault::Broker | Fault::Close => self.plan.rate.min(per_burst as f64 / 2.5),
                        _ => self.plan.rate,
                    };
                    let burst_secs = per_burst as f64 / rate;
                    let rx = self.burst(per_burst, rate, Mix::Normal).await;
                    tokio::time::sleep(Duration::from_secs_f64((burst_secs / 2.0).min(lead))).await;
                    let r = self.inject(fault, rep).await;
                    self.note(fault, r);
                    Self::await_burst(rx).await;
                    self.recover(fault).await;
                }
            }
        }
    }

    /// One node fault of `--cluster`, `reps` times: a burst spread over the fault, then the
    /// longest gap in outcome events from the fault's start to the burst's end.
    async fn cluster_phase(&mut self, fault: ClusterFault, reps: u32, per_burst: usize) {
        let Some(c) = CLUSTER.get() else { return };
        say!(
            "phase {}: {reps} time(s), {per_burst} intakes per burst",
            fault.name()
        );
        for _ in 0..reps {
            let spread = if fault == ClusterFault::Rolling {
                60.0
            } else {
                20.0
            };
            let rx = self
                .burst(per_burst, per_burst as f64 / spread, Mix::Normal)
                .await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let from = Instant::now();
            let r = c
                .inject(fault, &self.setup.intake_queue, "case-intake consumer")
                .await;
            if let Ok(what) = &r {
                say!("{what}");
            }
            *self.injected.entry(fault.name()).or_insert(0) += 1;
            if let Err(e) = &r {
                say!("fault {}: {e}", fault.name());
                self.fault_errors.push(format!("{}: {e}", fault.name()));
            }
            Self::await_burst(rx).await;
            // Up to the burst's last confirm: later there is nothing left to come out.
            let to = Instant::now();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let gap = {
                let seen = lock(&self.seen);
                let times = seen.by_key.values().flatten().map(|a| a.at);
                cluster::longest_gap(times, from, to)
            };
            say!(
                "{}: longest gap in outcomes {:.1} s",
                fault.name(),
                gap.as_secs_f64()
            );
            self.gaps.push((fault.name(), gap));
        }
    }

    async fn inject(&self, fault: Fault, rep: u32) -> Result<String, String> {
        match fault {
            Fault::Kill => {
                let slot = (rep % 2) as usize;
                match lock(&self.workers).kill9(slot) {
                    Some(pid) => {
                        say!("kill -9 worker {slot} (pid {pid})");
                        Ok(String::new())
                    }
                    None => Err(format!("worker {slot} was not running")),
                }
            }
            Fault::Broker => {
                say!("rabbitmqctl stop_app");
                let stopped = rabbitmqctl(&["-q", "stop_app"], Duration::from_secs(120)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
                say!("rabbitmqctl start_app");
                let started = rabbitmqctl(&["-q", "start_app"], Duration::from_secs(120)).await;
                let ready = rabbitmqctl(
                    &["-q", "await_startup", "--timeout", "120"],
                    Duration::from_secs(150),
                )
                .await;
                stopped.and(started).and(ready)
            }
            Fault::Close => {
                say!("rabbitmqctl close_all_connections");
                rabbitmqctl(
                    &["-q", "close_all_connections", "fault test"],
                    Duration::from_secs(60),
                )
                .await
            }
            Fault::Pgrestart => {
                say!("PostgreSQL restart -m fast");
                pg_ctl("restart").await
            }
            Fault::Terminate => {
                let r = sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = 'case-intake' AND datname = current_database()
                        AND pid <> pg_backend_pid()) t",
                )
                .fetch_one(&self.setup.pool)
                .await;
                match r {
                    Ok(n) => {
                        say!("pg_terminate_backend: {n} worker session(s)");
                        Ok(String::new())
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            Fault::Failover => self.fail_over().await,
            Fault::Outage | Fault::Lock => Ok(String::new()),
        }
    }

    /// The `failover` fault on the pair (see `pgpair`).
    async fn fail_over(&self) -> Result<String, String> {
        let (Some(pair), Some((_, read_only))) = (&self.pair, self.plan.db_failover) else {
            return Err("the failover fault needs --db-failover".into());
        };
        say!("kill -9 of the primary; address on the standby {read_only:?} before its promotion");
        let took = pair.fail_over(read_only).await?;
        say!("failover done in {:.1} s", took.as_secs_f64());
        Ok(String::new())
    }

    /// Lets the system come back before the next repetition.
    async fn recover(&self, fault: Fault) {
        match fault {
            Fault::Kill => {
                if !await_workers(&self.workers, Duration::from_secs(20)).await {
                    say!("kill: the worker was not restarted within 20 s");
                }
                tokio::time::sleep(Duration::from_millis(1500)).await;
            }
            Fault::Pgrestart => {
                await_pg(Duration::from_secs(60)).await;
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Fault::Failover => {
                if let Some(pair) = &self.pair {
                    say!("rebuilding the dead node as the new standby");
                    if let Err(e) = pair.rebuild().await {
                        say!("failover: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            _ => tokio::time::sleep(Duration::from_secs(3)).await,
        }
    }

    async fn outage(&self) -> Result<String, String> {
        say!("PostgreSQL stop -m fast (outage of {:?})", self.plan.outage);
        let stopped = pg_ctl("stop").await;
        tokio::time::sleep(self.plan.outage).await;
        say!("PostgreSQL start");
        let started = pg_ctl("start").await;
        if !await_pg(Duration::from_secs(60)).await {
            return Err("PostgreSQL not ready 60 s after start".into());
        }
        stopped.and(started)
    }

    /// Holds an ACCESS EXCLUSIVE lock on households for LOCK_HOLD while joins flow.
    async fn lock_fault(&mut self, n: usize) {
        let held = async {
            let mut conn = self.setup.pool.acquire().await?;
            sqlx::raw_sql(
                "BEGIN; SET LOCAL lock_timeout = '20s';
                 LOCK TABLE households IN ACCESS EXCLUSIVE MODE;",
            )
            .execute(&mut *conn)
            .await?;
            Ok::<_, sqlx::Error>(conn)
        }
        .await;
        let mut conn = match held {
            Ok(c) => c,
            Err(e) => {
                self.note(Fault::Lock, Err(format!("could not take the lock: {e}")));
                return;
            }
        };
        say!("LOCK TABLE households IN ACCESS EXCLUSIVE MODE (held {LOCK_HOLD:?})");
        let spread = LOCK_HOLD.as_secs_f64() - 1.0;
        let rx = self.burst(n, n as f64 / spread, Mix::Joins).await;
        tokio::time::sleep(LOCK_HOLD).await;
        let r = sqlx::raw_sql("COMMIT").execute(&mut *conn).await;
        say!("households lock released");
        self.note(
            Fault::Lock,
            r.map(|_| String::new()).map_err(|e| e.to_string()),
        );
        Self::await_burst(rx).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    /// Heals, re-publishes what was not confirmed and waits for the drain.
    async fn heal_and_drain(&self) -> (usize, bool) {
        say!("heal: making sure PostgreSQL, RabbitMQ and both workers run");
        ensure_services().await;
        if !await_workers(&self.workers, Duration::from_secs(30)).await {
            say!("heal: both workers are not running");
        }
        let (done, rx) = oneshot::channel();
        let _ = self.commands.send(Cmd::Republish { done }).await;
        let unconfirmed = tokio::time::timeout(Duration::from_secs(900), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(usize::MAX);
        say!("drain: waiting for the intake queue and every outcome event");
        let deadline = Instant::now() + self.plan.drain;
        let mut last_report = Instant::now();
        while Instant::now() < deadline {
            // Intakes waiting out a delayed retry come back to the intake queue later.
            let retrying = queue_ready(&topology::retry_queue(&self.setup.intake_queue))
                .await
                .unwrap_or(0);
            let ready = queue_ready(&self.setup.intake_queue)
                .await
                .ok()
                .map(|n| n + retrying);
            let missing = self.keys_without_event();
            let unpublished = checks::unpublished_outbox(&self.setup.pool)
                .await
                .ok()
                .map(|rows| rows.len());
            if ready == Some(0) && missing == 0 && unpublished == Some(0) {
                say!("drained");
                return (unconfirmed, true);
            }
            if last_report.elapsed() > Duration::from_secs(10) {
                say!(
                    "drain: queued {ready:?}, keys without event {missing}, outbox unpublished {unpublished:?}"
                );
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        say!("drain: timed out after {:?}", self.plan.drain);
        (unconfirmed, false)
    }

    /// Confirmed keys that no outcome event arrived for yet, and keys of several bodies that
    /// deserve a case and have no `case.created` yet.
    fn keys_without_event(&self) -> usize {
        let ledger = lock(&self.ledger);
        let seen = lock(&self.seen);
        let expected: Vec<Expected<'_>> = ledger
            .entries
            .iter()
            .filter(|e| e.confirmed())
            .map(|e| Expected {
                key: &e.key,
                valid: e.deserves_case(),
                owed: 1,
            })
            .collect();
        let uncreated = ledger
            .entries
            .iter()
            .filter(|e| e.kind.several_bodies() && e.deserves_case())
            .filter(|e| seen.arrivals(&e.key).iter().all(|a| a.failure().is_some()))
            .count();
        checks::short_of_events(&expected, &seen).len() + uncreated
    }
}

// ---------------------------------------------------------------------------------------------
// Checks.

struct Figure {
    name: &'static str,
    value: usize,
    /// Must be 0 for the run to pass.
    must_be_zero: bool,
    /// Keys (or ids) behind a non-zero value, for the post-mortem.
    examples: Vec<String>,
}

/// A figure shown for information.
fn count(name: &'static str, value: usize) -> Figure {
    Figure {
        name,
        value,
        must_be_zero: false,
        examples: Vec::new(),
    }
}

fn figure(name: &'static str, must_be_zero: bool, examples: Vec<String>) -> Figure {
    Figure {
        name,
        value: examples.len(),
        must_be_zero,
        examples,
    }
}

/// What the database holds after the run, as the checks read it.
struct Stored {
    outcomes: Vec<OutcomeRow>,
    failed: Vec<FailedIntakeRow>,
    /// Keys with more than one case, and cases without an outcome.
    duplicated: Vec<String>,
    bad_households: Vec<i64>,
    unpublished: Vec<i64>,
}

async fn read_stored(pool: &PgPool) -> Res<Stored> {
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
async fn check(run: &Run, unconfirmed: usize) -> Res<Vec<Figure>> {
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
fn longest_gap(ledger: &Ledger, seen: &EventLog) -> Figure {
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
fn outcome_figures(
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
fn several_outcomes(ledger: &Ledger, seen: &EventLog, stored: &Stored) -> Vec<String> {
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
fn wrong_outcomes(
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
fn history_figures(ledger: &Ledger, seen: &EventLog, stored: &Stored) -> Vec<Figure> {
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
fn figure_of_ids(name: &'static str, ids: &[i64], what: &str) -> Figure {
    figure(
        name,
        true,
        ids.iter().map(|i| format!("{what} {i}")).collect(),
    )
}

/// More about failing keys: what the database holds for them.
async fn explain(pool: &PgPool, keys: &[String]) {
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

/// Removes ANSI colour sequences (the worker's text logs may carry them).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Counts the worker logs' WARN and ERROR lines by level, target, message and error class.
fn summarize_logs(paths: &[PathBuf]) -> Vec<(usize, String)> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for path in paths {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        for line in text.lines().map(strip_ansi) {
            let mut words = line.split_whitespace().skip(1);
            let Some(level) = words.next() else { continue };
            if level != "WARN" && level != "ERROR" {
                continue;
            }
            // The message runs up to the first field; `error=` is shown in short.
            let words: Vec<&str> = words.collect();
            let fields = words
                .iter()
                .position(|w| w.contains('='))
                .unwrap_or(words.len());
            let mut key = vec![level.to_owned()];
            key.extend(words[..fields].iter().map(|w| (*w).to_owned()));
            let mut in_error = 0;
            for w in &words[fields..] {
                if let Some(rest) = w.strip_prefix("error=") {
                    key.push(format!("| {rest}"));
                    in_error = 1;
                } else if w.starts_with("class=") {
                    key.push(format!("| {w}"));
                    in_error = 0;
                } else if w.contains('=') {
                    in_error = 0;
                } else if in_error > 0 && in_error < 8 {
                    key.push((*w).to_owned());
                    in_error += 1;
                }
            }
            *counts.entry(key.join(" ")).or_insert(0) += 1;
        }
    }
    let mut v: Vec<(usize, String)> = counts.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    v
}

fn print_tail(path: &Path, lines: usize) {
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

// ---------------------------------------------------------------------------------------------
// Main.

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

fn report(run: &Run, figures: &[Figure], drained: bool) -> bool {
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
        for slot in 0..workers.slots.len() {
            print_tail(&workers.log_path(slot), 40);
        }
        println!("worker logs kept in {}", workers.dir.display());
    }
    workers.supervise = false;
    passed
}

/// What the run did: faults, worker starts, the intake mix, publishes and events.
fn print_summary(run: &Run, workers: &Workers) {
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
fn print_figures(figures: &[Figure]) -> bool {
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

fn print_log_summary(workers: &Workers) {
    let logs: Vec<PathBuf> = (0..workers.slots.len())
        .map(|i| workers.log_path(i))
        .collect();
    let summary = summarize_logs(&logs);
    if !summary.is_empty() {
        println!("worker log lines (WARN/ERROR), most frequent first:");
        for (n, line) in summary.iter().take(12) {
            println!("  {n:>6}  {line}");
        }
    }
}

/// Serialises suite runs on one machine: the database name is fixed and the faults hit the
/// shared services, so a second run would drop the first one's database mid-run. The lock is
/// released when the process exits, however it exits.
async fn run_lock() -> Res<std::fs::File> {
    let path = std::env::temp_dir().join("case-intake-faults.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    let deadline = Instant::now() + Duration::from_secs(30 * 60);
    let mut told = false;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                if !told {
                    say!("another fault run holds {}; waiting", path.display());
                    told = true;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!("{} still held after 30 min", path.display()).into());
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e.into()),
        }
    }
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
        let c = Cluster::for_faults(&Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
        say!("cluster: starting three nodes ({})", c.urls().join(","));
        let began = Instant::now();
        if let Err(e) = c.start().await {
            let _ = c.remove().await;
            return Err(e.into());
        }
        say!("cluster: up in {:.0} s", began.elapsed().as_secs_f64());
        let _ = CLUSTER.set(c);
    }
    ensure_services().await;
    // Dropped (its servers stopped, its folder removed) when the suite returns, however.
    let pair = match plan.db_failover {
        Some((replication, _)) => {
            say!(
                "starting a PostgreSQL primary and standby ({} replication) behind haproxy",
                replication.name()
            );
            let pair = Arc::new(PgPair::start(replication)?);
            let _ = SERVER.set(pair.server.clone());
            say!("database server {}", pair.server);
            Some(pair)
        }
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

/// The worker processes' settings: the suite's database, queue and exchange.
fn worker_command(setup: &Setup, exe: PathBuf) -> WorkerCommand {
    let mut env = vec![
        ("database", "url", setup.db_url.clone()),
        ("amqp", "intake_queue", setup.intake_queue.clone()),
        ("amqp", "events_exchange", setup.events_exchange.clone()),
        ("log", "filter", "warn".into()),
        ("log", "format", "text".into()),
        // Two workers on one machine: their HTTP servers would fight over one port.
        ("http", "address", String::new()),
    ];
    if let Some(c) = CLUSTER.get() {
        env.push(("amqp", "urls", c.urls().join(",")));
    }
    WorkerCommand {
        bin: exe,
        env: env
            .into_iter()
            .map(|(section, key, v)| (workers::setting_env(section, key), v))
            .collect(),
        // The log summary reads the `warn` filter's lines only.
        inherit_rust_log: false,
    }
}

/// Starts the workers' supervisor, the events collector and the publisher.
fn start(
    plan: Plan,
    setup: Setup,
    exe: PathBuf,
    operator: Operator,
    stop: &CancellationToken,
) -> (Run, JoinSet<()>) {
    let workers = Arc::new(Mutex::new(Workers {
        command: worker_command(&setup, exe),
        dir: setup.dir.clone(),
        slots: vec![None, None],
        starts: 0,
        kills: 0,
        unexpected_exits: Vec::new(),
        supervise: true,
    }));
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
        for slot in 0..w.slots.len() {
            print_tail(&w.log_path(slot), 40);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit_code_of("case-intake-faults", ExitCode::FAILURE, suite(args))
}
