//! The outbox relay: publishes pending events with publisher confirms and `mandatory`, then
//! marks them published. Rows are leased (not locked) while their confirms are awaited, so no
//! transaction is held across a broker round trip, and two relays never publish one row at once
//! unless a lease expired (an indeterminate publish: consumers dedup by event id).

use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use sqlx::{PgPool, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use std::sync::Arc;

use crate::event::CONTENT_TYPE;
use crate::metrics::Metrics;
use crate::settings::OutboxSettings;

/// Why a relay pass stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
}

/// A leased outbox row.
struct Pending {
    id: i64,
    event_id: Uuid,
    routing_key: String,
    /// `None` only if the outcome row the event lives in is gone, which forget-failed and
    /// retention prevent; such a row is retried (and counted in the backlog), never dropped.
    body: Option<String>,
    correlation_id: Option<String>,
}

/// What one relay pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PassReport {
    pub published: usize,
    /// Nacked, returned (unroutable) or unconfirmed in time: left for a later pass.
    pub retried: usize,
}

/// Publishes events of the outbox to `exchange`.
pub struct Relay {
    metrics: Arc<Metrics>,
    pool: PgPool,
    channel: Channel,
    exchange: String,
    settings: OutboxSettings,
}

impl Relay {
    /// Puts `channel` in confirm mode and returns a relay publishing on it.
    pub async fn new(
        pool: PgPool,
        channel: Channel,
        exchange: String,
        settings: OutboxSettings,
        metrics: Arc<Metrics>,
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
        })
    }

    /// Leases up to `batch_size` pending rows whose lease is free or expired, oldest first.
    async fn lease(&self) -> Result<Vec<Pending>, sqlx::Error> {
        let rows = sqlx::query(
            "UPDATE outbox o
                SET lease_until = now() + make_interval(secs => $2::float8 / 1000),
                    attempts = o.attempts + 1
              WHERE o.id IN (SELECT id FROM outbox
                              WHERE published_at IS NULL
                                AND (lease_until IS NULL OR lease_until < now())
                              ORDER BY id
                              LIMIT $1
                                FOR UPDATE SKIP LOCKED)
          RETURNING o.id, o.event_id, o.routing_key,
                    COALESCE(o.body, (SELECT i.event FROM intake_outcomes i
                                       WHERE i.network_id = o.outcome_network_id
                                         AND i.message_key = o.outcome_key
                                         AND i.event_id = o.event_id))::text,
                    o.correlation_id",
        )
        .bind(self.settings.batch_size)
        .bind(self.settings.lease_ms as f64)
        .fetch_all(&self.pool)
        .await?;
        let mut pending = rows
            .iter()
            .map(|r| {
                Ok(Pending {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    routing_key: r.try_get(2)?,
                    body: r.try_get(3)?,
                    correlation_id: r.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        pending.sort_by_key(|p| p.id);
        Ok(pending)
    }

    /// One pass: lease, publish every row without waiting, then await all confirms together
    /// (pipelined confirms), and record which rows are done.
    pub async fn pass(&self) -> Result<PassReport, RelayError> {
        let pending = self.lease().await?;
        if pending.is_empty() {
            return Ok(PassReport::default());
        }
        let mut confirms = Vec::with_capacity(pending.len());
        let mut again = Vec::new();
        let mut sent = Vec::with_capacity(pending.len());
        for p in &pending {
            let Some(body) = &p.body else {
                tracing::error!(event_id = %p.event_id, outbox_id = p.id,
                    "event body not found (its outcome row is gone); will retry");
                again.push(p.id);
                continue;
            };
            let mut props = BasicProperties::default()
                .with_message_id(p.event_id.to_string().into())
                .with_content_type(CONTENT_TYPE.into())
                .with_delivery_mode(2)
                .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
                .with_type(p.routing_key.as_str().into());
            if let Some(c) = &p.correlation_id {
                props = props.with_correlation_id(c.as_str().into());
            }
            let confirm = self
                .channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    p.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    body.as_bytes(),
                    props,
                )
                .await?;
            confirms.push(confirm);
            sent.push(p);
        }
        let timeout = Duration::from_millis(self.settings.confirm_timeout_ms);
        let waited = tokio::time::timeout(timeout, futures_util::future::join_all(confirms)).await;
        let Ok(results) = waited else {
            // Indeterminate: the leases expire and a later pass publishes again.
            tracing::warn!(events = pending.len(), "publisher confirms timed out");
            return Ok(PassReport {
                published: 0,
                retried: pending.len(),
            });
        };
        let mut done = Vec::with_capacity(pending.len());
        for (p, result) in sent.into_iter().zip(results) {
            match result {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => done.push(p.id),
                Ok(Confirmation::Ack(Some(_))) => {
                    tracing::warn!(event_id = %p.event_id, routing_key = %p.routing_key,
                        "event unroutable: no queue is bound for it; will retry");
                    again.push(p.id);
                }
                Ok(Confirmation::Nack(_)) => {
                    tracing::warn!(event_id = %p.event_id, "event nacked by the broker; will retry");
                    again.push(p.id);
                }
                Err(e) => {
                    tracing::warn!(event_id = %p.event_id, error = %e, "publish failed; will retry");
                    again.push(p.id);
                }
            }
        }
        sqlx::query(
            "UPDATE outbox SET published_at = now(), lease_until = NULL WHERE id = ANY($1)",
        )
        .bind(&done)
        .execute(&self.pool)
        .await?;
        self.metrics.record_published(done.len());
        if !again.is_empty() {
            // Retry after a pause that grows with the attempts, capped at a minute, so an
            // unbound routing key does not make the relay spin.
            sqlx::query(
                "UPDATE outbox SET lease_until = now() + make_interval(secs => least(60, power(2, least(attempts, 6))))
                  WHERE id = ANY($1)",
            )
            .bind(&again)
            .execute(&self.pool)
            .await?;
        }
        Ok(PassReport {
            published: done.len(),
            retried: again.len(),
        })
    }

    /// Runs passes until `shutdown`: immediately after `wake` (a window committed), otherwise
    /// every poll interval (rows left by other workers or earlier runs). On shutdown it runs
    /// one last pass so the events of the final windows leave before exit.
    pub async fn run(&self, wake: &Notify, shutdown: &CancellationToken) -> Result<(), RelayError> {
        let poll = Duration::from_millis(self.settings.poll_interval_ms);
        let mut outage = crate::consumer::probe_backoff();
        loop {
            let report = match self.pass().await {
                Ok(r) => {
                    outage = crate::consumer::probe_backoff();
                    r
                }
                // PostgreSQL is unreachable: wait and probe again; the rows stay pending.
                Err(RelayError::Database(e)) if !shutdown.is_cancelled() => {
                    let delay = outage.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, "relay cannot reach the database; retrying");
                    tokio::time::sleep(delay).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if report.published > 0 {
                tracing::debug!(
                    published = report.published,
                    retried = report.retried,
                    "relay pass"
                );
            }
            // On shutdown, drain what is leasable now, then stop.
            if shutdown.is_cancelled() && report.published + report.retried == 0 {
                return Ok(());
            }
            // A full batch means more is probably waiting: go again at once.
            if report.published + report.retried < self.settings.batch_size as usize
                && !shutdown.is_cancelled()
            {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
}
