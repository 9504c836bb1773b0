//! The `case-intake` binary: parses the command line, loads settings, starts telemetry and
//! calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use case_intake::admin::parked::{self, Parked};
use case_intake::admin::{failed, provision};
use case_intake::app::{supervisor, telemetry};
use case_intake::infra::settings::Settings;
use case_intake::infra::{db, stack};

#[derive(Parser)]
#[command(name = "case-intake", version, about)]
struct Cli {
    /// A TOML configuration file layered over the built-in defaults.
    #[arg(long, global = true, env = "CASE_INTAKE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker (the default): migrate, then consume intakes until SIGINT/SIGTERM.
    Run,
    /// Create the database if needed and apply pending migrations, then exit.
    Migrate,
    /// Create a network with a group, an agent, an API key and counties; prints JSON with the
    /// token (shown once: only its hash is stored).
    Provision {
        #[arg(long)]
        network: String,
        #[arg(long, default_value = "Intake")]
        group: String,
        #[arg(long, default_value = "intake-api")]
        agent: String,
        /// A county of the network; repeat for several.
        #[arg(long = "county")]
        counties: Vec<String>,
    },
    /// Revoke an API key by id; it stops working for the next message.
    RevokeKey { id: i64 },
    /// Re-encrypt every SSN and failed-intake payload not sealed with `crypto.active_key`
    /// (keep the old key configured until this has finished).
    RotateKey,
    /// Inspect failed intakes.
    Failed {
        #[command(subcommand)]
        command: FailedCommand,
    },
    /// Inspect, drop or re-publish messages parked in `<intake_queue>.parked`: messages the
    /// worker's AMQP client cannot even parse. Talks to RabbitMQ only, never to the database.
    Parked {
        #[command(subcommand)]
        command: ParkedCommand,
    },
    /// Process failed intakes again under their original message keys. Their events go
    /// through the outbox: a running worker publishes them.
    Replay {
        #[command(flatten)]
        select: Selection,
        /// Replay every open failed intake (required when no other filter is given).
        #[arg(long)]
        all: bool,
        /// Print the totals as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum FailedCommand {
    /// List failed intakes (open ones unless --include-resolved).
    List {
        #[command(flatten)]
        select: Selection,
        #[arg(long)]
        include_resolved: bool,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Show every attempt of a message key: payload (SSN masked), error, attempts.
    Show {
        key: String,
        #[arg(long)]
        network: Option<i64>,
    },
}

#[derive(Subcommand)]
enum ParkedCommand {
    /// Show parked messages (properties and headers escaped, SSNs masked, credentials
    /// redacted, never the body), then put them all back.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Remove parked messages for good (the others are put back).
    Drop {
        #[command(flatten)]
        select: ParkedSelection,
        /// Confirm `--all`; without it `--all` only prints how many would be dropped.
        #[arg(long)]
        yes: bool,
    },
    /// Publish a sanitized copy to the intake queue (publisher confirms), then remove the
    /// parked original.
    Republish {
        #[command(flatten)]
        select: ParkedSelection,
    },
}

/// `--id ID` or `--all`, exactly one.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct ParkedSelection {
    /// A message id as `parked list` prints it (12 hex digits).
    #[arg(long)]
    id: Option<String>,
    /// Every message parked when the command starts.
    #[arg(long)]
    all: bool,
}

impl ParkedSelection {
    fn selection(&self) -> Result<parked::Selection, parked::ParkedError> {
        match &self.id {
            Some(id) => parked::Selection::id(id),
            None => Ok(parked::Selection::All),
        }
    }
}

/// Filters shared by `failed list` and `replay`.
#[derive(clap::Args)]
struct Selection {
    /// One message key.
    #[arg(long)]
    key: Option<String>,
    /// An error code, e.g. validation_failed.
    #[arg(long)]
    code: Option<String>,
    #[arg(long)]
    network: Option<i64>,
    /// Failed at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, value_parser = parse_time)]
    until: Option<chrono::DateTime<chrono::Utc>>,
}

impl Selection {
    fn filter(&self, include_resolved: bool, limit: i64) -> Result<failed::Filter, String> {
        if let Some(code) = &self.code
            && case_intake::intake::error::ErrorCode::parse(code).is_none()
        {
            return Err(format!("unknown error code {code:?}"));
        }
        Ok(failed::Filter {
            key: self.key.clone(),
            code: self.code.clone(),
            network: self.network,
            since: self.since,
            until: self.until,
            include_resolved,
            limit,
        })
    }

    fn is_empty(&self) -> bool {
        self.key.is_none()
            && self.code.is_none()
            && self.network.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

fn parse_time(s: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
        .map_err(|_| format!("{s:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

fn main() -> ExitCode {
    reserve_io_stack();
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("case-intake: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(stack::RUNTIME_THREAD_STACK_BYTES)
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("case-intake: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(dispatch(cli.command.unwrap_or(Command::Run), settings));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "case-intake failed");
            ExitCode::FAILURE
        }
    }
}

/// Gives threads spawned without an explicit stack size, lapin's io thread among them, the
/// stack that parses the deepest header a frame can hold (src/stack.rs); a larger
/// `RUST_MIN_STACK` set by the operator is kept.
fn reserve_io_stack() {
    let wanted = stack::IO_THREAD_STACK_BYTES;
    let current = std::env::var("RUST_MIN_STACK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    if current < wanted {
        // SAFETY: called first thing in `main`, before any thread exists, so nothing reads the
        // environment concurrently.
        unsafe { std::env::set_var("RUST_MIN_STACK", wanted.to_string()) };
    }
}

async fn dispatch(command: Command, settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
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
        } => {
            let pool = db::migrate(&settings.database).await?;
            let p = provision::provision(&pool, &network, &group, &agent, &counties).await?;
            println!("{}", serde_json::to_string_pretty(&p)?);
            Ok(())
        }
        Command::Failed {
            command:
                FailedCommand::List {
                    select,
                    include_resolved,
                    limit,
                    json,
                },
        } => {
            let pool = db::migrate(&settings.database).await?;
            let rows = failed::list(&pool, &select.filter(include_resolved, limit)?).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!(
                    "{:>8}  {:<25}  {:>7}  {:<22}  {:>8}  key",
                    "id", "failed at", "network", "code", "attempts"
                );
                for r in &rows {
                    println!(
                        "{:>8}  {:<25}  {:>7}  {:<22}  {:>8}  {}",
                        r.id,
                        r.created_at.format("%Y-%m-%d %H:%M:%S%.3f"),
                        r.network_id.map_or("-".into(), |n| n.to_string()),
                        r.error_code,
                        r.attempts,
                        r.message_key.as_deref().unwrap_or("-"),
                    );
                }
                eprintln!("{} failed intake(s)", rows.len());
            }
            Ok(())
        }
        Command::Failed {
            command: FailedCommand::Show { key, network },
        } => {
            let pool = db::migrate(&settings.database).await?;
            let vault = case_intake::store::crypto::Vault::from_settings(&settings.crypto)?;
            let rows = failed::show(&pool, &vault, &key, network).await?;
            if rows.is_empty() {
                return Err(format!("no failed intake with key {key:?}").into());
            }
            println!("{}", serde_json::to_string_pretty(&rows)?);
            Ok(())
        }
        Command::Replay { select, all, json } => {
            if select.is_empty() && !all {
                return Err(
                    "choose what to replay: --key, --code, --since/--until, --network or --all"
                        .into(),
                );
            }
            let pool = db::migrate(&settings.database).await?;
            let filter = select.filter(false, 0)?;
            let ctx = supervisor::window_context(&settings);
            let report = failed::replay(&pool, &ctx, &filter, settings.intake.window_size, |r| {
                eprintln!(
                    "replayed {} (created {}, failed again {}, already done {}, skipped {})",
                    r.selected, r.created, r.failed, r.duplicate, r.skipped
                );
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "replayed {}: created {}, failed again {}, already done {}, skipped (no key) {}",
                    report.selected,
                    report.created,
                    report.failed,
                    report.duplicate,
                    report.skipped
                );
            }
            Ok(())
        }
        Command::RotateKey => {
            let pool = db::migrate(&settings.database).await?;
            let vault = case_intake::store::crypto::Vault::from_settings(&settings.crypto)?;
            let done = case_intake::admin::rotate::rotate(&pool, &vault, |r| {
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
        Command::Parked { command } => parked_command(command, &settings).await,
        Command::RevokeKey { id } => {
            let pool = db::migrate(&settings.database).await?;
            if provision::revoke_key(&pool, id).await? {
                println!("revoked API key {id}");
                Ok(())
            } else {
                Err(format!("no active API key with id {id}").into())
            }
        }
    }
}

/// `case-intake parked …`: RabbitMQ only (the database is never opened).
async fn parked_command(
    command: ParkedCommand,
    settings: &Settings,
) -> Result<(), Box<dyn std::error::Error>> {
    let parked = Parked::from_settings(&settings.amqp);
    match command {
        ParkedCommand::List { limit, json } => {
            let listing = parked.list(limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&listing)?);
                return Ok(());
            }
            println!(
                "parked queue \"{}\": showing {} of {} (all put back)",
                parked::escape(listing.queue.as_bytes()),
                listing.messages.len(),
                listing.total
            );
            for m in &listing.messages {
                println!();
                println!("id {}", m.id);
                println!("  body: {} bytes, sha256 {}", m.body_bytes, m.body_sha256);
                println!(
                    "  redelivered: {}",
                    if m.redelivered { "yes" } else { "no" }
                );
                println!(
                    "  published to: exchange \"{}\", routing key \"{}\"",
                    m.exchange, m.routing_key
                );
                if let Some(e) = &m.header_error {
                    println!("  properties: unreadable ({e})");
                }
                for (name, value) in &m.properties {
                    println!("  {name}: {value}");
                }
                if let Some(e) = &m.headers_error {
                    println!("  headers: unreadable ({e})");
                }
                for h in &m.headers {
                    println!("  header \"{}\": {}", h.name, h.value);
                }
                if m.headers_omitted > 0 {
                    println!("  … {} more headers not shown", m.headers_omitted);
                }
                if m.not_utf8.is_empty() {
                    println!("  not valid UTF-8: none");
                } else {
                    println!("  not valid UTF-8: {}", m.not_utf8.join(", "));
                }
            }
            Ok(())
        }
        ParkedCommand::Drop { select, yes } => {
            let selection = select.selection()?;
            if selection == parked::Selection::All && !yes {
                let n = parked.count().await?;
                return Err(
                    format!("refusing to drop all {n} parked message(s) without --yes").into(),
                );
            }
            let n = parked.drop(&selection).await?;
            println!("dropped {n} parked message(s)");
            if n == 0 && selection != parked::Selection::All {
                return Err("no parked message has that id".into());
            }
            Ok(())
        }
        ParkedCommand::Republish { select } => {
            let selection = select.selection()?;
            let report = parked.republish(&selection).await?;
            for id in &report.republished {
                println!("re-published {id}");
            }
            for (id, why) in &report.skipped {
                println!("left parked {id}: {why}");
            }
            println!(
                "re-published {} parked message(s) to \"{}\"",
                report.republished.len(),
                parked::escape(settings.amqp.intake_queue.as_bytes())
            );
            if report.republished.is_empty() && selection != parked::Selection::All {
                return Err("no parked message with that id was re-published".into());
            }
            Ok(())
        }
    }
}

/// Runs the worker; the first SIGINT/SIGTERM starts a graceful stop bounded by
/// `shutdown.timeout_ms`, a second one exits at once. Either way nothing is lost: whatever
/// was not acked is redelivered by the broker and absorbed by the dedup table.
async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
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
