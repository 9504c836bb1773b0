//! Consumes the intake queue (or its dead-letter queue) in windows: collects up to
//! `window_size` deliveries (waiting at most `window_wait` after the first), processes them in
//! one transaction, and acks them only after that transaction has committed.
//!
//! Failure classes (see `classify`): a transient error re-runs the window with backoff, then
//! sends the intake through the delayed retry queue, then fails it `retries_exhausted`; an
//! outage holds the window unacked and resumes when PostgreSQL answers, spending no attempt; an
//! unknown error hands the delivery back to the broker, whose delivery limit dead-letters a
//! poison message, which the dead-letter consumer then records as failed `dead_lettered`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use crate::infra::backoff::probe_backoff;
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::domain::error::{ErrorCode, IntakeError};
use crate::infra::classify::{ErrorClass, classify, retry_transient};
use crate::infra::metrics::{ConsumerState, Metrics};
use crate::infra::settings::IntakeSettings;
use crate::infra::throttle::Throttle;
use crate::intake::delivery::{envelope_of, retries_of, retry_headers};
use crate::intake::disposition::{self, Disposition};
use crate::intake::envelope::Envelope;
use crate::intake::window::{self, Outcome, WindowContext};

/// Why a consumer stopped other than by shutdown; the supervisor reconnects.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("the broker ended the consumer stream")]
    StreamEnded,
    #[error("the broker refused an acknowledgement (channel closed)")]
    AckRefused,
    #[error("the broker did not confirm a retry publish")]
    RetryNotConfirmed,
}

/// Which queue a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The intake queue: normal processing.
    Intake,
    /// The dead-letter queue: every delivery becomes a failed `dead_lettered` intake (unless
    /// its key already has an outcome), so that even a poison message ends in one outcome.
    DeadLetter,
}

/// One consumer: a channel, its consumer stream and the window loop.
pub struct IntakeConsumer {
    channel: Channel,
    consumer: Consumer,
    /// Confirm-mode channel for re-publishing to the retry queue.
    retry_channel: Channel,
    retry_queue: String,
    pool: PgPool,
    ctx: WindowContext,
    settings: IntakeSettings,
    mode: Mode,
    metrics: Arc<Metrics>,
}

/// Where and how a consumer reads.
pub struct ConsumerSpec<'a> {
    pub queue: &'a str,
    pub retry_queue: &'a str,
    pub tag: &'a str,
    pub mode: Mode,
}

impl IntakeConsumer {
    /// Starts consuming with manual acks.
    pub async fn start(
        channel: Channel,
        retry_channel: Channel,
        spec: ConsumerSpec<'_>,
        pool: PgPool,
        ctx: WindowContext,
        settings: IntakeSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConsumerError> {
        retry_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                spec.queue.into(),
                spec.tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            channel,
            consumer,
            retry_channel,
            retry_queue: spec.retry_queue.to_owned(),
            pool,
            ctx,
            settings,
            mode: spec.mode,
            metrics,
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
            // A server-side cancel (queue deleted, failover) ends the stream: a fault.
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
    /// deliveries return to the queue when the channel closes) or a fault. Each window:
    /// envelopes, their results, a disposition each (`disposition`), then acks and nacks.
    pub async fn run(
        mut self,
        shutdown: &CancellationToken,
        outage: &CancellationToken,
    ) -> Result<(), ConsumerError> {
        loop {
            let mut window = self.next_window(shutdown).await?;
            if window.is_empty() {
                let tag = self.consumer.tag();
                self.channel
                    .basic_cancel(tag, BasicCancelOptions::default())
                    .await?;
                return Ok(());
            }
            let envelopes = self.envelopes(&mut window);
            let Some(results) = self.results(&envelopes, shutdown).await else {
                // PostgreSQL stayed away longer than the hold time: hand the deliveries
                // back (their transaction did not commit) and let the supervisor pause.
                nack(&window, true).await?;
                outage.cancel();
                return Ok(());
            };
            let dispositions = self.dispose(&window, &envelopes, results, shutdown).await;
            self.record(&envelopes, &dispositions);
            self.settle(&window, &envelopes, &dispositions).await?;
        }
    }

    /// Reads each delivery into its envelope; the dead-letter consumer marks every one to
    /// fail `dead_lettered`.
    fn envelopes(&self, window: &mut [Delivery]) -> Vec<Envelope> {
        let max_body = self.ctx.limits.max_body_bytes;
        let mut envelopes: Vec<Envelope> = window
            .iter_mut()
            .map(|d| envelope_of(d, max_body))
            .collect();
        if self.mode == Mode::DeadLetter {
            for env in &mut envelopes {
                env.fail_with(IntakeError::new(
                    ErrorCode::DeadLettered,
                    "the broker dead-lettered this intake after repeated failed deliveries; \
                     replay it once the cause is fixed",
                ));
            }
        }
        envelopes
    }

    /// Decides each delivery's disposition from its result and its retry count, and records
    /// the exhausted ones as failed `retries_exhausted` (a window of their own).
    async fn dispose(
        &self,
        window: &[Delivery],
        envelopes: &[Envelope],
        results: Vec<Result<Outcome, ErrorClass>>,
        shutdown: &CancellationToken,
    ) -> Vec<Disposition> {
        let max_attempts = self.settings.max_attempts;
        let mut dispositions: Vec<Disposition> = results
            .into_iter()
            .zip(window)
            .map(|(result, delivery)| {
                let retries = || retries_of(&delivery.properties, &self.ctx.vault);
                disposition::decide(result, retries, max_attempts)
            })
            .collect();
        let exhausted: Vec<usize> = (0..dispositions.len())
            .filter(|&i| dispositions[i] == Disposition::Exhausted)
            .collect();
        if exhausted.is_empty() {
            return dispositions;
        }
        let failing: Vec<Envelope> = exhausted
            .iter()
            .map(|&i| {
                let mut env = envelopes[i].clone();
                env.fail_with(IntakeError::new(
                    ErrorCode::RetriesExhausted,
                    "transient database errors persisted through every retry; replay it later",
                ));
                env
            })
            .collect();
        let results = self.results(&failing, shutdown).await;
        for (k, &i) in exhausted.iter().enumerate() {
            dispositions[i] = match &results {
                Some(results) => disposition::after_exhausted(results[k].clone()),
                None => Disposition::Requeue,
            };
        }
        dispositions
    }

    /// Carries out the dispositions of a window: one multiple-ack when every delivery is
    /// done, else an ack, a trip through the retry queue or a nack each.
    async fn settle(
        &self,
        window: &[Delivery],
        envelopes: &[Envelope],
        dispositions: &[Disposition],
    ) -> Result<(), ConsumerError> {
        if dispositions
            .iter()
            .all(|d| matches!(d, Disposition::Done(_)))
        {
            return ack(window, true).await;
        }
        for ((delivery, d), env) in window.iter().zip(dispositions).zip(envelopes) {
            let one = std::slice::from_ref(delivery);
            match d {
                Disposition::Done(_) => ack(one, false).await?,
                Disposition::Retry { count } => {
                    self.metrics.record_retry();
                    self.send_to_retry(delivery, &env.body, *count).await?;
                    ack(one, false).await?;
                }
                // `dispose` leaves no exhausted delivery; were one left, the broker's
                // delivery limit still bounds it.
                Disposition::Exhausted | Disposition::Requeue => nack(one, false).await?,
            }
        }
        Ok(())
    }

    /// Logs and counts the outcome of each delivery.
    fn record(&self, envelopes: &[Envelope], dispositions: &[Disposition]) {
        for d in dispositions {
            if let Disposition::Done(o) = d {
                let (kind, code) = match o {
                    Outcome::Created { .. } => ("created", None),
                    Outcome::Failed { code, .. } => ("failed", Some(code.as_str())),
                    Outcome::Duplicate { .. } => ("duplicate", None),
                    Outcome::Matched { .. } => ("matched", None),
                    // Only an operator's retry comes to this; a delivery never does.
                    Outcome::AlreadyResolved { .. } => ("already_resolved", None),
                };
                self.metrics.record_outcome(kind, code);
            }
        }
        log_outcomes(envelopes, dispositions);
    }

    /// Re-publishes a delivery (its body was taken into its envelope) to the retry queue with
    /// retry count `count` (its disposition's) tagged, and waits for the confirm before the
    /// original is acked (a crash in between duplicates the message; the dedup table absorbs
    /// it).
    async fn send_to_retry(
        &self,
        delivery: &Delivery,
        body: &[u8],
        count: u32,
    ) -> Result<(), ConsumerError> {
        let props = &delivery.properties;
        let headers = retry_headers(props, &self.ctx.vault, count);
        let props = props.clone().with_headers(headers);
        let confirm = self
            .retry_channel
            .basic_publish(
                "".into(),
                self.retry_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                props,
            )
            .await?
            .await?;
        if confirm.is_ack() && confirm.take_message().is_none() {
            Ok(())
        } else {
            Err(ConsumerError::RetryNotConfirmed)
        }
    }

    /// The window's result for each message; `None` when PostgreSQL stayed away longer than
    /// the hold time (an outage spends no attempt). Transient or unknown errors that outlast the
    /// in-process retries split the window so that each message gets its own result and one
    /// bad message cannot hold back the others.
    async fn results(
        &self,
        envelopes: &[Envelope],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Result<Outcome, ErrorClass>>> {
        match self.hold_through_outage(envelopes, shutdown).await {
            Ok(outcomes) => Some(outcomes.into_iter().map(Ok).collect()),
            Err(ErrorClass::Outage) => None,
            Err(class) if envelopes.len() == 1 => Some(vec![Err(class)]),
            Err(_) => {
                let mut all = Vec::with_capacity(envelopes.len());
                for env in envelopes {
                    let one = std::slice::from_ref(env);
                    match self.hold_through_outage(one, shutdown).await {
                        Ok(mut o) => all.push(Ok(o.remove(0))),
                        Err(ErrorClass::Outage) => return None,
                        Err(class) => all.push(Err(class)),
                    }
                }
                Some(all)
            }
        }
    }

    /// `retrying_transient`, holding through a database outage for up to `outage_hold_ms`.
    async fn hold_through_outage(
        &self,
        envelopes: &[Envelope],
        shutdown: &CancellationToken,
    ) -> Result<Vec<Outcome>, ErrorClass> {
        let hold = Duration::from_millis(self.settings.outage_hold_ms);
        let started = tokio::time::Instant::now();
        let mut probe = probe_backoff();
        loop {
            let result = self.retrying_transient(envelopes).await;
            if result.is_ok() && self.metrics.state() == ConsumerState::DatabaseOutage {
                self.metrics.set_state(ConsumerState::Consuming);
            }
            match result {
                Err(ErrorClass::Outage) if started.elapsed() < hold && !shutdown.is_cancelled() => {
                    self.metrics.set_state(ConsumerState::DatabaseOutage);
                    let delay = probe.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(
                        window = envelopes.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "database unreachable or read-only; holding the window"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                other => return other,
            }
        }
    }

    /// `run_window`, re-run while its error is transient (`intake.transient_retries` times).
    async fn retrying_transient(&self, envelopes: &[Envelope]) -> Result<Vec<Outcome>, ErrorClass> {
        let times = self.settings.transient_retries;
        retry_transient(times, |class| *class, || self.run_window(envelopes)).await
    }

    /// One run of the window, its failure logged and classified; a panic is a bug class.
    async fn run_window(&self, envelopes: &[Envelope]) -> Result<Vec<Outcome>, ErrorClass> {
        let started = std::time::Instant::now();
        let run = AssertUnwindSafe(window::run(&self.pool, &self.ctx, envelopes));
        match run.catch_unwind().await {
            Ok(Ok(o)) => {
                self.metrics
                    .record_window(envelopes.len(), started.elapsed().as_secs_f64());
                Ok(o)
            }
            Ok(Err(e)) => {
                let class = classify(&e);
                if class == ErrorClass::Outage {
                    // The next try must not get the same session back: it may be on a server
                    // that is read-only or gone since a failover.
                    crate::infra::db::recycle();
                }
                if let Some(suppressed) = WINDOW_FAILED.allow() {
                    tracing::warn!(error = %e, ?class, window = envelopes.len(), suppressed, "window failed");
                }
                Err(class)
            }
            Err(_) => {
                // A bug: never let it kill the consumer; the broker's delivery limit
                // dead-letters a message that keeps triggering it.
                tracing::error!(window = envelopes.len(), "window processing panicked");
                Err(ErrorClass::Unknown)
            }
        }
    }
}

// A poison message or a failing dependency repeats these for every delivery: one line per
// period, with the count suppressed.
static WINDOW_FAILED: Throttle = Throttle::new(Duration::from_secs(5));
static RETRIED: Throttle = Throttle::new(Duration::from_secs(5));
static REQUEUED: Throttle = Throttle::new(Duration::from_secs(5));

fn log_outcomes(envelopes: &[Envelope], dispositions: &[Disposition]) {
    for (env, d) in envelopes.iter().zip(dispositions) {
        let span = tracing::info_span!(
            "intake",
            message_key = env.message_key.as_deref().unwrap_or(""),
            correlation_id = env.correlation_id.as_deref().unwrap_or(""),
            trace_id = env.trace.as_ref().map(|t| t.trace_id())
        );
        let _entered = span.enter();
        match d {
            Disposition::Done(Outcome::Created {
                case_id,
                household_id,
                ..
            }) => tracing::info!(case_id, household_id, "case created"),
            Disposition::Done(Outcome::Failed { code, .. }) => {
                tracing::info!(code = code.as_str(), "intake failed")
            }
            Disposition::Done(Outcome::Duplicate { event_id }) => {
                tracing::info!(%event_id, "duplicate intake; original outcome re-published")
            }
            Disposition::Done(Outcome::Matched {
                case_id,
                household_id,
                ..
            }) => tracing::info!(case_id, household_id, "linked to an existing case"),
            Disposition::Done(Outcome::AlreadyResolved { .. }) => {
                tracing::info!("failure already resolved; nothing done")
            }
            Disposition::Retry { .. } => {
                if let Some(suppressed) = RETRIED.allow() {
                    tracing::warn!(suppressed, "transient failure; sent to the retry queue")
                }
            }
            Disposition::Exhausted | Disposition::Requeue => {
                if let Some(suppressed) = REQUEUED.allow() {
                    tracing::warn!(suppressed, "unexpected failure; handed back to the broker")
                }
            }
        }
    }
}

/// Acks deliveries. `all_of_window` uses one multiple-ack on the last tag: windows on a
/// channel are processed one at a time, so every earlier unacked tag belongs to this window.
async fn ack(deliveries: &[Delivery], all_of_window: bool) -> Result<(), ConsumerError> {
    let Some(last) = deliveries.iter().max_by_key(|d| d.delivery_tag) else {
        return Ok(());
    };
    let options = BasicAckOptions {
        multiple: all_of_window,
    };
    if last.acker.ack(options).await? {
        Ok(())
    } else {
        // The channel is gone: the broker redelivers and the dedup table absorbs it.
        Err(ConsumerError::AckRefused)
    }
}

async fn nack(deliveries: &[Delivery], all_of_window: bool) -> Result<(), ConsumerError> {
    let Some(last) = deliveries.iter().max_by_key(|d| d.delivery_tag) else {
        return Ok(());
    };
    let options = BasicNackOptions {
        multiple: all_of_window,
        requeue: true,
    };
    if last.acker.nack(options).await? {
        Ok(())
    } else {
        Err(ConsumerError::AckRefused)
    }
}
