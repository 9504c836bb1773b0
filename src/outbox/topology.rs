//! Broker topology: the intake quorum queue with its delivery limit, dead-letter and parking
//! queues, the retry queue, and the events topic exchange. Declarations are idempotent;
//! operators who import definitions instead turn them off with `amqp.declare_topology = false`.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::infra::settings::AmqpSettings;

/// Redeliveries of one message before the broker dead-letters it. Well above the number of
/// worker crashes a message may live through (every requeue counts on RabbitMQ before 4.3),
/// so only a message that really poisons the worker reaches the dead-letter queue.
pub const DELIVERY_LIMIT: i64 = 20;

/// Deliveries of one message on the dead-letter queue before the broker parks it. A message
/// that reaches this queue already failed [`DELIVERY_LIMIT`] times; its consumer reads one
/// message at a time on a connection of its own, so only the message itself is counted.
pub const DEAD_DELIVERY_LIMIT: i64 = 5;

/// The dead-letter queue of an intake queue.
pub fn dead_letter_queue(intake_queue: &str) -> String {
    format!("{intake_queue}.dead")
}

/// The parking queue of an intake queue: the end of the delivery-limit chain (intake queue →
/// dead-letter queue → parking queue). No consumer reads it; `case-intake parked` inspects,
/// drops or re-publishes what lands there (messages the AMQP client cannot even parse).
pub fn parked_queue(intake_queue: &str) -> String {
    format!("{intake_queue}.parked")
}

/// The delay queue of an intake queue: messages wait there `amqp.retry_delay_ms`, then
/// dead-letter back to the intake queue.
pub fn retry_queue(intake_queue: &str) -> String {
    format!("{intake_queue}.retry")
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Arguments of the intake queue; also used by tests and the definitions file check.
pub fn intake_queue_arguments(intake_queue: &str) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DELIVERY_LIMIT),
    );
    dead_letter_to(&mut args, &dead_letter_queue(intake_queue));
    args
}

/// Arguments of the dead-letter queue: like the intake queue's, its delivery limit bounds the
/// messages its consumer cannot record (the AMQP client cannot parse them, or recording fails
/// every time); they move on to the parking queue, which no one consumes.
pub fn dead_letter_queue_arguments(intake_queue: &str) -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(DEAD_DELIVERY_LIMIT),
    );
    dead_letter_to(&mut args, &parked_queue(intake_queue));
    args
}

/// Dead-letters through the default exchange straight to `queue`, at least once: that
/// strategy needs reject-publish overflow, and keeps a dead-lettered message where it is until
/// `queue` has confirmed it.
fn dead_letter_to(args: &mut FieldTable, queue: &str) {
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(queue));
    args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
    args.insert("x-overflow".into(), text("reject-publish"));
}

/// Arguments of the retry queue: a message TTL, then back to the intake queue.
pub fn retry_queue_arguments(intake_queue: &str, delay_ms: u64) -> FieldTable {
    let mut args = quorum();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay_ms as i64),
    );
    dead_letter_to(&mut args, intake_queue);
    args
}

fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args
}

/// Declares the intake queue, its dead-letter and retry queues and the events exchange.
pub async fn declare(channel: &Channel, amqp: &AmqpSettings) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(parked_queue(&amqp.intake_queue).into(), durable, quorum())
        .await?;
    channel
        .queue_declare(
            dead_letter_queue(&amqp.intake_queue).into(),
            durable,
            dead_letter_queue_arguments(&amqp.intake_queue),
        )
        .await?;
    channel
        .queue_declare(
            amqp.intake_queue.as_str().into(),
            durable,
            intake_queue_arguments(&amqp.intake_queue),
        )
        .await?;
    channel
        .queue_declare(
            retry_queue(&amqp.intake_queue).into(),
            durable,
            retry_queue_arguments(&amqp.intake_queue, amqp.retry_delay_ms),
        )
        .await?;
    declare_events_exchange(channel, amqp).await
}

/// Declares the events exchange (topic, durable; idempotent). Also used by `case-intake
/// publish`, which binds its private queue before the worker may have started.
pub async fn declare_events_exchange(channel: &Channel, amqp: &AmqpSettings) -> lapin::Result<()> {
    channel
        .exchange_declare(
            amqp.events_exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
