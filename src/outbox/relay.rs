//! The outbox relay: publishes pending events with publisher confirms and `mandatory`, and
//! deletes each row in the transaction that publishes it.
//!
//! A pass takes rows by deleting them (`FOR UPDATE SKIP LOCKED`, so two relays never take one
//! row), publishes them, awaits every confirm together, puts back the ones the broker did not
//! take (with a growing pause), and commits. A crash or a lost database connection before the
//! commit rolls the delete back and the rows are published again: at least once, with the
//! event id as `message_id` for consumers to dedup. The transaction stays open only for the
//! broker's confirms, which `outbox.confirm_timeout_ms` bounds.
//!
//! Windows of this process hand the ids of the rows they committed to the relay ([`Handoff`]),
//! which then takes exactly those by primary key; a sweep of the oldest rows every
//! `outbox.poll_interval_ms` publishes everything else (rows of a crashed worker, of a replay
//! run from the command line, rows put back after a nack).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use sqlx::{PgConnection, PgPool, Row};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::infra::metrics::Metrics;
use crate::infra::settings::OutboxSettings;

/// The content type of every event body: CloudEvents in structured JSON mode.
pub const CONTENT_TYPE: &str = "application/cloudevents+json";

/// Why a relay pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// Ids handed over beyond this are dropped (the sweep finds their rows): a relay that cannot
/// publish for a long time does not make the handoff grow without bound.
const HANDOFF_LIMIT: usize = 100_000;

/// Outbox ids committed by this process's windows, waiting for the relay. Only a hint: a row
/// whose id is lost here (limit, failed pass, new broker session) is published by the sweep.
#[derive(Debug, Default)]
pub struct Handoff {
    ids: Mutex<Vec<i64>>,
    wake: Notify,
}

impl Handoff {
    /// Hands over the ids of committed outbox rows and wakes the relay.
    pub fn push(&self, ids: &[i64]) {
        if ids.is_empty() {
            return;
        }
        {
            let mut pending = self.ids.lock().unwrap_or_else(|e| e.into_inner());
            let room = HANDOFF_LIMIT.saturating_sub(pending.len());
            pending.extend_from_slice(&ids[..ids.len().min(room)]);
        }
        self.wake.notify_one();
    }

    /// Takes up to `max` ids, oldest first.
    fn take(&self, max: usize) -> Vec<i64> {
        let mut pending = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if pending.len() <= max {
            std::mem::take(&mut *pending)
        } else {
            pending.drain(..max).collect()
        }
    }
}

/// The pauses between probes of an unreachable database.
type Backoff = Box<dyn Iterator<Item = Duration> + Send>;

/// Which rows a pass takes.
enum Pick {
    /// Rows this process's windows committed.
    Handed(Vec<i64>),
    /// The oldest publishable rows, whoever wrote them.
    Oldest,
}

/// A row taken (deleted, uncommitted) by a pass, with what is needed to put it back.
struct Taken {
    id: i64,
    event_id: Uuid,
    routing_key: String,
    /// Set when the body lives in the outcome row (the row's own body column is then null).
    outcome_network_id: Option<i64>,
    outcome_key: Option<String>,
    correlation_id: Option<String>,
    created_at: DateTime<Utc>,
    attempts: i32,
    /// The body to publish. `None` only if the outcome row the event lives in is gone, which
    /// forget-failed and retention prevent; such a row is put back, never dropped.
    body: Option<String>,
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub published: usize,
    /// Nacked, returned (unroutable) or unconfirmed in time: put back for a later pass.
    pub retried: usize,
}

/// Publishes events of the outbox to `exchange`.
pub struct Relay {
    metrics: Arc<Metrics>,
    pool: PgPool,
    channel: Channel,
    exchange: String,
    settings: OutboxSettings,
    handoff: Arc<Handoff>,
}

impl Relay {
    /// Puts `channel` in confirm mode and returns a relay publishing on it, fed by `handoff`.
    pub async fn new(
        pool: PgPool,
        channel: Channel,
        exchange: String,
        settings: OutboxSettings,
        metrics: Arc<Metrics>,
        handoff: Arc<Handoff>,
    ) -> Result<Self, RelayError> {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            metrics,
            pool,
            channel,
            exchange,
            settings,
            handoff,
        })
    }

    /// Deletes (in the open transaction) and returns the rows of `pick` that are publishable
    /// now and not taken by another relay, in id order.
    ///
    /// Not a prepared statement: the outbox swings from empty to a backlog of thousands and
    /// back, and a plan cached while it was small (a sequential scan) would be kept for the
    /// backlog; planned each time, the lookup by id follows the primary key.
    async fn take(&self, tx: &mut PgConnection, pick: &Pick) -> Result<Vec<Taken>, sqlx::Error> {
        // One RETURNING list for both statements (sqlx takes only static SQL).
        macro_rules! take_sql {
            ($which:literal) => {
                concat!(
                    "DELETE FROM outbox o WHERE o.id IN (",
                    $which,
                    " FOR UPDATE SKIP LOCKED)
                     RETURNING o.id, o.event_id, o.routing_key,
                               o.outcome_network_id, o.outcome_key, o.correlation_id,
                               o.created_at, o.attempts,
                               COALESCE(o.body, (SELECT i.event FROM intake_outcomes i
                                                  WHERE i.network_id = o.outcome_network_id
                                                    AND i.message_key = o.outcome_key
                                                    AND i.event_id = o.event_id))::text"
                )
            };
        }
        let rows = match pick {
            Pick::Handed(ids) => {
                sqlx::query(take_sql!(
                    "SELECT id FROM outbox
                      WHERE id = ANY($1) AND (retry_at IS NULL OR retry_at <= now())"
                ))
                .persistent(false)
                .bind(ids)
                .fetch_all(&mut *tx)
                .await?
            }
            Pick::Oldest => {
                sqlx::query(take_sql!(
                    "SELECT id FROM outbox
                      WHERE retry_at IS NULL OR retry_at <= now()
                      ORDER BY id LIMIT $1"
                ))
                .persistent(false)
                .bind(self.settings.batch_size)
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let mut taken = rows
            .iter()
            .map(|r| {
                Ok(Taken {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    routing_key: r.try_get(2)?,
                    outcome_network_id: r.try_get(3)?,
                    outcome_key: r.try_get(4)?,
                    correlation_id: r.try_get(5)?,
                    created_at: r.try_get(6)?,
                    attempts: r.try_get(7)?,
                    body: r.try_get(8)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        taken.sort_by_key(|t| t.id);
        Ok(taken)
    }

    /// One pass over the rows of `pick`: take, publish every row without waiting, await all
    /// confirms together (pipelined confirms), put back what the broker did not take, commit.
    async fn pass(&self, pick: Pick) -> Result<PassReport, RelayError> {
        let mut tx = self.pool.begin().await?;
        let taken = self.take(&mut tx, &pick).await?;
        if taken.is_empty() {
            tx.commit().await?;
            return Ok(PassReport::default());
        }
        let mut confirms = Vec::with_capacity(taken.len());
        let mut sent = Vec::with_capacity(taken.len());
        let mut again: Vec<&Taken> = Vec::new();
        for t in &taken {
            let Some(body) = &t.body else {
                tracing::error!(event_id = %t.event_id, outbox_id = t.id,
                    "event body not found (its outcome row is gone); will retry");
                again.push(t);
                continue;
            };
            let mut props = BasicProperties::default()
                .with_message_id(t.event_id.to_string().into())
                .with_content_type(CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_timestamp(Utc::now().timestamp().max(0) as u64)
                .with_type(t.routing_key.as_str().into());
            if let Some(c) = &t.correlation_id {
                props = props.with_correlation_id(c.as_str().into());
            }
            // A failed publish returns here: the transaction rolls back and the rows stay.
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    t.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body.as_bytes(),
                    props,
                )
                .await?;
            confirms.push(confirm);
            sent.push(t);
        }
        let timeout = Duration::from_millis(self.settings.confirm_timeout_ms);
        let mut published = 0;
        match tokio::time::timeout(timeout, futures_util::future::join_all(confirms)).await {
            Ok(results) => {
                for (t, result) in sent.into_iter().zip(results) {
                    match result {
                        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => {
                            published += 1
                        }
                        Ok(Confirmation::Ack(Some(_))) => {
                            tracing::warn!(event_id = %t.event_id, routing_key = %t.routing_key,
                                "event unroutable: no queue is bound for it; will retry");
                            again.push(t);
                        }
                        Ok(Confirmation::Nack(_)) => {
                            tracing::warn!(event_id = %t.event_id, "event nacked by the broker; will retry");
                            again.push(t);
                        }
                        Err(e) => {
                            tracing::warn!(event_id = %t.event_id, error = %e, "publish failed; will retry");
                            again.push(t);
                        }
                    }
                }
            }
            Err(_) => {
                // Indeterminate: the broker may have them. They go back and are published
                // again after a pause (consumers dedup by event id).
                tracing::warn!(
                    events = sent.len(),
                    "publisher confirms timed out; will retry"
                );
                again.extend(sent);
            }
        }
        put_back(&mut tx, &again).await?;
        tx.commit().await?;
        self.metrics.record_published(published);
        Ok(PassReport {
            published,
            retried: again.len(),
        })
    }

    /// Runs passes until `shutdown`: over the rows windows hand over as soon as they commit,
    /// and a sweep of the oldest rows every poll interval (at once again while it finds full
    /// batches), whatever the handed-over load. On shutdown it publishes what is handed over
    /// and sweeps until nothing publishable is left, so the events of the final windows leave
    /// before exit.
    pub async fn run(&self, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let batch = self.settings.batch_size.max(1) as usize;
        let mut outage: Backoff = Box::new(crate::infra::backoff::probe_backoff());
        // Rows left by earlier runs or other workers are swept first.
        let mut next_sweep = Instant::now();
        loop {
            let handed = self.handoff.take(batch);
            let idle = handed.is_empty();
            if !idle {
                self.attempt(Pick::Handed(handed), &mut outage, shutdown)
                    .await?;
            }
            if Instant::now() >= next_sweep || (idle && shutdown.is_cancelled()) {
                let Some(report) = self.attempt(Pick::Oldest, &mut outage, shutdown).await? else {
                    continue;
                };
                // A full batch means more is probably waiting: sweep again at once.
                if report.published + report.retried < batch {
                    if idle && shutdown.is_cancelled() {
                        return Ok(());
                    }
                    next_sweep = Instant::now() + poll;
                }
                continue;
            }
            if idle {
                tokio::select! {
                    _ = self.handoff.wake.notified() => {}
                    _ = tokio::time::sleep_until(next_sweep) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }

    /// One pass; `None` if PostgreSQL could not be reached (after waiting a growing pause:
    /// the rows stay pending and are found again by a sweep).
    async fn attempt(
        &self,
        pick: Pick,
        outage: &mut Backoff,
        shutdown: &CancellationToken,
    ) -> Result<Option<PassReport>, RelayError> {
        match self.pass(pick).await {
            Ok(report) => {
                *outage = Box::new(crate::infra::backoff::probe_backoff());
                if report.published + report.retried > 0 {
                    tracing::debug!(
                        published = report.published,
                        retried = report.retried,
                        "relay pass"
                    );
                }
                Ok(Some(report))
            }
            Err(RelayError::Database(e)) if !shutdown.is_cancelled() => {
                let delay = outage.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, "relay cannot reach the database; retrying");
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// Puts rows the broker did not take back into the outbox (same id, same body reference),
/// not to be published again before a pause that grows with their attempts, capped at a
/// minute, so that an unbound routing key does not make the relay spin.
async fn put_back(tx: &mut PgConnection, rows: &[&Taken]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = rows.iter().map(|t| t.id).collect();
    let event_ids: Vec<Uuid> = rows.iter().map(|t| t.event_id).collect();
    let routing: Vec<&str> = rows.iter().map(|t| t.routing_key.as_str()).collect();
    // A row keeps its body inline exactly when it does not refer to an outcome row (the
    // outbox's CHECK), so the body taken is the one to put back.
    let bodies: Vec<Option<&str>> = rows
        .iter()
        .map(|t| {
            t.outcome_key
                .is_none()
                .then_some(t.body.as_deref())
                .flatten()
        })
        .collect();
    let networks: Vec<Option<i64>> = rows.iter().map(|t| t.outcome_network_id).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|t| t.outcome_key.as_deref()).collect();
    let corr: Vec<Option<&str>> = rows.iter().map(|t| t.correlation_id.as_deref()).collect();
    let created: Vec<DateTime<Utc>> = rows.iter().map(|t| t.created_at).collect();
    let attempts: Vec<i32> = rows.iter().map(|t| t.attempts.saturating_add(1)).collect();
    sqlx::query(
        "INSERT INTO outbox (id, event_id, routing_key, body, outcome_network_id, outcome_key,
                             correlation_id, created_at, attempts, retry_at)
         SELECT id, eid, rk, b::jsonb, n, k, c, ts, a,
                now() + make_interval(secs => least(60, power(2, least(a, 6))))
           FROM unnest($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::bigint[],
                       $6::text[], $7::text[], $8::timestamptz[], $9::int[])
             AS u(id, eid, rk, b, n, k, c, ts, a)",
    )
    .bind(&ids)
    .bind(&event_ids)
    .bind(&routing)
    .bind(&bodies)
    .bind(&networks)
    .bind(&keys)
    .bind(&corr)
    .bind(&created)
    .bind(&attempts)
    .execute(&mut *tx)
    .await?;
    Ok(())
}
