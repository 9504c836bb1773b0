//! The command line: parses the arguments of the `case-intake` binary, calls into `app` (the
//! worker) and `admin` (operator commands), and renders what they return. On top of every
//! other layer; only `main.rs` calls it.

mod bulk;
mod dismiss;
mod duplicates;
mod edit;
mod failed;
mod groups;
mod parked;
mod publish;
mod status;
mod tenancy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::admin::{healthcheck, provision, rotate};
use crate::app::supervisor;
use crate::infra::db;
use crate::infra::settings::Settings;
use crate::store::crypto::Vault;

use bulk::{BulkArgs, Selection};
use duplicates::DuplicatesCommand;
use failed::FailedCommand;
use parked::ParkedCommand;
use tenancy::TenancyCommand;

/// What a command returns: its error is printed by `main` and sets a failing exit code.
pub type CliResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(name = "case-intake", version, about)]
pub struct Cli {
    /// A TOML configuration file layered over the built-in defaults.
    #[arg(long, global = true, env = "CASE_INTAKE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the worker (the default): migrate, then consume intakes until SIGINT/SIGTERM.
    Run,
    /// Create the database if needed and apply pending migrations, then exit. (`run` does so
    /// too; every other command needs a database migrated already.)
    Migrate,
    /// Create a network with a group, an agent, an API key and counties in one step; prints
    /// JSON with the token (shown once: only its hash is stored).
    Provision {
        /// The new network's name (unique).
        #[arg(long)]
        network: String,
        /// The name of the network's first group, which the agent belongs to.
        #[arg(long, default_value = "Intake")]
        group: String,
        /// The name of the agent the API key acts as (cases record it as their entry agent).
        #[arg(long, default_value = "intake-api")]
        agent: String,
        /// A county of the network; repeat for several.
        #[arg(long = "county")]
        counties: Vec<String>,
        /// Write the token to this file (created readable by its owner only) instead of
        /// printing it.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Publish one intake (a JSON file or `-` for stdin) to the intake queue, persistent, with
    /// publisher confirms; `--wait` prints its outcome event.
    Publish(publish::PublishArgs),
    /// Revoke an API key by id; it stops working for the next message (`key revoke ID`).
    RevokeKey { id: i64 },
    #[command(flatten)]
    Tenancy(TenancyCommand),
    /// Re-encrypt every SSN and failed-intake payload not sealed with `crypto.active_key`
    /// (keep the old key configured until this has finished).
    RotateKey,
    /// Inspect failed intakes.
    Failed {
        #[command(subcommand)]
        command: FailedCommand,
    },
    /// Possible-duplicate clients flagged at intake: list, show and dismiss the pairs, set a
    /// network's duplicate policy, compute the match keys of older cases.
    Duplicates {
        #[command(subcommand)]
        command: DuplicatesCommand,
    },
    /// Inspect, drop or re-publish messages parked in `<intake_queue>.parked`: messages the
    /// worker's AMQP client cannot even parse. Talks to RabbitMQ only, never to the database.
    Parked {
        #[command(subcommand)]
        command: ParkedCommand,
    },
    /// Ask the running worker's `/readyz` at `http.address` (`--live`: `/healthz`); exits 0 when
    /// it answers 200 within 2 s, 1 otherwise. For container health checks.
    Healthcheck {
        /// Ask liveness (`/healthz`) instead of readiness.
        #[arg(long)]
        live: bool,
    },
    /// What became of a message key: its outcome in every network where it has one (or in
    /// --network), as the status endpoint answers it. Exits 1 when it has none anywhere.
    Status {
        /// The message key.
        key: String,
        /// Only this network (keys are per network).
        #[arg(long)]
        network: Option<i64>,
        /// Print a JSON array: the endpoint's objects, each with its `network` (`"-"` for
        /// intakes that failed authentication).
        #[arg(long)]
        json: bool,
    },
    /// Process failed intakes again under their original message keys (throttled with
    /// --rate, or as a --dry-run). Their events go through the outbox: a running worker
    /// publishes them.
    Replay {
        #[command(flatten)]
        select: Selection,
        #[command(flatten)]
        bulk: BulkArgs,
    },
}

/// Runs one command.
pub async fn dispatch(command: Command, settings: Settings) -> CliResult {
    match command {
        Command::Run => run(settings).await,
        Command::Migrate => {
            db::migrate(&settings.database).await?.close().await;
            tracing::info!("migrations applied");
            Ok(())
        }
        Command::Provision {
            network,
            group,
            agent,
            counties,
            token_file,
        } => {
            let pool = db::open_current(&settings.database).await?;
            let p = provision::provision(&pool, &network, &group, &agent, &counties).await?;
            print_provisioned(p, token_file.as_deref())
        }
        Command::Publish(args) => publish::publish(args, &settings).await,
        Command::Failed { command } => failed::failed_command(command, &settings).await,
        Command::Duplicates { command } => duplicates::duplicates_command(command, &settings).await,
        Command::Replay { select, bulk } => failed::replay(&select, &bulk, &settings).await,
        Command::Status { key, network, json } => {
            status::status(&key, network, json, &settings).await
        }
        Command::RotateKey => rotate_key(&settings).await,
        Command::Healthcheck { live } => {
            let path = if live { "/healthz" } else { "/readyz" };
            healthcheck::check(&settings.http.address, path, Duration::from_secs(2)).await?;
            Ok(())
        }
        Command::Parked { command } => parked::parked_command(command, &settings).await,
        Command::RevokeKey { id } => {
            let pool = db::open_current(&settings.database).await?;
            tenancy::revoke(&pool, id, false).await
        }
        Command::Tenancy(command) => tenancy::tenancy_command(command, &settings).await,
    }
}

/// Prints what `provision` created; with a token file the token goes there (owner-only) and
/// the output names the file instead.
fn print_provisioned(p: provision::Provisioned, token_file: Option<&Path>) -> CliResult {
    let mut out = serde_json::to_value(&p)?;
    if let Some(path) = token_file {
        write_private(path, &p.token)
            .map_err(|e| format!("cannot write the token file {}: {e}", path.display()))?;
        out["token"] = serde_json::Value::Null;
        out["token_file"] = path.display().to_string().into();
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

/// Writes `text` to `path`, replacing it, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    writeln!(file, "{text}")
}

async fn rotate_key(settings: &Settings) -> CliResult {
    let pool = db::open_current(&settings.database).await?;
    let vault = Vault::from_settings(&settings.crypto)?;
    let done = rotate::rotate(&pool, &vault, |r| {
        eprintln!("re-sealed {} SSNs, {} payloads", r.ssns, r.payloads)
    })
    .await?;
    println!(
        "re-sealed {} SSNs and {} failed-intake payloads under key {:?}",
        done.ssns,
        done.payloads,
        vault.active_key()
    );
    Ok(())
}

/// Runs the worker; the first SIGINT/SIGTERM starts a graceful stop bounded by
/// `shutdown.timeout_ms`, a second one exits at once. Either way nothing is lost: whatever
/// was not acked is redelivered by the broker and absorbed by the dedup table.
async fn run(settings: Settings) -> CliResult {
    let shutdown = CancellationToken::new();
    let timeout = Duration::from_millis(settings.shutdown.timeout_ms);
    let worker = tokio::spawn(supervisor::run(settings, shutdown.clone()));
    supervisor::wait_for_signal().await?;
    tracing::info!("shutdown requested: finishing in-flight intakes");
    shutdown.cancel();
    tokio::select! {
        r = worker => { r??; }
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!("shutdown timeout reached; exiting with work handed back to the broker");
        }
        _ = supervisor::wait_for_signal() => {
            tracing::warn!("second signal: exiting now; unacked intakes will be redelivered");
            std::process::exit(130);
        }
    }
    Ok(())
}
