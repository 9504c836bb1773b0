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
//!
//! What to publish and when is decided here; the take and the put-back statements are in
//! `store::outbox`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::infra::classify::{ErrorClass, classify};
use crate::infra::metrics::Metrics;
use crate::infra::settings::OutboxSettings;
use crate::store::outbox::{self, Taken};

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

    /// Takes (deletes in the open transaction) the rows of `pick` that are publishable now
    /// and not taken by another relay, in id order.
    async fn take(&self, tx: &mut PgConnection, pick: &Pick) -> Result<Vec<Taken>, sqlx::Error> {
        match pick {
            Pick::Handed(ids) => outbox::take_handed(tx, ids).await,
            Pick::Oldest => outbox::take_oldest(tx, self.settings.batch_size).await,
        }
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
        let mut again: Vec<&Taken> = Vec::new();
        let sent = self.publish_each(&taken, &mut again).await?;
        let published = self.await_confirms(sent, &mut again).await;
        outbox::put_back(&mut tx, &again).await?;
        tx.commit().await?;
        self.metrics.record_published(published);
        Ok(PassReport {
            published,
            retried: again.len(),
        })
    }

    /// Publishes every taken row that has a body, without waiting for confirms; returns the
    /// rows sent with their pending confirms. A row without a body goes to `again`.
    async fn publish_each<'t>(
        &self,
        taken: &'t [Taken],
        again: &mut Vec<&'t Taken>,
    ) -> Result<Vec<(&'t Taken, PublisherConfirm)>, RelayError> {
        let mut sent = Vec::with_capacity(taken.len());
        for t in taken {
            let Some(body) = &t.body else {
                tracing::error!(event_id = %t.event_id, outbox_id = t.id,
                    "event body not found (its outcome row is gone); will retry");
                again.push(t);
                continue;
            };
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
                    properties(t),
                )
                .await?;
            sent.push((t, confirm));
        }
        Ok(sent)
    }

    /// Awaits the confirms of `sent` together, within `outbox.confirm_timeout_ms`; returns how
    /// many the broker took. The others (nacked, returned, failed, or all of them on a
    /// timeout) go to `again`.
    async fn await_confirms<'t>(
        &self,
        sent: Vec<(&'t Taken, PublisherConfirm)>,
        again: &mut Vec<&'t Taken>,
    ) -> usize {
        let timeout = Duration::from_millis(self.settings.confirm_timeout_ms);
        let (rows, confirms): (Vec<&Taken>, Vec<PublisherConfirm>) = sent.into_iter().unzip();
        let Ok(results) =
            tokio::time::timeout(timeout, futures_util::future::join_all(confirms)).await
        else {
            // Indeterminate: the broker may have them. They go back and are published
            // again after a pause (consumers dedup by event id).
            tracing::warn!(
                events = rows.len(),
                "publisher confirms timed out; will retry"
            );
            again.extend(rows);
            return 0;
        };
        let mut published = 0;
        for (t, result) in rows.into_iter().zip(results) {
            if taken_by_broker(t, result) {
                published += 1;
            } else {
                again.push(t);
            }
        }
        published
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
                if classify(&e) == ErrorClass::Outage {
                    // As in the consumer: the next pass takes a fresh session.
                    crate::infra::db::recycle();
                }
                let delay = outage.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, "relay cannot reach the database; retrying");
                tokio::time::sleep(delay).await;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }
}

/// The properties of an event's message: its id as `message_id` (consumers dedup by it),
/// persistent, typed by its routing key, with the intake's correlation id and, as headers,
/// the event's W3C trace context.
fn properties(t: &Taken) -> BasicProperties {
    let mut props = BasicProperties::default()
        .with_message_id(t.event_id.to_string().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(2)
        .with_timestamp(Utc::now().timestamp().max(0) as u64)
        .with_type(t.routing_key.as_str().into());
    if let Some(c) = &t.correlation_id {
        props = props.with_correlation_id(c.as_str().into());
    }
    match t.body.as_deref().and_then(trace_headers) {
        Some(headers) => props.with_headers(headers),
        None => props,
    }
}

/// The CloudEvents distributed-tracing attributes of an event body (validated when the intake
/// was read).
#[derive(serde::Deserialize)]
struct TraceAttributes {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

/// The `traceparent` and `tracestate` headers of an event: the same values as its body's
/// attributes, so AMQP-level tracing and CloudEvents consumers see one trace. Bodies without
/// the attribute (most, when publishers do not trace) are not parsed.
fn trace_headers(body: &str) -> Option<FieldTable> {
    if !body.contains("\"traceparent\"") {
        return None;
    }
    let attrs: TraceAttributes = serde_json::from_str(body).ok()?;
    let mut headers = FieldTable::default();
    let text = |s: String| AMQPValue::LongString(LongString::from(s.into_bytes()));
    headers.insert("traceparent".into(), text(attrs.traceparent?));
    if let Some(state) = attrs.tracestate {
        headers.insert("tracestate".into(), text(state));
    }
    Some(headers)
}

/// Whether the broker took an event, by its confirm; logs why not.
fn taken_by_broker(t: &Taken, result: lapin::Result<Confirmation>) -> bool {
    match result {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => true,
        Ok(Confirmation::Ack(Some(_))) => {
            tracing::warn!(event_id = %t.event_id, routing_key = %t.routing_key,
                "event unroutable: no queue is bound for it; will retry");
            false
        }
        Ok(Confirmation::Nack(_)) => {
            tracing::warn!(event_id = %t.event_id, "event nacked by the broker; will retry");
            false
        }
        Err(e) => {
            tracing::warn!(event_id = %t.event_id, error = %e, "publish failed; will retry");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn text(headers: &FieldTable, name: &str) -> Option<String> {
        match headers.inner().get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).unwrap()),
            _ => None,
        }
    }

    #[test]
    fn trace_headers_mirror_the_event_attributes() {
        let body = serde_json::json!({"id": "e", "traceparent": PARENT, "tracestate": "a=1"});
        let h = trace_headers(&body.to_string()).unwrap();
        assert_eq!(text(&h, "traceparent").as_deref(), Some(PARENT));
        assert_eq!(text(&h, "tracestate").as_deref(), Some("a=1"));

        let body = serde_json::json!({"id": "e", "traceparent": PARENT});
        let h = trace_headers(&body.to_string()).unwrap();
        assert_eq!(text(&h, "tracestate"), None);
    }

    #[test]
    fn no_trace_attribute_no_headers() {
        assert!(trace_headers(r#"{"id":"e","data":{}}"#).is_none());
        // The word inside the data is not the attribute.
        let body = r#"{"id":"e","data":{"note":"traceparent"}}"#;
        assert!(trace_headers(body).is_none());
    }
}
