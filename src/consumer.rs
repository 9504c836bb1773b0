//! Consumes the intake queue in windows: collects up to `window_size` deliveries (waiting at
//! most `window_wait` after the first), processes them in one transaction, and acks them with
//! one multiple-ack only after that transaction has committed.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Consumer};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::auth::{TOKEN_HEADERS, hash_token, parse_token_header};
use crate::classify::{ErrorClass, classify};
use crate::envelope::{Envelope, check_message_key};
use crate::settings::IntakeSettings;
use crate::window::{self, Outcome, WindowContext};

/// Why a consumer stopped other than by shutdown; the supervisor reconnects.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the consumer stream")]
    StreamEnded,
    #[error("the broker refused an acknowledgement (channel closed)")]
    AckRefused,
}

/// Reads what the pipeline needs from a delivery. Never fails: a missing key or token becomes
/// a failed outcome in the window.
pub fn envelope_of(delivery: &Delivery) -> Envelope {
    let props = &delivery.properties;
    let message_key = check_message_key(props.message_id().as_ref().map(|k| k.as_str()));
    let correlation_id = props
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned());
    let token = props
        .headers()
        .as_ref()
        .and_then(token_header)
        .and_then(|v| parse_token_header(&v).map(hash_token));
    Envelope {
        message_key,
        correlation_id,
        token,
        body: delivery.data.clone(),
        replay: None,
    }
}

/// The value of the first token header, matched case-insensitively.
fn token_header(headers: &FieldTable) -> Option<String> {
    headers.inner().iter().find_map(|(name, value)| {
        if !TOKEN_HEADERS
            .iter()
            .any(|h| name.as_str().eq_ignore_ascii_case(h))
        {
            return None;
        }
        match value {
            AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
            _ => None,
        }
    })
}

/// One consumer: a channel, its consumer stream and the window loop.
pub struct IntakeConsumer {
    pub channel: Channel,
    pub consumer: Consumer,
    pub pool: PgPool,
    pub ctx: WindowContext,
    pub settings: IntakeSettings,
}

impl IntakeConsumer {
    /// Starts consuming `queue` on `channel` with manual acks.
    pub async fn start(
        channel: Channel,
        queue: &str,
        tag: &str,
        pool: PgPool,
        ctx: WindowContext,
        settings: IntakeSettings,
    ) -> Result<Self, ConsumerError> {
        let consumer = channel
            .basic_consume(
                queue.into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            consumer,
            pool,
            ctx,
            settings,
        })
    }

    /// Collects the next window; empty when shutdown was asked before any delivery arrived.
    async fn next_window(
        &mut self,
        shutdown: &CancellationToken,
    ) -> Result<Vec<Delivery>, ConsumerError> {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return Ok(Vec::new()),
            next = self.consumer.next() => next,
        };
        let first = match first {
            Some(d) => d?,
            None => return Err(ConsumerError::StreamEnded),
        };
        let mut window = vec![first];
        let deadline =
            tokio::time::Instant::now() + Duration::from_millis(self.settings.window_wait_ms);
        while window.len() < self.settings.window_size {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Ok(Some(d)) => window.push(d?),
                // The stream ended mid-window: process what we have; the next call reports it.
                Ok(None) | Err(_) => break,
            }
        }
        Ok(window)
    }

    /// Runs windows until shutdown (then cancels the consumer; unprocessed prefetched
    /// deliveries return to the queue when the channel closes) or a broker fault.
    pub async fn run(
        mut self,
        relay_wake: &Notify,
        shutdown: &CancellationToken,
        outage: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        loop {
            let window = self.next_window(shutdown).await?;
            if window.is_empty() {
                let tag = self.consumer.tag();
                self.channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await?;
                return Ok(());
            }
            let envelopes: Vec<Envelope> = window.iter().map(envelope_of).collect();
            match self.process(&envelopes).await {
                Ok(outcomes) => {
                    log_outcomes(&envelopes, &outcomes);
                    ack_all(&window).await?;
                    relay_wake.notify_one();
                }
                Err(class) => {
                    // Hand the deliveries back; their transaction did not commit.
                    nack_all(&window).await?;
                    if class == ErrorClass::Outage {
                        outage.cancel();
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Processes a window: transient errors re-run it with backoff and jitter; a window that
    /// keeps failing for another reason is split so that one message cannot hold back the
    /// others.
    async fn process(&self, envelopes: &[Envelope]) -> Result<Vec<Outcome>, ErrorClass> {
        match self.process_with_retries(envelopes).await {
            Ok(o) => Ok(o),
            Err(ErrorClass::Outage) => Err(ErrorClass::Outage),
            Err(class) if envelopes.len() == 1 => Err(class),
            Err(_) => {
                let mut all = Vec::with_capacity(envelopes.len());
                for env in envelopes {
                    match self.process_with_retries(std::slice::from_ref(env)).await {
                        Ok(mut o) => all.append(&mut o),
                        // Without per-message dispositions the window is handed back whole;
                        // the committed singles are absorbed as duplicates on redelivery.
                        Err(class) => return Err(class),
                    }
                }
                Ok(all)
            }
        }
    }

    async fn process_with_retries(
        &self,
        envelopes: &[Envelope],
    ) -> Result<Vec<Outcome>, ErrorClass> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(20))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .with_max_times(self.settings.transient_retries)
            .build();
        loop {
            match window::process(&self.pool, &self.ctx, envelopes).await {
                Ok(o) => return Ok(o),
                Err(e) => {
                    let class = classify(&e);
                    tracing::warn!(error = %e, ?class, window = envelopes.len(), "window failed");
                    match (class, backoff.next()) {
                        (ErrorClass::Transient, Some(delay)) => tokio::time::sleep(delay).await,
                        (class, _) => return Err(class),
                    }
                }
            }
        }
    }
}

fn log_outcomes(envelopes: &[Envelope], outcomes: &[Outcome]) {
    for (env, outcome) in envelopes.iter().zip(outcomes) {
        let span = tracing::info_span!(
            "intake",
            message_key = env.message_key.as_deref().unwrap_or(""),
            correlation_id = env.correlation_id.as_deref().unwrap_or("")
        );
        span.in_scope(|| match outcome {
            Outcome::Created {
                case_id,
                household_id,
                ..
            } => tracing::info!(case_id, household_id, "case created"),
            Outcome::Failed { code, .. } => tracing::info!(code = code.as_str(), "intake failed"),
            Outcome::Duplicate { event_id } => {
                tracing::info!(%event_id, "duplicate intake; original outcome re-published")
            }
        });
    }
}

/// Acks every delivery of a window with one multiple-ack on its last tag: windows on a channel
/// are processed one at a time, so every earlier unacked tag belongs to this window.
async fn ack_all(window: &[Delivery]) -> Result<(), ConsumerError> {
    let Some(last) = window.iter().max_by_key(|d| d.delivery_tag) else {
        return Ok(());
    };
    if last.acker.ack(BasicAckOptions { multiple: true }).await? {
        Ok(())
    } else {
        // The channel is gone: the broker redelivers and the dedup table absorbs it.
        Err(ConsumerError::AckRefused)
    }
}

async fn nack_all(window: &[Delivery]) -> Result<(), ConsumerError> {
    let Some(last) = window.iter().max_by_key(|d| d.delivery_tag) else {
        return Ok(());
    };
    let options = BasicNackOptions {
        multiple: true,
        requeue: true,
    };
    if last.acker.nack(options).await? {
        Ok(())
    } else {
        Err(ConsumerError::AckRefused)
    }
}
