//! The `case-intake` binary: parses the command line, loads settings, starts telemetry and
//! calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use case_intake::settings::Settings;
use case_intake::{db, provision, telemetry, worker};

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
}

fn main() -> ExitCode {
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

/// Runs the worker; the first SIGINT/SIGTERM starts a graceful stop bounded by
/// `shutdown.timeout_ms`, a second one exits at once. Either way nothing is lost: whatever
/// was not acked is redelivered by the broker and absorbed by the dedup table.
async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let shutdown = CancellationToken::new();
    let timeout = Duration::from_millis(settings.shutdown.timeout_ms);
    let worker = tokio::spawn(worker::run(settings, shutdown.clone()));
    wait_for_signal().await?;
    tracing::info!("shutdown requested: finishing in-flight intakes");
    shutdown.cancel();
    tokio::select! {
        r = worker => { r??; }
        _ = tokio::time::sleep(timeout) => {
            tracing::warn!("shutdown timeout reached; exiting with work handed back to the broker");
        }
        _ = wait_for_signal() => {
            tracing::warn!("second signal: exiting now; unacked intakes will be redelivered");
            std::process::exit(130);
        }
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
