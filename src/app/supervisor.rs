//! The supervisors: keep the broker sessions (intake consumers + outbox relay; the dead-letter
//! consumer on a connection of its own) running, rebuild them after any broker fault, pause
//! intake during a database outage, and drain on shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::app::http::HttpState;
use crate::infra::backoff::probe_backoff;
use crate::infra::endpoints::{self, Unreachable};
use crate::infra::metrics::{ConsumerState, Metrics};
use crate::infra::settings::{IntakeSettings, Settings};
use crate::infra::throttle::Throttle;
use crate::intake::consumer::{ConsumerError, ConsumerSpec, IntakeConsumer, Mode};
use crate::intake::decode::BodyLimits;
use crate::intake::window::WindowContext;
use crate::outbox::relay::{Handoff, Relay, RelayError};
use crate::outbox::topology;

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

/// A connection to the first broker endpoint that answers (src/infra/endpoints.rs), the
/// whole walk bounded by `amqp.connect_timeout_ms`; the endpoint is logged and exported, and
/// a move to another endpoint is logged as a warning.
async fn connect(
    settings: &Settings,
    metrics: &Metrics,
    name: &str,
) -> Result<Connection, SessionError> {
    let timeout = Duration::from_millis(settings.amqp.connect_timeout_ms);
    let (conn, endpoint) = tokio::time::timeout(timeout, endpoints::connect(&settings.amqp, name))
        .await
        .map_err(|_| SessionError::ConnectTimeout)?
        .map_err(|e| match e {
            Unreachable::Timeout(_) => SessionError::ConnectTimeout,
            Unreachable::Failed(_, e) => SessionError::Broker(e),
        })?;
    match metrics.set_endpoint(name, endpoint.label()) {
        Some(before) => tracing::warn!(
            connection = name,
            endpoint = endpoint.label(),
            before = %before,
            "broker endpoint changed"
        ),
        None => tracing::info!(
            connection = name,
            endpoint = endpoint.label(),
            "broker connected"
        ),
    }
    Ok(conn)
}

/// The first error a connection reports; ends the session at once (a consumer blocked on a
/// dead connection must not hold the session open).
#[derive(Clone, Default)]
struct ConnectionFault(Arc<std::sync::Mutex<Option<lapin::Error>>>);

impl ConnectionFault {
    fn watch(&self, conn: &Connection, stop: &CancellationToken) {
        let mut events = conn.events_listener();
        let (slot, stop) = (self.0.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    event = events.next() => match event {
                        Some(lapin::Event::Error(e)) => {
                            slot.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                            stop.cancel();
                            return;
                        }
                        Some(_) => {}
                        None => return,
                    },
                }
            }
        });
    }

    fn take(&self) -> Option<lapin::Error> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What one broker session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// `intake.consumers` intake consumers and the relay; `careful`: one consumer reading one
    /// message at a time, for [`CAREFUL_FOR`].
    Intake { careful: bool },
    /// The dead-letter consumer, one message at a time.
    DeadLetter,
}

/// What a session started: its tasks and connections.
struct Running {
    consuming: Connection,
    /// The relay's connection (intake sessions only).
    publishing: Option<Connection>,
    consumers: Vec<tokio::task::JoinHandle<Result<(), ConsumerError>>>,
    relay: Option<RelayTask>,
}

/// The relay's own stop token and its task.
type RelayTask = (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), RelayError>>,
);

/// What a session's setup works with: its role, the settings and pool, and its two tokens
/// (`stop` ends the session; `outage` says it ended for a database outage).
struct Session<'a> {
    role: Role,
    settings: &'a Settings,
    pool: &'a PgPool,
    metrics: &'a Arc<Metrics>,
    stop: &'a CancellationToken,
    outage: &'a CancellationToken,
}

/// One broker session. Setup is bounded in time, and any connection error ends the session.
async fn session(
    role: Role,
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    metrics: &Arc<Metrics>,
) -> Result<SessionEnd, SessionError> {
    let stop = shutdown.child_token();
    let outage = CancellationToken::new();
    let fault = ConnectionFault::default();
    let setup_limit = Duration::from_millis(settings.amqp.connect_timeout_ms.saturating_mul(2));
    let session = Session {
        role,
        settings,
        pool,
        metrics,
        stop: &stop,
        outage: &outage,
    };
    let setup = start(&session, &fault);
    let running = tokio::select! {
        r = tokio::time::timeout(setup_limit, setup) => match r {
            Ok(r) => r,
            Err(_) => Err(SessionError::SetupTimeout),
        },
        // A connection error during setup: the pending setup call may never resolve.
        _ = stop.cancelled() => Err(SessionError::SetupInterrupted),
    };
    let running = match running {
        Ok(r) => r,
        Err(e) => {
            return match fault.take() {
                Some(f) => Err(SessionError::Connection(f)),
                None if shutdown.is_cancelled() => Ok(SessionEnd::Shutdown),
                None => Err(e),
            };
        }
    };
    {
        let (stop, outage) = (stop.clone(), outage.clone());
        tokio::spawn(async move {
            outage.cancelled().await;
            stop.cancel();
        });
    }
    let careful_over = CancellationToken::new();
    if role == (Role::Intake { careful: true }) {
        let (stop, over) = (stop.clone(), careful_over.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(CAREFUL_FOR) => {
                    over.cancel();
                    stop.cancel();
                }
            }
        });
    }

    stop.cancelled().await;
    if shutdown.is_cancelled() && role != Role::DeadLetter {
        metrics.set_state(ConsumerState::ShuttingDown);
    }
    let mut first_error = finish(running, settings).await;
    if role != Role::DeadLetter {
        metrics.forget_queues();
    }
    if let Some(f) = fault.take() {
        // The connection's own error says why (an unparseable delivery, a lost socket).
        first_error = Some(SessionError::Connection(f));
    }
    if outage.is_cancelled() {
        return Ok(SessionEnd::DatabaseOutage);
    }
    match first_error {
        Some(e) if !shutdown.is_cancelled() => Err(e),
        _ if careful_over.is_cancelled() && !shutdown.is_cancelled() => Ok(SessionEnd::CarefulOver),
        _ => Ok(SessionEnd::Shutdown),
    }
}

/// Connects and starts a session's consumers (and, for intake, the relay and the queue
/// monitor). On failure the connections opened so far are closed.
async fn start(s: &Session<'_>, fault: &ConnectionFault) -> Result<Running, SessionError> {
    let Session {
        role,
        settings,
        metrics,
        stop,
        ..
    } = *s;
    let name = match role {
        Role::Intake { .. } => "case-intake consumer",
        Role::DeadLetter => "case-intake dead-letter",
    };
    let consuming = connect(settings, metrics, name).await?;
    fault.watch(&consuming, stop);
    let mut running = Running {
        consuming,
        publishing: None,
        consumers: Vec::new(),
        relay: None,
    };
    if matches!(role, Role::Intake { .. }) {
        // Broker flow control on publishes must never delay acks: the relay publishes on a
        // connection of its own.
        match connect(settings, metrics, "case-intake relay").await {
            Ok(publishing) => {
                fault.watch(&publishing, stop);
                running.publishing = Some(publishing);
            }
            Err(e) => {
                close(&running).await;
                return Err(e);
            }
        }
    }
    match populate(&mut running, s).await {
        Ok(()) => {
            announce(role, settings);
            Ok(running)
        }
        Err(e) => {
            stop.cancel();
            close(&running).await;
            Err(e)
        }
    }
}

/// The line that says intake runs: version, queue, and whether it reads one message at a time.
fn announce(role: Role, settings: &Settings) {
    if let Role::Intake { careful } = role {
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            queue = %settings.amqp.intake_queue,
            careful,
            "consuming"
        );
    }
}

/// What a session's consumers read, how many run, and with what prefetch and settings.
struct ConsumerPlan<'a> {
    queue: &'a str,
    mode: Mode,
    count: usize,
    prefetch: u16,
    intake: IntakeSettings,
}

impl Role {
    fn plan<'a>(self, settings: &'a Settings, dead: &'a str) -> ConsumerPlan<'a> {
        let mut plan = ConsumerPlan {
            queue: settings.amqp.intake_queue.as_str(),
            mode: Mode::Intake,
            count: settings.intake.consumers,
            prefetch: settings.amqp.prefetch,
            intake: settings.intake.clone(),
        };
        if self == (Role::Intake { careful: false }) {
            return plan;
        }
        if self == Role::DeadLetter {
            (plan.queue, plan.mode) = (dead, Mode::DeadLetter);
        }
        // One message in flight: a delivery that ends the connection is the only one whose
        // delivery count rises.
        plan.count = 1;
        plan.prefetch = 1;
        plan.intake.window_size = 1;
        plan
    }
}

/// Starts what a session runs on its connections: for intake the relay and the queue monitor,
/// then the consumers.
async fn populate(running: &mut Running, s: &Session<'_>) -> Result<(), SessionError> {
    let Session {
        role,
        settings,
        pool,
        metrics,
        stop,
        outage,
    } = *s;
    let consuming = &running.consuming;
    let publishing = running.publishing.as_ref().unwrap_or(consuming);
    if settings.amqp.declare_topology {
        topology::declare(consuming, &settings.amqp).await?;
    }
    let dead = topology::dead_letter_queue(&settings.amqp.intake_queue);
    let retry = topology::retry_queue(&settings.amqp.intake_queue);
    let plan = role.plan(settings, &dead);
    let mut ctx = window_context(settings);
    if matches!(role, Role::Intake { .. }) {
        let handoff = Arc::new(Handoff::default());
        running.relay =
            Some(start_relay(publishing, settings, pool, metrics, &handoff, stop).await?);
        ctx.handoff = Some(handoff);
        spawn_monitor(consuming, settings, metrics, stop).await?;
        // Ready before the first consumer starts, so that an intake's event is never seen
        // while `/readyz` still answers "not ready" (a failed start sets `Reconnecting`).
        metrics.set_state(ConsumerState::Consuming);
    }
    for i in 0..plan.count {
        let channel = consuming.create_channel().await?;
        channel
            .basic_qos(plan.prefetch, BasicQosOptions::default())
            .await?;
        let tag = format!("case-intake-{}-{:?}-{i}", std::process::id(), plan.mode);
        let spec = ConsumerSpec {
            queue: plan.queue,
            retry_queue: &retry,
            tag: &tag,
            mode: plan.mode,
        };
        let consumer = IntakeConsumer::start(
            channel,
            publishing.create_channel().await?,
            spec,
            pool.clone(),
            ctx.clone(),
            plan.intake.clone(),
            metrics.clone(),
        )
        .await?;
        let (stop, outage) = (stop.clone(), outage.clone());
        running.consumers.push(tokio::spawn(async move {
            let r = consumer.run(&stop, &outage).await;
            // Any consumer leaving ends the session for all: outage, fault or shutdown.
            stop.cancel();
            r
        }));
    }
    Ok(())
}

/// Starts the outbox relay on the publishing connection; its failure ends the session.
async fn start_relay(
    publishing: &Connection,
    settings: &Settings,
    pool: &PgPool,
    metrics: &Arc<Metrics>,
    handoff: &Arc<Handoff>,
    stop: &CancellationToken,
) -> Result<RelayTask, SessionError> {
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
    let task = {
        let (relay_stop, stop) = (relay_stop.clone(), stop.clone());
        tokio::spawn(async move {
            let r = relay.run(&relay_stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        })
    };
    Ok((relay_stop, task))
}

/// Closes a session's connections, each within a bound (a dead connection may not answer).
async fn close(running: &Running) {
    for conn in std::iter::once(&running.consuming).chain(running.publishing.as_ref()) {
        let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "OK".into())).await;
    }
}

/// Reads the intake and parking queues' depths every few seconds (passive declares on a
/// channel of its own) for the metrics and the liveness check.
async fn spawn_monitor(
    conn: &Connection,
    settings: &Settings,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = conn.create_channel().await?;
    let intake = settings.amqp.intake_queue.clone();
    let parked = topology::parked_queue(&intake);
    let every = Duration::from_millis(settings.intake.stall_limit_ms / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    let (metrics, stop) = (metrics.clone(), stop.clone());
    tokio::spawn(async move {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        loop {
            let depth = |q: String| {
                let channel = channel.clone();
                async move {
                    channel
                        .queue_declare(q.as_str().into(), passive, FieldTable::default())
                        .await
                        .map(|q| q.message_count())
                }
            };
            match (depth(intake.clone()).await, depth(parked.clone()).await) {
                (Ok(ready), Ok(parked)) => metrics.set_queues(ready, parked),
                // The channel is gone (a missing queue closes it): the session is ending.
                _ => return,
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
        }
    });
    Ok(())
}

/// Waits for a stopping session's consumers (each finishes its window) and then its relay
/// (which publishes what the windows queued), each within the shutdown time, and closes its
/// connections. Returns the first error.
async fn finish(mut running: Running, settings: &Settings) -> Option<SessionError> {
    let grace = Duration::from_millis(settings.shutdown.timeout_ms);
    let mut first_error: Option<SessionError> = None;
    for c in std::mem::take(&mut running.consumers) {
        if let Err(e) = join_within(grace, c).await {
            first_error.get_or_insert(e);
        }
    }
    if let Some((relay_stop, task)) = running.relay.take() {
        relay_stop.cancel();
        if let Err(e) = join_within(grace, task).await {
            first_error.get_or_insert(e);
        }
    }
    close(&running).await;
    first_error
}

/// Waits for a session task, at most `grace` (a task blocked on a dead connection is left).
async fn join_within<E: Into<SessionError>>(
    grace: Duration,
    task: tokio::task::JoinHandle<Result<(), E>>,
) -> Result<(), SessionError> {
    match tokio::time::timeout(grace, task).await {
        Ok(Ok(r)) => r.map_err(Into::into),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(SessionError::Stuck),
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
