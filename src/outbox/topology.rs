//! Broker topology: the intake quorum queue with its delivery limit, dead-letter and parking
//! queues, the retry queue, and the events topic exchange. Declarations are idempotent;
//! operators who import definitions instead turn them off with `amqp.declare_topology = false`.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, ExchangeKind};

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
pub fn intake_queue_arguments(intake_queue: &str, group_size: u16) -> FieldTable {
    let mut args = quorum(group_size);
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
pub fn dead_letter_queue_arguments(intake_queue: &str, group_size: u16) -> FieldTable {
    let mut args = quorum(group_size);
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
pub fn retry_queue_arguments(intake_queue: &str, delay_ms: u64, group_size: u16) -> FieldTable {
    let mut args = quorum(group_size);
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay_ms as i64),
    );
    dead_letter_to(&mut args, intake_queue);
    args
}

const GROUP_SIZE: &str = "x-quorum-initial-group-size";

/// A quorum queue with `group_size` replicas when it is declared
/// (`amqp.quorum_initial_group_size`; RabbitMQ caps it at the cluster's size). It only
/// shapes the first declaration: nodes added later get replicas from `rabbitmq-queues grow`.
pub fn quorum(group_size: u16) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), text("quorum"));
    args.insert(
        GROUP_SIZE.into(),
        AMQPValue::LongLongInt(i64::from(group_size)),
    );
    args
}

/// Declares the intake queue, its dead-letter, parked and retry queues and the events exchange,
/// each on a channel of its own.
///
/// RabbitMQ checks `x-quorum-initial-group-size` like any other argument of an existing queue,
/// so a queue an earlier version declared without it would refuse the declaration
/// (PRECONDITION_FAILED) and stop the worker from starting after an upgrade. Such a queue is
/// declared again without the group size: it keeps the replicas it has, and an operator grows
/// it with `rabbitmq-queues grow` (docs/operations.md).
pub async fn declare(conn: &Connection, amqp: &AmqpSettings) -> lapin::Result<()> {
    let q = &amqp.intake_queue;
    let group = amqp.quorum_initial_group_size;
    for (name, args) in [
        (parked_queue(q), quorum(group)),
        (dead_letter_queue(q), dead_letter_queue_arguments(q, group)),
        (q.clone(), intake_queue_arguments(q, group)),
        (
            retry_queue(q),
            retry_queue_arguments(q, amqp.retry_delay_ms, group),
        ),
    ] {
        declare_queue(conn, &name, args).await?;
    }
    let ch = conn.create_channel().await?;
    let declared = declare_events_exchange(&ch, amqp).await;
    let _ = ch.close(200, "OK".into()).await;
    declared
}

async fn declare_queue(conn: &Connection, name: &str, args: FieldTable) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let ch = conn.create_channel().await?;
    match ch.queue_declare(name.into(), durable, args.clone()).await {
        Ok(_) => {
            let _ = ch.close(200, "OK".into()).await;
            Ok(())
        }
        Err(e)
            if e.to_string().contains(GROUP_SIZE) && e.to_string().contains("current is none") =>
        {
            tracing::warn!(
                queue = name,
                "the queue was declared without x-quorum-initial-group-size (an earlier \
                 version); it keeps its replicas: grow it with rabbitmq-queues grow"
            );
            let mut without = FieldTable::default();
            for (k, v) in args.inner() {
                if k.as_str() != GROUP_SIZE {
                    without.insert(k.clone(), v.clone());
                }
            }
            let ch = conn.create_channel().await?;
            let declared = ch
                .queue_declare(name.into(), durable, without)
                .await
                .map(|_| ());
            let _ = ch.close(200, "OK".into()).await;
            declared
        }
        Err(e) => Err(e),
    }
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
