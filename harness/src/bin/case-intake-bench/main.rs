//! `case-intake-bench`: end-to-end throughput and latency benchmark of the worker (RabbitMQ →
//! PostgreSQL → outbox → events) on its own database, queue and exchange, followed by the
//! exactly-once and household checks. Results and method: docs/benchmarks.md.
//!
//! This file holds the run as a whole (setup, the phases, teardown); the steps are in the
//! modules below.

mod args;
mod bus;
mod config;
mod database;
mod evaluate;
mod fleet;
mod measure;
mod phases;
mod plan;
mod preload;
mod report;

use std::process::ExitCode;

use case_intake::admin::provision::Provisioned;
use case_intake::app::supervisor;
use case_intake::infra::settings::Settings;
use case_intake_harness::broker;
use case_intake_harness::cli;
use case_intake_harness::cli::BoxError;
use case_intake_harness::db;
use case_intake_harness::ledger::SharedLog;
use case_intake_harness::workers;
use clap::Parser;
use lapin::Channel;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::args::{Args, check_args};
use crate::bus::{Bus, cleanup_broker, open_broker};
use crate::config::{announce, load_settings, overrides};
use crate::database::open_database;
use crate::phases::all_phases;
use crate::preload::Preloaded;

pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// The broker objects of this run.
pub struct Names {
    pub intake: String,
    pub events: String,
    pub tap: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    cli::exit_code_of("case-intake-bench", ExitCode::from(2), run(args))
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
pub struct WorkerStart<'a> {
    pub settings: &'a Settings,
    pub overrides: &'a [(String, String, String)],
    pub bin: &'a std::path::Path,
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
pub struct Ctx<'a> {
    pub args: &'a Args,
    pub id: &'a str,
    pub net: &'a Provisioned,
    pub names: &'a Names,
    pub publish: &'a Channel,
    pub ledger: &'a SharedLog,
    pub pool: &'a PgPool,
    /// Cancelled by SIGINT or SIGTERM: stop, then clean up as usual.
    pub stop: &'a CancellationToken,
    pub preloaded: Preloaded,
    /// The seed of the message mix, the same for every phase.
    pub seed: u64,
}
