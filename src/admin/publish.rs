//! `case-intake publish`: sends one intake the way the contract asks (default exchange,
//! persistent, publisher confirms, `mandatory`) and, when asked, waits for its outcome event on
//! a private queue bound to the events exchange *before* the intake is published, so the event
//! cannot be missed.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use crate::domain::key::{MAX_KEY_CHARS, MessageKey};
use crate::infra::endpoints::{self, Unreachable};
use crate::infra::settings::AmqpSettings;
use crate::intake::delivery::KEY_HEADER;
use crate::intake::event::{CASE_CREATED, CASE_MATCHED};
use crate::outbox::topology;

/// Longest key, in bytes, that fits the AMQP `message_id` property (a short string); a longer
/// key (of multi-byte characters) travels in the `message-id` header.
const MAX_PROPERTY_BYTES: usize = 255;

/// One intake to publish. The token is a secret: never logged, never printed.
pub struct Intake {
    pub key: String,
    pub token: SecretString,
    pub correlation_id: Option<String>,
    pub body: Vec<u8>,
}

/// The outcome event of a published intake.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub routing_key: String,
    /// The CloudEvent as the service published it (the SSN already masked).
    pub event: Value,
}

impl Outcome {
    /// True for `case.created`.
    pub fn created(&self) -> bool {
        self.event["type"] == CASE_CREATED
    }

    /// True when the intake has a case: `case.created`, or `case.matched` (a network whose
    /// duplicate policy is `link` answered with an existing case). Only `case.failed` is not.
    pub fn has_case(&self) -> bool {
        self.created() || self.event["type"] == CASE_MATCHED
    }
}

/// Why publishing (or waiting) failed. None of them carries the token or the body.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the message key must be 1 to {MAX_KEY_CHARS} characters without control characters")]
    InvalidKey,
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    #[error("connecting to the broker timed out")]
    ConnectTimeout,
    #[error(
        "the intake queue {0:?} does not exist: start the worker (`case-intake run`) first, \
         it declares the queues"
    )]
    NoIntakeQueue(String),
    #[error("the broker refused the intake (publisher nack)")]
    Nacked,
    #[error("no outcome event for key {key:?} within {timeout:?}: is the worker running?")]
    Timeout { key: String, timeout: Duration },
    #[error("the broker closed the events queue")]
    EventsClosed,
}

/// Publishes `intake`; with `wait`, returns its outcome event (the first event whose `subject`
/// is the key), waiting at most that long.
pub async fn publish(
    amqp: &AmqpSettings,
    intake: &Intake,
    wait: Option<Duration>,
) -> Result<Option<Outcome>, PublishError> {
    if MessageKey::parse(&intake.key).is_err() {
        return Err(PublishError::InvalidKey);
    }
    let conn = connect(amqp).await?;
    let result = publish_on(&conn, amqp, intake, wait).await;
    let _ = conn.close(200, "OK".into()).await;
    result
}

async fn connect(amqp: &AmqpSettings) -> Result<Connection, PublishError> {
    let timeout = Duration::from_millis(amqp.connect_timeout_ms);
    tokio::time::timeout(timeout, endpoints::connect(amqp, "case-intake publish"))
        .await
        .map_err(|_| PublishError::ConnectTimeout)?
        .map(|(conn, _)| conn)
        .map_err(|e| match e {
            Unreachable::Timeout(_) => PublishError::ConnectTimeout,
            Unreachable::Failed(_, e) => PublishError::from(e),
        })
}

async fn publish_on(
    conn: &Connection,
    amqp: &AmqpSettings,
    intake: &Intake,
    wait: Option<Duration>,
) -> Result<Option<Outcome>, PublishError> {
    let Some(timeout) = wait else {
        send(conn, amqp, intake).await?;
        return Ok(None);
    };
    let events = subscribe(conn, amqp).await?;
    send(conn, amqp, intake).await?;
    outcome_of(events, &intake.key, timeout).await.map(Some)
}

/// A server-named, exclusive, auto-delete queue bound to every outcome routing key (created,
/// failed, matched: an intake has exactly one of them), consumed
/// without acks: it lives only as long as this command.
async fn subscribe(
    conn: &Connection,
    amqp: &AmqpSettings,
) -> Result<lapin::Consumer, PublishError> {
    let ch = conn.create_channel().await?;
    topology::declare_events_exchange(&ch, amqp).await?;
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = ch
        .queue_declare("".into(), private, FieldTable::default())
        .await?;
    for routing_key in [
        &amqp.created_routing_key,
        &amqp.failed_routing_key,
        &amqp.matched_routing_key,
    ] {
        ch.queue_bind(
            queue.name().clone(),
            amqp.events_exchange.as_str().into(),
            routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    let consume = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    Ok(ch
        .basic_consume(
            queue.name().clone(),
            "".into(),
            consume,
            FieldTable::default(),
        )
        .await?)
}

/// Publishes with confirms and `mandatory`: a missing intake queue is reported, not lost.
async fn send(conn: &Connection, amqp: &AmqpSettings, intake: &Intake) -> Result<(), PublishError> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    let confirm = ch
        .basic_publish(
            "".into(),
            amqp.intake_queue.as_str().into(),
            mandatory,
            &intake.body,
            properties_of(intake),
        )
        .await?
        .await?;
    let acked = confirm.is_ack();
    if confirm.take_message().is_some() {
        return Err(PublishError::NoIntakeQueue(amqp.intake_queue.clone()));
    }
    if !acked {
        return Err(PublishError::Nacked);
    }
    Ok(())
}

/// The intake's properties and headers: the key as the `message_id` property, or as the
/// `message-id` header when it is longer than a short string can hold.
fn properties_of(intake: &Intake) -> BasicProperties {
    let mut headers = FieldTable::default();
    let authorization = format!("Token {}", intake.token.expose_secret());
    headers.insert("authorization".into(), long_string(&authorization));
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if intake.key.len() <= MAX_PROPERTY_BYTES {
        props = props.with_message_id(intake.key.as_str().into());
    } else {
        headers.insert(KEY_HEADER.into(), long_string(&intake.key));
    }
    if let Some(c) = &intake.correlation_id {
        props = props.with_correlation_id(c.as_str().into());
    }
    props.with_headers(headers)
}

fn long_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The first event whose `subject` is `key`; other events (of other intakes) are skipped.
async fn outcome_of(
    mut events: lapin::Consumer,
    key: &str,
    timeout: Duration,
) -> Result<Outcome, PublishError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, events.next())
            .await
            .map_err(|_| PublishError::Timeout {
                key: key.to_owned(),
                timeout,
            })?;
        let delivery = next.ok_or(PublishError::EventsClosed)??;
        let Ok(event) = serde_json::from_slice::<Value>(&delivery.data) else {
            continue;
        };
        if event["subject"] == key {
            return Ok(Outcome {
                routing_key: delivery.routing_key.as_str().to_owned(),
                event,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn intake(key: &str) -> Intake {
        Intake {
            key: key.to_owned(),
            token: SecretString::from("t0k"),
            correlation_id: Some("c-1".into()),
            body: b"{}".to_vec(),
        }
    }

    fn header(props: &BasicProperties, name: &str) -> Option<AMQPValue> {
        props.headers().as_ref()?.inner().get(name).cloned()
    }

    #[test]
    fn the_key_is_the_property_when_it_fits() {
        let p = properties_of(&intake("k-1"));
        assert_eq!(p.message_id().as_ref().map(|k| k.as_str()), Some("k-1"));
        assert_eq!(header(&p, KEY_HEADER), None);
        assert_eq!(p.correlation_id().as_ref().map(|c| c.as_str()), Some("c-1"));
        assert_eq!(p.delivery_mode(), &Some(2));
        assert_eq!(header(&p, "authorization"), Some(long_string("Token t0k")));
    }

    #[test]
    fn a_key_longer_than_a_short_string_travels_as_the_header() {
        let key = "é".repeat(200);
        let p = properties_of(&intake(&key));
        assert_eq!(p.message_id(), &None);
        assert_eq!(header(&p, KEY_HEADER), Some(long_string(&key)));
    }
}
