//! `case-intake-bench`: end-to-end throughput and latency benchmark of the worker (RabbitMQ →
//! PostgreSQL → outbox → events) on its own database, queue and exchange, followed by the
//! exactly-once and household checks. Results and method: docs/benchmarks.md.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use case_intake::admin::provision::{self, Provisioned};
use case_intake::app::supervisor;
use case_intake::infra::db;
use case_intake::infra::settings::Settings;
use case_intake::outbox::topology;
use case_intake::store::crypto::{Purpose, Vault};
use clap::Parser;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
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
    /// Cases inserted directly with SQL (in another network) before measuring.
    #[arg(long, default_value_t = 0)]
    preload: u64,
    /// Households created before measuring (not measured), target of joins and replacements.
    #[arg(long, default_value_t = 200)]
    households: usize,
    /// How many of those households receive the head replacements.
    #[arg(long, default_value_t = 8)]
    hot: usize,
    /// Percentages of the measured messages by kind; new households are the rest.
    #[arg(long, default_value = "join=20,replace=13,invalid=2,duplicate=5", value_parser = parse_mix)]
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

/// What a measured message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    NewHousehold,
    Join,
    ReplaceHead,
    Invalid,
    Duplicate,
}

impl Kind {
    fn valid(self) -> bool {
        matches!(self, Kind::NewHousehold | Kind::Join | Kind::ReplaceHead)
    }
}

/// One message to publish.
#[derive(Clone)]
struct Msg {
    key: Arc<str>,
    body: Arc<[u8]>,
    kind: Kind,
    /// For a duplicate: the kind of the message it repeats.
    original: Kind,
}

/// One outcome event as received.
struct Arrival {
    id: String,
    at: Instant,
    event_type: String,
    code: Option<String>,
    household_id: Option<i64>,
}

/// Every outcome event received, by subject (the message key).
#[derive(Default)]
struct Ledger {
    by_key: HashMap<String, Vec<Arrival>>,
    total: usize,
    unparsable: usize,
    /// The tap's consumer stream ended: its connection was closed (e.g. by
    /// `rabbitmqctl close_all_connections`), its exclusive queue is gone, the run is void.
    closed: bool,
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

type SharedLedger = Arc<Mutex<Ledger>>;

fn lock(ledger: &SharedLedger) -> MutexGuard<'_, Ledger> {
    ledger.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Deserialize)]
struct EventBody {
    id: String,
    #[serde(rename = "type")]
    event_type: String,
    subject: Option<String>,
    #[serde(default)]
    data: EventData,
}

#[derive(Deserialize, Default)]
struct EventData {
    household_id: Option<i64>,
    error: Option<EventError>,
}

#[derive(Deserialize)]
struct EventError {
    code: String,
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
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("case-intake-bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("case-intake-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Shares of the message kinds, in percent (new households: the rest).
#[derive(Debug, Clone, Copy, Serialize)]
struct Mix {
    join: f64,
    replace: f64,
    invalid: f64,
    duplicate: f64,
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    let mut mix = Mix {
        join: 0.0,
        replace: 0.0,
        invalid: 0.0,
        duplicate: 0.0,
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
            other => {
                return Err(format!(
                    "unknown kind {other}: use join, replace, invalid, duplicate"
                ));
            }
        }
    }
    if mix.join + mix.replace + mix.invalid + mix.duplicate > 100.0 {
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

fn env_name(section: &str, key: &str) -> String {
    format!(
        "{}__{}__{}",
        case_intake::infra::settings::ENV_PREFIX,
        section.to_uppercase(),
        key.to_uppercase()
    )
}

async fn run(args: Args) -> Result<bool> {
    check_args(&args)?;
    if let Some(id) = &args.cleanup {
        let conn = Connection::connect(&args.amqp, ConnectionProperties::default()).await?;
        cleanup_broker(&conn, &names_of(id)).await;
        let _ = conn.close(200, "OK".into()).await;
        eprintln!("deleted the broker objects of run {id}");
        return Ok(true);
    }
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if supervisor::wait_for_signal().await.is_ok() {
                eprintln!("signal: stopping the workers and cleaning up");
                stop.cancel();
            }
        });
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let names = names_of(&id);
    let db_url = format!("{}/{}", args.pg.trim_end_matches('/'), args.db);
    let overrides = overrides(&args, &db_url, &names)?;
    let config_path = std::env::temp_dir().join(format!("case-intake-bench-{id}.toml"));
    std::fs::write(&config_path, toml_of(&overrides))?;
    let loaded = Settings::load(Some(&config_path));
    let _ = std::fs::remove_file(&config_path);
    let settings = loaded?;
    let worker_bin = match &args.worker_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("case-intake"),
    };
    if !args.in_process && !worker_bin.exists() {
        return Err(format!(
            "worker binary {} not found: build it with `cargo build --release --bins`",
            worker_bin.display()
        )
        .into());
    }
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

    // Database: fresh, migrated, provisioned.
    if !args.keep_db {
        drop_database(&args.pg, &args.db).await?;
    }
    let mut bench_db = settings.database.clone();
    bench_db.max_connections = 4;
    bench_db.statement_timeout_ms = 600_000;
    bench_db.create_database = true;
    let pool = db::migrate(&bench_db).await?;
    let net = provision::provision(
        &pool,
        &format!("bench {id}"),
        "Bench agency",
        "bench agent",
        &["Kings".into(), "Queens".into()],
    )
    .await?;
    if args.preload > 0 {
        let p = provision::provision(
            &pool,
            &format!("bench preload {id}"),
            "Preload agency",
            "preload agent",
            &["Preload county".into()],
        )
        .await?;
        let vault = case_intake::store::crypto::Vault::from_settings(&settings.crypto)?;
        preload(&pool, &p, &vault, args.preload).await?;
    }

    // Broker: the events tap is bound before any worker can publish.
    let props = || ConnectionProperties::default().with_connection_name("case-intake-bench".into());
    let publishing = Connection::connect(&args.amqp, props()).await?;
    let consuming = Connection::connect(&args.amqp, props()).await?;
    let ledger: SharedLedger = Arc::default();
    let tap = start_tap(&consuming, &names, ledger.clone()).await?;
    {
        let ch = publishing.create_channel().await?;
        topology::declare(&ch, &settings.amqp).await?;
        let _ = ch.close(200, "OK".into()).await;
    }
    let publish = publishing.create_channel().await?;
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await?;

    let mut workers = Workers::start(&args, &settings, &overrides, &worker_bin)?;
    let ctx = Ctx {
        args: &args,
        id: &id,
        net: &net,
        names: &names,
        publish: &publish,
        ledger: &ledger,
        pool: &pool,
        stop: &stop,
    };
    let measured = measure(&ctx, &mut workers).await;
    let rss = workers.peak_rss_kib();
    eprintln!("stopping workers");
    let stopped = workers.stop().await;

    let result = match measured {
        Ok(m) => {
            let report = evaluate(&ctx, &settings, m, rss, stopped).await;
            match report {
                Ok(r) => {
                    print_report(&r);
                    if args.json {
                        println!("{}", serde_json::to_string(&r)?);
                    }
                    Ok(r.ok)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };

    // Cleanup, whatever happened.
    tap.abort();
    cleanup_broker(&publishing, &names).await;
    let _ = publishing.close(200, "OK".into()).await;
    let _ = consuming.close(200, "OK".into()).await;
    pool.close().await;
    if !args.keep_db
        && let Err(e) = drop_database(&args.pg, &args.db).await
    {
        eprintln!("case-intake-bench: dropping the database failed: {e}");
    }
    result
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
    ledger: &'a SharedLedger,
    pool: &'a PgPool,
    /// Cancelled by SIGINT or SIGTERM: stop, then clean up as usual.
    stop: &'a CancellationToken,
}

async fn drop_database(pg: &str, name: &str) -> Result<()> {
    let admin = PgPool::connect(&format!("{}/postgres", pg.trim_end_matches('/'))).await?;
    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(())
}

/// Inserts `total` cases (two per household, the first its head) with their households and
/// dedup rows into the network `p`, in chunks, straight with SQL.
async fn preload(pool: &PgPool, p: &Provisioned, vault: &Vault, total: u64) -> Result<()> {
    const CHUNK: u64 = 100_000;
    let started = Instant::now();
    // One sealed SSN for every row: the bytes are real, only their variety is not.
    let ssn = "111223333";
    let sealed = vault.seal(Purpose::Ssn, ssn.as_bytes());
    let hmac = vault.ssn_hmac(ssn).to_vec();
    let county = p.county_ids[0];
    let mut done = 0u64;
    while done < total {
        let n = CHUNK.min(total - done) as i64;
        let households = (n + 1) / 2;
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await?;
        let c0: i64 = sqlx::query_scalar("SELECT nextval('cases_id_seq')")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("SELECT setval('cases_id_seq', $1)")
            .bind(c0 + n - 1)
            .execute(&mut *tx)
            .await?;
        let h0: i64 = sqlx::query_scalar("SELECT nextval('households_id_seq')")
            .fetch_one(&mut *tx)
            .await?;
        sqlx::query("SELECT setval('households_id_seq', $1)")
            .bind(h0 + households - 1)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO cases (id, network_id, household_id, head_of_household, entry_agent,
                                mod_agent, \"group\", first_name, middle_name, last_name,
                                date_of_birth, email, mailing_address, mailing_city,
                                mailing_state, mailing_zip_code, street_address, street_city,
                                street_state, street_zip_code, street_county, yearly_expenses,
                                yearly_income, ss_number_sealed, ss_number_key_id,
                                ss_number_hmac, ss_number_last4)
             SELECT $1 + g, $2, $3 + g / 2, g % 2 = 0, $4, $4, $5, 'Pre' || g, 'Tom', 'Loaded',
                    date '1940-01-01' + (g % 25000)::int, 'pre' || g || '@example.org',
                    '123 Adams Street', 'Exampleville', 'NY', '12345', '123 Adams Street',
                    'Exampleville', 'NY', '12345', $6, 11580, 15350, $8, $9, $10, '3333'
               FROM generate_series(0::bigint, $7 - 1) AS g",
        )
        .bind(c0)
        .bind(p.network_id)
        .bind(h0)
        .bind(p.agent_id)
        .bind(p.group_id)
        .bind(county)
        .bind(n)
        .bind(&sealed)
        .bind(vault.active_key())
        .bind(&hmac)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO households (id, network_id, head_case_id)
             SELECT $1 + j, $2, $3 + 2 * j FROM generate_series(0::bigint, $4 - 1) AS j",
        )
        .bind(h0)
        .bind(p.network_id)
        .bind(c0)
        .bind(households)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO intake_outcomes (network_id, message_key, payload_hash, outcome, case_id,
                                          event_id, event, routing_key)
             SELECT $1, 'preload-' || ($2 + g), sha256(convert_to('preload-' || ($2 + g), 'UTF8')),
                    'created', $2 + g, gen_random_uuid(),
                    jsonb_build_object('specversion', '1.0', 'type', 'case.created',
                        'source', 'urn:case-intake', 'subject', 'preload-' || ($2 + g),
                        'data', jsonb_build_object('id', $2 + g, 'household_id', $3 + g / 2,
                            'first_name', 'Pre' || g, 'last_name', 'Loaded',
                            'street_address', '123 Adams Street', 'street_city', 'Exampleville',
                            'street_state', 'NY', 'street_zip_code', '12345')),
                    'case.created'
               FROM generate_series(0::bigint, $4 - 1) AS g",
        )
        .bind(p.network_id)
        .bind(c0)
        .bind(h0)
        .bind(n)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        done += n as u64;
        eprintln!(
            "preload: {done}/{total} cases ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
    }
    sqlx::raw_sql("VACUUM (ANALYZE) cases, households, intake_outcomes")
        .execute(pool)
        .await?;
    eprintln!(
        "preload: done in {:.0} s (vacuumed and analyzed)",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Declares the events exchange, binds a private queue to every routing key, and records every
/// event into `ledger`.
async fn start_tap(
    conn: &Connection,
    names: &Names,
    ledger: SharedLedger,
) -> Result<JoinHandle<()>> {
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        names.events.as_str().into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        names.tap.as_str().into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        names.tap.as_str().into(),
        names.events.as_str().into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let mut consumer = ch
        .basic_consume(
            names.tap.as_str().into(),
            "case-intake-bench".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(tokio::spawn(async move {
        let _channel = ch;
        loop {
            let Some(Ok(delivery)) = consumer.next().await else {
                lock(&ledger).closed = true;
                break;
            };
            let at = Instant::now();
            let parsed = serde_json::from_slice::<EventBody>(&delivery.data).ok();
            let mut l = lock(&ledger);
            l.total += 1;
            match parsed {
                Some(EventBody {
                    id,
                    event_type,
                    subject: Some(subject),
                    data,
                }) => l.by_key.entry(subject).or_default().push(Arrival {
                    id,
                    at,
                    event_type,
                    code: data.error.map(|e| e.code),
                    household_id: data.household_id,
                }),
                _ => l.unparsable += 1,
            }
        }
    }))
}

async fn cleanup_broker(conn: &Connection, names: &Names) {
    let Ok(ch) = conn.create_channel().await else {
        eprintln!("case-intake-bench: cannot open a channel to delete the queues");
        return;
    };
    for q in [
        names.intake.clone(),
        topology::dead_letter_queue(&names.intake),
        topology::retry_queue(&names.intake),
        topology::parked_queue(&names.intake),
        names.tap.clone(),
    ] {
        if let Err(e) = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            eprintln!("case-intake-bench: deleting queue {q}: {e}");
        }
    }
    if let Err(e) = ch
        .exchange_delete(
            names.events.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
    {
        eprintln!("case-intake-bench: deleting exchange {}: {e}", names.events);
    }
    let _ = ch.close(200, "OK".into()).await;
}

/// The workers under test.
enum Workers {
    Processes(Vec<Child>),
    InProcess {
        shutdown: CancellationToken,
        handles: Vec<JoinHandle<Result<(), sqlx::Error>>>,
    },
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
            let shutdown = CancellationToken::new();
            let handles = (0..args.workers)
                .map(|_| tokio::spawn(supervisor::run(settings.clone(), shutdown.clone())))
                .collect();
            return Ok(Workers::InProcess { shutdown, handles });
        }
        let mut children = Vec::with_capacity(args.workers);
        for _ in 0..args.workers {
            let mut cmd = Command::new(bin);
            cmd.arg("run")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            for (s, k, v) in overrides {
                cmd.env(env_name(s, k), v);
            }
            match cmd.spawn() {
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
            Workers::InProcess { .. } => Vec::new(),
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
            Workers::InProcess { handles, .. } => {
                if handles.iter().any(JoinHandle::is_finished) {
                    return Err("an in-process worker stopped early".into());
                }
            }
        }
        Ok(())
    }

    /// Peak resident set (VmHWM) of each worker process, or of this process when in-process.
    fn peak_rss_kib(&self) -> Vec<u64> {
        match self {
            Workers::Processes(c) => c.iter().filter_map(|c| vm_hwm_kib(c.id())).collect(),
            Workers::InProcess { .. } => vm_hwm_kib(std::process::id()).into_iter().collect(),
        }
    }

    /// SIGTERM, then waits up to 60 s (SIGKILL after that); describes any unclean exit.
    async fn stop(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        match self {
            Workers::Processes(children) => {
                for c in children.iter() {
                    let ok = Command::new("kill")
                        .args(["-TERM", &c.id().to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    if !ok {
                        problems.push(format!("could not signal worker {}", c.id()));
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(60);
                for c in children.iter_mut() {
                    loop {
                        match c.try_wait() {
                            Ok(Some(status)) => {
                                if !status.success() {
                                    problems.push(format!("worker {} exited: {status}", c.id()));
                                }
                                break;
                            }
                            Ok(None) if Instant::now() < deadline => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                            _ => {
                                problems.push(format!("worker {} killed after 60 s", c.id()));
                                let _ = c.kill();
                                let _ = c.wait();
                                break;
                            }
                        }
                    }
                }
            }
            Workers::InProcess { shutdown, handles } => {
                shutdown.cancel();
                for h in handles.drain(..) {
                    match tokio::time::timeout(Duration::from_secs(60), h).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(Ok(Err(e))) => problems.push(format!("in-process worker: {e}")),
                        Ok(Err(e)) => problems.push(format!("in-process worker: {e}")),
                        Err(_) => problems.push("in-process worker did not stop in 60 s".into()),
                    }
                }
            }
        }
        problems
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Workers::Processes(children) = self {
            for c in children.iter_mut() {
                if let Ok(None) = c.try_wait() {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
    }
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// A valid body (the seed's example) for message `n`.
fn base_body(n: &str, county: i64) -> Value {
    let mut body = case_intake_harness::fixtures::seed_body(county);
    body["first_name"] = json!(format!("Person{n}"));
    body["head_of_household"] = json!(true);
    body
}

fn msg(key: String, body: &Value, kind: Kind) -> Msg {
    Msg {
        key: key.into(),
        body: serde_json::to_vec(body).unwrap_or_default().into(),
        kind,
        original: kind,
    }
}

/// The measured messages, by default ~60% new households, ~20% joins, ~13% head replacements
/// on the hot households, ~2% invalid, ~5% identical re-publications of an earlier key.
fn plan(ctx: &Ctx<'_>, rng: &mut StdRng, households: &[i64]) -> Vec<Msg> {
    let counties = &ctx.net.county_ids;
    let hot = &households[..ctx.args.hot.min(households.len())];
    let mut msgs: Vec<Msg> = Vec::with_capacity(ctx.args.count);
    for i in 0..ctx.args.count {
        let key = format!("bench-{}-{i}", ctx.id);
        let county = counties[rng.random_range(0..counties.len())];
        let mut body = base_body(&i.to_string(), county);
        let roll: f64 = rng.random::<f64>() * 100.0;
        let mix = ctx.args.mix;
        let m = if roll < mix.duplicate && i > 0 {
            let original = msgs[rng.random_range(0..i)].clone();
            Msg {
                kind: Kind::Duplicate,
                ..original
            }
        } else if roll < mix.duplicate + mix.invalid {
            if i % 2 == 0 {
                body.as_object_mut().map(|b| b.remove("last_name"));
            } else {
                body["street_zip_code"] = "1234".into();
            }
            msg(key, &body, Kind::Invalid)
        } else if roll < mix.duplicate + mix.invalid + mix.replace {
            body["household"] = hot[rng.random_range(0..hot.len())].into();
            msg(key, &body, Kind::ReplaceHead)
        } else if roll < mix.duplicate + mix.invalid + mix.replace + mix.join {
            body["household"] = households[rng.random_range(0..households.len())].into();
            body["head_of_household"] = false.into();
            msg(key, &body, Kind::Join)
        } else {
            msg(key, &body, Kind::NewHousehold)
        };
        msgs.push(m);
    }
    msgs
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
        if !c.is_ack() {
            return Err("the broker nacked an intake".into());
        }
        if c.take_message().is_some() {
            return Err("an intake was unroutable (returned)".into());
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
        let props = BasicProperties::default()
            .with_message_id(m.key.as_ref().into())
            .with_correlation_id(m.key.as_ref().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers.clone());
        sent.push(Instant::now());
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &m.body,
                props,
            )
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

fn auth_headers(token: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert(
        "authorization".into(),
        AMQPValue::LongString(LongString::from(format!("Token {token}").into_bytes())),
    );
    headers
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

fn cpu_snapshot(workers: &[u32]) -> CpuSnap {
    let mut snap = CpuSnap {
        at: Some(Instant::now()),
        ..Default::default()
    };
    if let Some(line) = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    {
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() >= 8 {
            snap.machine_total = v[..8].iter().sum();
            snap.machine_busy = snap.machine_total - v[3] - v[4];
        }
    }
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return snap;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let role = if pid == me {
            Role::Bench
        } else if workers.contains(&pid) {
            Role::Workers
        } else {
            match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
                Ok(c) if c.trim() == "postgres" => Role::Postgres,
                Ok(c) if c.trim() == "beam.smp" => Role::Rabbitmq,
                _ => continue,
            }
        };
        if let Some(t) = proc_ticks(pid) {
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
async fn measure(ctx: &Ctx<'_>, workers: &mut Workers) -> Result<Measured> {
    let args = ctx.args;
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut rng = StdRng::seed_from_u64(seed);
    let headers = auth_headers(&ctx.net.token);
    let deadline = Instant::now() + Duration::from_secs(args.timeout);

    // Pre-phase: households that joins and head replacements refer to.
    let prephase: Vec<Msg> = (0..args.households)
        .map(|j| {
            let county = ctx.net.county_ids[j % ctx.net.county_ids.len()];
            msg(
                format!("bench-{}-h{j}", ctx.id),
                &base_body(&format!("h{j}"), county),
                Kind::NewHousehold,
            )
        })
        .collect();
    eprintln!(
        "pre-phase: creating {} households (seed {seed})",
        prephase.len()
    );
    let pre = Arc::new(prephase.clone());
    publish_all(
        ctx.publish.clone(),
        ctx.names.intake.clone(),
        pre,
        headers.clone(),
        None,
        args.outstanding,
        Arc::default(),
    )
    .await?;
    loop {
        wait_broken(ctx, workers)?;
        if lock(ctx.ledger).total >= prephase.len() {
            break;
        }
        if Instant::now() > deadline {
            return Err(
                "timed out waiting for the pre-phase events (is the worker running?)".into(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let households: Vec<i64> = {
        let l = lock(ctx.ledger);
        prephase
            .iter()
            .filter_map(|m| {
                l.by_key
                    .get(m.key.as_ref())
                    .and_then(|a| a.first())
                    .and_then(|a| a.household_id)
            })
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
    let base_total = lock(ctx.ledger).total;

    let msgs = Arc::new(plan(ctx, &mut rng, &households));
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
    let t0 = Instant::now();
    let mut publisher = Some(tokio::spawn(publish_all(
        ctx.publish.clone(),
        ctx.names.intake.clone(),
        msgs.clone(),
        headers,
        args.rate,
        args.outstanding,
        progress.clone(),
    )));
    let mut sent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    let mut last = (t0, 0usize);
    let (mut timed_out, mut interrupted) = (false, false);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.stop.cancelled() => interrupted = true,
        }
        ticks += 1;
        let outcomes = lock(ctx.ledger).total - base_total;
        if ticks.is_multiple_of(10) {
            let now = Instant::now();
            let rate = (outcomes - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
            last = (now, outcomes);
            eprintln!(
                "[{:>4.0} s] published {:>7}/{} confirmed {:>7} outcomes {:>7} ({:>6.0}/s)",
                t0.elapsed().as_secs_f64(),
                progress.published.load(Ordering::Relaxed),
                msgs.len(),
                progress.confirmed.load(Ordering::Relaxed),
                outcomes,
                rate
            );
        }
        if publisher.as_ref().is_some_and(JoinHandle::is_finished)
            && let Some(handle) = publisher.take()
        {
            sent = handle.await??;
        }
        if interrupted {
            break;
        }
        if publisher.is_none() && outcomes >= msgs.len() {
            break;
        }
        if Instant::now() > deadline {
            timed_out = true;
            break;
        }
        if let Err(e) = wait_broken(ctx, workers) {
            if let Some(handle) = publisher.take() {
                handle.abort();
            }
            return Err(e.into());
        }
    }
    let cpu_end = cpu_snapshot(&pids);
    if let Some(handle) = publisher.take() {
        handle.abort();
        return Err(if interrupted {
            "interrupted while publishing".into()
        } else {
            format!(
                "timed out after {} s while publishing ({} published)",
                args.timeout,
                progress.published.load(Ordering::Relaxed)
            )
            .into()
        });
    }
    // Late or extra events (a re-published outbox row) would show up here.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Measured {
        prephase,
        msgs: Arc::unwrap_or_clone(msgs),
        sent,
        cpu: cores_used(&cpu_start, &cpu_end),
        timed_out,
        interrupted,
        db_bytes_before,
        wal_before,
    })
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
}

#[derive(Serialize)]
struct Check {
    name: &'static str,
    ok: bool,
    detail: String,
}

#[derive(Serialize)]
struct Report {
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

/// What the received events say about the publications.
struct EventStats {
    latencies: Vec<Duration>,
    outcomes: Outcomes,
    last_arrival: Option<Instant>,
    missing_keys: Vec<String>,
    extra: usize,
    multi_id: usize,
    wrong: usize,
    unexpected: usize,
    unparsable: usize,
}

/// Pairs the n-th event of each key with its n-th publication (publications of a key are in
/// publish order: `None` for the pre-phase, else the index of the measured message).
fn match_events(
    ledger: &Ledger,
    per_key: &HashMap<&str, (bool, Vec<Option<usize>>)>,
    sent: &[Instant],
) -> EventStats {
    let mut st = EventStats {
        latencies: Vec::with_capacity(sent.len()),
        outcomes: Outcomes::default(),
        last_arrival: None,
        missing_keys: Vec::new(),
        extra: 0,
        multi_id: 0,
        wrong: 0,
        unexpected: 0,
        unparsable: ledger.unparsable,
    };
    for (key, (valid, pubs)) in per_key {
        let arrivals = ledger.by_key.get(*key).map_or(&[][..], Vec::as_slice);
        if arrivals.len() < pubs.len() {
            st.missing_keys.push((*key).to_owned());
        }
        st.extra += arrivals.len().saturating_sub(pubs.len());
        if arrivals.iter().map(|a| &a.id).collect::<HashSet<_>>().len() > 1 {
            st.multi_id += 1;
        }
        if let Some(a) = arrivals.first() {
            let expected = if *valid {
                a.event_type == "case.created"
            } else {
                a.event_type == "case.failed" && a.code.as_deref() == Some("validation_failed")
            };
            if !expected {
                st.wrong += 1;
            }
        }
        for (k, idx) in pubs.iter().enumerate() {
            let Some(idx) = idx else { continue };
            let Some(a) = arrivals.get(k) else {
                st.outcomes.missing += 1;
                continue;
            };
            if let Some(at) = sent.get(*idx) {
                st.latencies.push(a.at.saturating_duration_since(*at));
            }
            st.last_arrival = Some(st.last_arrival.map_or(a.at, |l| l.max(a.at)));
            if k > 0 {
                st.outcomes.duplicates += 1;
            } else if a.event_type == "case.created" {
                st.outcomes.created += 1;
            } else {
                *st.outcomes
                    .failed
                    .entry(a.code.clone().unwrap_or_else(|| a.event_type.clone()))
                    .or_default() += 1;
            }
        }
    }
    st.unexpected = ledger
        .by_key
        .keys()
        .filter(|k| !per_key.contains_key(k.as_str()))
        .count();
    st
}

/// Matches events to messages, computes the figures and runs the checks.
async fn evaluate(
    ctx: &Ctx<'_>,
    settings: &Settings,
    m: Measured,
    rss: Vec<u64>,
    stopped: Vec<String>,
) -> Result<Report> {
    let mut checks = Vec::new();
    let mut check = |name: &'static str, ok: bool, detail: String| {
        checks.push(Check { name, ok, detail });
    };
    check(
        "finished in time",
        !m.timed_out && !m.interrupted,
        if m.timed_out {
            format!("gave up after {} s", ctx.args.timeout)
        } else if m.interrupted {
            "interrupted".into()
        } else {
            String::new()
        },
    );

    // Every publication of a key, in publish order: (message index or None for the pre-phase).
    let mut per_key: HashMap<&str, (bool, Vec<Option<usize>>)> = HashMap::new();
    for p in &m.prephase {
        per_key.insert(p.key.as_ref(), (true, vec![None]));
    }
    let mut mix: BTreeMap<String, usize> = BTreeMap::new();
    for (i, msg) in m.msgs.iter().enumerate() {
        let kind = serde_json::to_value(msg.kind)?;
        *mix.entry(kind.as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        per_key
            .entry(msg.key.as_ref())
            .or_insert_with(|| (msg.original.valid(), Vec::new()))
            .1
            .push(Some(i));
    }

    let first_sent = m.sent.first().copied();
    let EventStats {
        latencies,
        outcomes,
        last_arrival,
        mut missing_keys,
        extra,
        multi_id,
        wrong,
        unexpected,
        unparsable,
    } = match_events(&lock(ctx.ledger), &per_key, &m.sent);
    missing_keys.sort_unstable();
    check(
        "an outcome event for every publication",
        missing_keys.is_empty(),
        if missing_keys.is_empty() {
            String::new()
        } else {
            format!(
                "{} keys short of events ({} measured publications), e.g. {}",
                missing_keys.len(),
                outcomes.missing,
                missing_keys[..missing_keys.len().min(5)].join(", ")
            )
        },
    );
    check(
        "no extra events",
        extra == 0 && unexpected == 0 && unparsable == 0,
        format!("{extra} extra, {unexpected} for unknown keys, {unparsable} unparsable"),
    );
    check(
        "one distinct event id per key (duplicates repeat it)",
        multi_id == 0,
        format!("{multi_id} keys with more than one event id"),
    );
    check(
        "outcome as expected (valid → created, invalid → validation_failed)",
        wrong == 0,
        format!("{wrong} keys with an unexpected outcome"),
    );

    let valid_keys = per_key.values().filter(|(v, _)| *v).count() as i64;
    let cases: i64 = sqlx::query_scalar("SELECT count(*) FROM cases WHERE network_id = $1")
        .bind(ctx.net.network_id)
        .fetch_one(ctx.pool)
        .await?;
    check(
        "cases = distinct valid keys",
        cases == valid_keys,
        format!("{cases} cases, {valid_keys} distinct valid keys"),
    );
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM intake_outcomes WHERE network_id = $1 AND outcome IS NOT NULL",
    )
    .bind(ctx.net.network_id)
    .fetch_one(ctx.pool)
    .await?;
    check(
        "one recorded outcome per distinct key",
        recorded == per_key.len() as i64,
        format!("{recorded} outcomes, {} distinct keys", per_key.len()),
    );
    let unpublished: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(ctx.pool)
        .await?;
    check(
        "outbox drained",
        unpublished == 0,
        format!("{unpublished} unpublished rows"),
    );
    let bad: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM households h
          WHERE (SELECT count(*) FROM cases c WHERE c.household_id = h.id AND c.head_of_household) <> 1
             OR NOT EXISTS (SELECT 1 FROM cases c WHERE c.id = h.head_case_id AND c.household_id = h.id AND c.head_of_household)",
    )
    .fetch_one(ctx.pool)
    .await?;
    check(
        "every household has exactly one head, its own case",
        bad == 0,
        format!("{bad} households violate it"),
    );
    check(
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

    let elapsed = match (first_sent, last_arrival) {
        (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64(),
        _ => 0.0,
    };
    let publish_secs = match (m.sent.first(), m.sent.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let n = m.msgs.len();
    // Publications that got their outcome: all of them unless the run was cut short.
    let done = latencies.len().max(1) as f64;
    let ok = checks.iter().all(|c| c.ok);
    Ok(Report {
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
        intakes_per_s: if elapsed > 0.0 { done / elapsed } else { 0.0 },
        publish_per_s: if publish_secs > 0.0 {
            n as f64 / publish_secs
        } else {
            0.0
        },
        latency_ms: latency(latencies),
        worker_peak_rss_kib: rss,
        outcomes,
        cpu_cores: m.cpu,
        db_bytes_per_intake: (db_bytes_after - m.db_bytes_before) as f64 / done,
        wal_bytes_per_intake: wal / done,
        checks,
        ok,
    })
}

fn print_report(r: &Report) {
    let mix: Vec<String> = r.mix.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!(
        "case-intake-bench: {} intakes ({}); {} {} worker(s); window {}, prefetch {}, \
         consumers {}, pool {}, window wait {} ms; {}; preloaded {} cases",
        r.count,
        mix.join(", "),
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
    );
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
    let failed: Vec<String> = r
        .outcomes
        .failed
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "outcomes   : created {}, failed [{}], duplicates {}, missing {}",
        r.outcomes.created,
        failed.join(", "),
        r.outcomes.duplicates,
        r.outcomes.missing
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
    let cpu: Vec<String> = r
        .cpu_cores
        .iter()
        .map(|(k, v)| format!("{k} {v:.2}"))
        .collect();
    println!("cpu (cores): {}", cpu.join(", "));
    println!(
        "database   : {:.0} bytes per intake stored, {:.0} bytes of WAL per intake (server-wide)",
        r.db_bytes_per_intake, r.wal_bytes_per_intake
    );
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
