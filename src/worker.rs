//! The supervisor: keeps a broker session (consumers + outbox relay) running, rebuilds it after
//! any broker fault, pauses intake during a database outage, and drains on shutdown.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicQosOptions;
use lapin::{Connection, ConnectionProperties};
use secrecy::ExposeSecret;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::consumer::{ConsumerError, ConsumerSpec, IntakeConsumer, Mode, probe_backoff};
use crate::decode::BodyLimits;
use crate::http::HttpState;
use crate::metrics::{ConsumerState, Metrics};
use crate::relay::{Handoff, Relay, RelayError};
use crate::settings::Settings;
use crate::topology;
use crate::window::WindowContext;

/// Why a broker session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("connecting to the broker timed out")]
    ConnectTimeout,
    #[error(transparent)]
    Consumer(#[from] ConsumerError),
    #[error(transparent)]
    Relay(#[from] RelayError),
    #[error("task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Shutdown,
    DatabaseOutage,
}

/// The window context from the settings.
pub fn window_context(settings: &Settings) -> WindowContext {
    WindowContext {
        source: settings.events.source.clone(),
        created_routing_key: settings.amqp.created_routing_key.clone(),
        failed_routing_key: settings.amqp.failed_routing_key.clone(),
        limits: BodyLimits {
            max_body_bytes: settings.intake.max_body_bytes,
            max_depth: settings.intake.max_depth,
        },
        // Settings::load refuses keys that do not build a vault, so this cannot fail for
        // loaded settings.
        vault: Arc::new(
            crate::crypto::Vault::from_settings(&settings.crypto)
                .expect("crypto settings are validated when settings load"),
        ),
        handoff: None,
    }
}

/// Migrates (creating the database if asked), retrying while PostgreSQL is unreachable.
/// Returns false when shutdown was asked first.
pub async fn prepare_database(settings: &Settings, shutdown: &CancellationToken) -> bool {
    let mut delays = probe_backoff();
    loop {
        match crate::db::run_migrations(&settings.database).await {
            Ok(()) => return true,
            Err(e) => tracing::warn!(error = %e, "database not ready; retrying"),
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Waits until `SELECT 1` succeeds (or shutdown).
async fn await_database(pool: &PgPool, shutdown: &CancellationToken) {
    let mut delays = probe_backoff();
    loop {
        if sqlx::query("SELECT 1").execute(pool).await.is_ok() {
            tracing::info!("database reachable again; resuming intake");
            return;
        }
        let delay = delays.next().unwrap_or(Duration::from_secs(5));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Runs the worker until `shutdown` is cancelled and everything in flight is finished.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
    run_with(settings, shutdown, Metrics::shared()).await
}

/// Starts the HTTP server of the settings, if any. A failure to bind is logged, not fatal:
/// intake goes on, and the missing probes make the problem visible to the orchestrator.
async fn start_http(settings: &Settings, state: HttpState, shutdown: &CancellationToken) {
    if settings.http.address.is_empty() {
        return;
    }
    match tokio::net::TcpListener::bind(&settings.http.address).await {
        Ok(listener) => {
            tracing::info!(address = %settings.http.address, "http server listening");
            tokio::spawn(crate::http::serve(listener, state, shutdown.clone()));
        }
        Err(e) => {
            tracing::error!(address = %settings.http.address, error = %e, "http server not started")
        }
    }
}

/// [`run`] with the caller's metrics (tests read them).
pub async fn run_with(
    settings: Settings,
    shutdown: CancellationToken,
    metrics: Arc<Metrics>,
) -> Result<(), sqlx::Error> {
    if settings.crypto.active_key == crate::crypto::DEV_KEY_ID {
        tracing::warn!(
            "the built-in development encryption key is active: set crypto.keys and crypto.active_key for real data"
        );
    }
    let pool = crate::db::pool(&settings.database)?;
    let state = HttpState {
        pool: pool.clone(),
        metrics: metrics.clone(),
    };
    start_http(&settings, state, &shutdown).await;
    if !prepare_database(&settings, &shutdown).await {
        return Ok(());
    }
    let janitor = tokio::spawn(crate::retention::run(
        pool.clone(),
        settings.intake.dedup_retention_days,
        Duration::from_secs(600),
        shutdown.clone(),
    ));
    let mut delays = probe_backoff();
    while !shutdown.is_cancelled() {
        match session(&settings, &pool, &shutdown, &metrics).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::DatabaseOutage) => {
                metrics.set_state(ConsumerState::DatabaseOutage);
                tracing::warn!("database outage: intake paused, deliveries handed back");
                await_database(&pool, &shutdown).await;
                delays = probe_backoff();
            }
            Err(e) => {
                metrics.set_state(ConsumerState::Reconnecting);
                metrics.record_reconnect();
                tracing::warn!(error = %e, "broker session ended; reconnecting");
                let delay = delays.next().unwrap_or(Duration::from_secs(5));
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    metrics.set_state(ConsumerState::ShuttingDown);
    let _ = janitor.await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// The AMQP URL with the configured heartbeat unless the URL sets one.
fn amqp_url(settings: &Settings) -> String {
    let url = settings.amqp.url.expose_secret();
    if url.contains("heartbeat=") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={}", settings.amqp.heartbeat_secs)
}

async fn connect(settings: &Settings, name: &str) -> Result<Connection, SessionError> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let timeout = Duration::from_millis(settings.amqp.connect_timeout_ms);
    tokio::time::timeout(timeout, Connection::connect(&amqp_url(settings), props))
        .await
        .map_err(|_| SessionError::ConnectTimeout)?
        .map_err(SessionError::Broker)
}

/// One broker session: a consuming connection with `intake.consumers` channels and a publishing
/// connection for the relay (kept apart so that broker flow control on publishes never delays
/// acks).
async fn session(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> Result<SessionEnd, SessionError> {
    let consuming = connect(settings, "case-intake consumer").await?;
    let publishing = connect(settings, "case-intake relay").await?;
    if settings.amqp.declare_topology {
        let ch = consuming.create_channel().await?;
        topology::declare(&ch, &settings.amqp).await?;
        ch.close(200, "OK".into()).await?;
    }
    let stop = shutdown.child_token();
    let outage = CancellationToken::new();
    let handoff = Arc::new(Handoff::default());

    let relay = Relay::new(
        pool.clone(),
        publishing.create_channel().await?,
        settings.amqp.events_exchange.clone(),
        settings.outbox.clone(),
        metrics.clone(),
        handoff.clone(),
    )
    .await?;
    let relay_stop = CancellationToken::new();
    let relay_task = {
        let (relay_stop, stop) = (relay_stop.clone(), stop.clone());
        tokio::spawn(async move {
            let r = relay.run(&relay_stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    };

    let ctx = WindowContext {
        handoff: Some(handoff),
        ..window_context(settings)
    };
    let intake = settings.amqp.intake_queue.as_str();
    let dead = topology::dead_letter_queue(intake);
    let retry = topology::retry_queue(intake);
    // The intake consumers, and one on the dead-letter queue.
    let specs = (0..settings.intake.consumers)
        .map(|i| (intake, Mode::Intake, i))
        .chain(std::iter::once((dead.as_str(), Mode::DeadLetter, 0)));
    let mut consumers = Vec::with_capacity(settings.intake.consumers + 1);
    for (queue, mode, i) in specs {
        let channel = consuming.create_channel().await?;
        channel
            .basic_qos(settings.amqp.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("case-intake-{}-{mode:?}-{i}", std::process::id());
        let spec = ConsumerSpec {
            queue,
            retry_queue: &retry,
            tag: &tag,
            mode,
        };
        let consumer = IntakeConsumer::start(
            channel,
            publishing.create_channel().await?,
            spec,
            pool.clone(),
            ctx.clone(),
            settings.intake.clone(),
            metrics.clone(),
        )
        .await?;
        let (stop, outage) = (stop.clone(), outage.clone());
        consumers.push(tokio::spawn(async move {
            let r = consumer.run(&stop, &outage).await;
            // Any consumer leaving ends the session for all: outage, fault or shutdown.
            stop.cancel();
            r
        }));
    }
    metrics.set_state(ConsumerState::Consuming);
    {
        let (stop, outage) = (stop.clone(), outage.clone());
        tokio::spawn(async move {
            outage.cancelled().await;
            stop.cancel();
        });
    }

    let mut first_error: Option<SessionError> = None;
    stop.cancelled().await;
    if shutdown.is_cancelled() {
        metrics.set_state(ConsumerState::ShuttingDown);
    }
    for c in consumers {
        match c.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e.into());
            }
            Err(e) => {
                first_error.get_or_insert(e.into());
            }
        }
    }
    // Every window has committed or been handed back: let the relay publish what they queued.
    relay_stop.cancel();
    match relay_task.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            first_error.get_or_insert(e.into());
        }
        Err(e) => {
            first_error.get_or_insert(e.into());
        }
    }
    let _ = consuming.close(200, "OK".into()).await;
    let _ = publishing.close(200, "OK".into()).await;
    if outage.is_cancelled() {
        return Ok(SessionEnd::DatabaseOutage);
    }
    match first_error {
        Some(e) if !shutdown.is_cancelled() => Err(e),
        _ => Ok(SessionEnd::Shutdown),
    }
}

/// Resolves at the next SIGTERM or SIGINT: the worker binary's graceful stop, and the
/// benchmark's cleanup.
pub async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
