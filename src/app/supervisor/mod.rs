//! The supervisors: keep the broker sessions (intake consumers + outbox relay; the dead-letter
//! consumer on a connection of its own) running, rebuild them after any broker fault, pause
//! intake during a database outage, and drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::app::http::HttpState;
use crate::infra::backoff::probe_backoff;
use crate::infra::metrics::{ConsumerState, Metrics};
use crate::infra::settings::Settings;
use crate::infra::throttle::Throttle;
use crate::intake::consumer::ConsumerError;
use crate::intake::decode::BodyLimits;
use crate::intake::window::WindowContext;
use crate::outbox::relay::RelayError;
use crate::outbox::topology;

mod session;
use session::{Role, session};

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
    #[error("connection: {0}")]
    Connection(lapin::Error),
    #[error("setting up the broker session timed out")]
    SetupTimeout,
    #[error("the broker session ended while it was being set up")]
    SetupInterrupted,
    #[error("a consumer or the relay did not stop within the shutdown time")]
    Stuck,
}

impl SessionError {
    /// True when the session ended because the AMQP client could not parse what the broker
    /// sent (a delivery with invalid UTF-8 in a short-string property or header name): the
    /// message is redelivered, and only the delivery limits get it out of the way.
    fn unparseable(&self) -> bool {
        let lapin_error = match self {
            Self::Broker(e) | Self::Connection(e) => e,
            Self::Consumer(ConsumerError::Broker(e)) => e,
            _ => return false,
        };
        matches!(lapin_error.kind(), lapin::ErrorKind::ParsingError(_))
    }
}

/// How a session ended without an error.
#[derive(Debug, PartialEq, Eq)]
enum SessionEnd {
    Shutdown,
    DatabaseOutage,
    /// A careful session's time is over: back to normal consuming.
    CarefulOver,
}

/// The window context from the settings.
pub fn window_context(settings: &Settings) -> WindowContext {
    WindowContext {
        source: settings.events.source.clone(),
        created_routing_key: settings.amqp.created_routing_key.clone(),
        failed_routing_key: settings.amqp.failed_routing_key.clone(),
        resolved_routing_key: settings.amqp.resolved_routing_key.clone(),
        matched_routing_key: settings.amqp.matched_routing_key.clone(),
        limits: BodyLimits {
            max_body_bytes: settings.intake.max_body_bytes,
            max_depth: settings.intake.max_depth,
        },
        // Settings::load refuses keys that do not build a vault, so this cannot fail for
        // loaded settings.
        vault: Arc::new(
            crate::store::crypto::Vault::from_settings(&settings.crypto)
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
        match crate::infra::db::run_migrations(&settings.database).await {
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

/// Waits until the database answers and takes writes (or shutdown). The pool is recycled
/// first: its sessions may be on a server that is gone or read-only now (a failover), and a
/// session that only answers is not enough. A read-only answer is logged once per wait.
async fn await_database(pool: &PgPool, shutdown: &CancellationToken) {
    crate::infra::db::recycle();
    let mut delays = probe_backoff();
    let mut told_read_only = false;
    loop {
        match crate::store::probe(pool).await {
            Ok(crate::store::Health::Writable) => {
                tracing::info!("database reachable again; resuming intake");
                return;
            }
            Ok(crate::store::Health::ReadOnly) => {
                if !told_read_only {
                    tracing::warn!(
                        "database answers but is read-only (a standby, or the address not yet moved after a failover); intake stays paused"
                    );
                    told_read_only = true;
                }
                crate::infra::db::recycle();
            }
            Err(_) => {}
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
            tokio::spawn(crate::app::http::serve(listener, state, shutdown.clone()));
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
    if settings.crypto.active_key == crate::store::crypto::DEV_KEY_ID {
        tracing::warn!(
            "the built-in development encryption key is active: set crypto.keys and crypto.active_key for real data"
        );
    }
    let pool = crate::infra::db::pool(&settings.database)?;
    let state = HttpState {
        pool: pool.clone(),
        metrics: metrics.clone(),
        stall_limit: Duration::from_millis(settings.intake.stall_limit_ms),
    };
    start_http(&settings, state, &shutdown).await;
    if !prepare_database(&settings, &shutdown).await {
        return Ok(());
    }
    let janitor = tokio::spawn(crate::admin::retention::run(
        pool.clone(),
        settings.intake.dedup_retention_days,
        Duration::from_secs(600),
        shutdown.clone(),
    ));
    // The dead-letter consumer runs on a connection of its own: a message there that the AMQP
    // client cannot parse ends only that connection, never intake.
    let dead_letter = {
        let (settings, pool, shutdown, metrics) = (
            settings.clone(),
            pool.clone(),
            shutdown.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            supervise(Kind::DeadLetter, &settings, &pool, &shutdown, &metrics).await
        })
    };
    supervise(Kind::Intake, &settings, &pool, &shutdown, &metrics).await;
    metrics.set_state(ConsumerState::ShuttingDown);
    let _ = dead_letter.await;
    let _ = janitor.await;
    pool.close().await;
    tracing::info!("worker stopped");
    Ok(())
}

/// Which consumers a supervisor keeps running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The intake consumers and the outbox relay; this one's state is the worker's state.
    Intake,
    /// The dead-letter consumer.
    DeadLetter,
}

/// How long intake reads one message at a time after a delivery it could not parse.
const CAREFUL_FOR: Duration = Duration::from_secs(15);

/// Delay before reconnecting after a delivery the AMQP client could not parse: the broker is
/// healthy, and every reconnect brings the message closer to its delivery limit and parking.
const UNPARSEABLE_RECONNECT: Duration = Duration::from_millis(100);

static SESSION_ENDED: Throttle = Throttle::new(Duration::from_secs(10));
static UNPARSEABLE: Throttle = Throttle::new(Duration::from_secs(10));

/// Keeps broker sessions of one kind running until shutdown: reconnects after any fault (it
/// never gives up), pauses during a database outage, and after a delivery the AMQP client
/// could not parse reads one message at a time for a while, so that only that message is
/// counted against the delivery limits that park it.
async fn supervise(
    kind: Kind,
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
) {
    let owns_state = kind == Kind::Intake;
    let parked = topology::parked_queue(&settings.amqp.intake_queue);
    let mut careful = false;
    let mut delays = probe_backoff();
    while !shutdown.is_cancelled() {
        let role = match kind {
            Kind::Intake => Role::Intake { careful },
            Kind::DeadLetter => Role::DeadLetter,
        };
        match session(role, settings, pool, shutdown, metrics).await {
            Ok(SessionEnd::Shutdown) => break,
            Ok(SessionEnd::CarefulOver) => {
                careful = false;
                delays = probe_backoff();
            }
            Ok(SessionEnd::DatabaseOutage) => {
                if owns_state {
                    metrics.set_state(ConsumerState::DatabaseOutage);
                }
                tracing::warn!(consumer = ?kind, "database outage: intake paused, deliveries handed back");
                await_database(pool, shutdown).await;
                delays = probe_backoff();
            }
            Err(e) => {
                if owns_state {
                    metrics.set_state(ConsumerState::Reconnecting);
                }
                metrics.record_reconnect();
                let delay = if e.unparseable() {
                    metrics.record_unparseable();
                    careful = true;
                    if let Some(suppressed) = UNPARSEABLE.allow() {
                        tracing::error!(
                            consumer = ?kind,
                            suppressed,
                            parked_queue = %parked,
                            "a delivery the AMQP client cannot parse ended the broker session; \
                             reading one message at a time until the delivery limits park it"
                        );
                    }
                    UNPARSEABLE_RECONNECT
                } else {
                    if let Some(suppressed) = SESSION_ENDED.allow() {
                        tracing::warn!(consumer = ?kind, error = %e, suppressed, "broker session ended; reconnecting");
                    }
                    delays.next().unwrap_or(Duration::from_secs(5))
                };
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
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
