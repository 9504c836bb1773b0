//! RabbitMQ for the harness: the local broker, the authorization header, the one way an intake
//! is published with confirms, binding a tap to every event of a run, and removing what a run
//! declared (its intake queue family, taps and events exchange).

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
    Queue,
};

use case_intake::outbox::topology;

/// The local RabbitMQ.
pub const LOCAL_BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Connects to `url`, naming the connection when `name` is given (it shows in the management
/// UI and in `rabbitmqctl list_connections`).
pub async fn connect(url: &str, name: Option<&str>) -> lapin::Result<Connection> {
    let mut props = ConnectionProperties::default();
    if let Some(name) = name {
        props = props.with_connection_name(name.into());
    }
    Connection::connect(url, props).await
}

/// An AMQP long string.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// Headers carrying `Token <token>` as the intake's authorization.
pub fn token_headers(token: &str) -> FieldTable {
    let mut headers = FieldTable::default();
    headers.insert("authorization".into(), text(&format!("Token {token}")));
    headers
}

/// Properties of an intake as upstream systems send it: persistent JSON keyed by `key`, with
/// `key` as correlation id too.
pub fn keyed_intake(key: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_message_id(key.into())
        .with_correlation_id(key.into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// Publishes `body` to `queue` through the default exchange, `mandatory` so that an
/// unroutable intake comes back instead of vanishing; the confirm is the caller's to await.
pub async fn publish_intake(
    channel: &Channel,
    queue: &str,
    body: &[u8],
    props: BasicProperties,
) -> lapin::Result<PublisherConfirm> {
    let options = BasicPublishOptions {
        mandatory: true,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish("".into(), queue.into(), options, body, props)
        .await
}

/// What a publisher confirm says about the intake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// Acked and not returned: in the queue.
    Queued,
    /// Acked, but returned as unroutable first.
    Returned,
    Nacked,
    /// The channel was not in confirm mode: nothing is known.
    NotRequested,
}

/// Reads a publisher confirm.
pub fn classify(confirm: Confirmation) -> Confirmed {
    match confirm {
        Confirmation::Ack(None) => Confirmed::Queued,
        Confirmation::Ack(Some(_)) => Confirmed::Returned,
        Confirmation::Nack(_) => Confirmed::Nacked,
        Confirmation::NotRequested => Confirmed::NotRequested,
    }
}

/// Why a confirm does not mean "in the queue": a nack or a return; `None` when it does.
pub fn confirm_problem(confirm: Confirmation) -> Option<&'static str> {
    match classify(confirm) {
        Confirmed::Queued => None,
        Confirmed::Returned => Some("an intake was unroutable (returned)"),
        Confirmed::Nacked | Confirmed::NotRequested => Some("the broker nacked an intake"),
    }
}

/// A channel of `conn` in confirm mode: every publish on it is confirmed by the broker.
pub async fn confirming_channel(conn: &Connection) -> lapin::Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Declares a queue of this connection only, deleted when it closes (`""`: named by the
/// broker).
pub async fn declare_private_queue(ch: &Channel, name: &str) -> lapin::Result<Queue> {
    let private = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(name.into(), private, FieldTable::default())
        .await
}

/// Binds `queue` to every routing key of `exchange`.
pub async fn bind_all_events(ch: &Channel, queue: &str, exchange: &str) -> lapin::Result<()> {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Messages ready in `queue` (a passive declare: fails when the queue does not exist).
pub async fn ready_in(ch: &Channel, queue: &str) -> lapin::Result<u32> {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let q = ch
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await?;
    Ok(q.message_count())
}

/// Deletes the queues of `intake_queue` (itself, dead-letter, retry, parking), the `taps` and
/// the `exchange`; returns what could not be deleted.
pub async fn delete_run_objects(
    conn: &Connection,
    intake_queue: &str,
    exchange: &str,
    taps: &[&str],
) -> Vec<String> {
    let ch = match conn.create_channel().await {
        Ok(ch) => ch,
        Err(e) => return vec![format!("cannot open a channel to delete the queues: {e}")],
    };
    let mut problems = Vec::new();
    let family = [
        intake_queue.to_owned(),
        topology::dead_letter_queue(intake_queue),
        topology::retry_queue(intake_queue),
        topology::parked_queue(intake_queue),
    ];
    let queues = family
        .iter()
        .map(String::as_str)
        .chain(taps.iter().copied());
    for q in queues {
        if let Err(e) = ch
            .queue_delete(q.into(), QueueDeleteOptions::default())
            .await
        {
            problems.push(format!("deleting queue {q}: {e}"));
        }
    }
    if let Err(e) = ch
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
    {
        problems.push(format!("deleting exchange {exchange}: {e}"));
    }
    let _ = ch.close(200, "OK".into()).await;
    problems
}
