//! One broker session of a supervisor: the connection (to the first endpoint that answers),
//! its consumers or the dead-letter consumer, the relay on its own channel, the monitor that
//! ends the session on a connection fault, and the session's orderly end.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::Connection;
use lapin::options::{BasicQosOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::infra::endpoints::{self, Unreachable};
use crate::infra::metrics::{ConsumerState, Metrics};
use crate::infra::settings::{IntakeSettings, Settings};
use crate::intake::consumer::{ConsumerError, ConsumerSpec, IntakeConsumer, Mode};
use crate::outbox::relay::{Handoff, Relay, RelayError};
use crate::outbox::topology;

use super::{CAREFUL_FOR, SessionEnd, SessionError, window_context};

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
pub(super) enum Role {
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
pub(super) async fn session(
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
