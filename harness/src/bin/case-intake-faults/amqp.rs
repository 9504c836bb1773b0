//! The suite's own broker clients: connecting (to the cluster with --cluster), its durable capture
//! queue of events, and the collector that keeps consuming it across broker faults.

use futures_util::StreamExt;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::Duration;
use std::time::Instant;

use case_intake::infra::settings::Settings;
use case_intake::outbox::topology;
use case_intake_harness::broker;
use case_intake_harness::broker::LOCAL_BROKER;
use case_intake_harness::cluster;
use case_intake_harness::cluster::Cluster;
use case_intake_harness::ledger::EventLog;
use case_intake_harness::ledger::lock;
use lapin::Connection;
use lapin::options::BasicAckOptions;
use lapin::options::BasicConsumeOptions;
use lapin::options::BasicQosOptions;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;

use crate::Res;
use crate::setup::Setup;

/// `--cluster`: the cluster every broker client of the suite and the workers use.
pub static CLUSTER: OnceLock<Cluster> = OnceLock::new();

pub async fn amqp_connect(name: &str) -> Res<Connection> {
    if let Some(c) = CLUSTER.get() {
        let urls: Vec<String> = c
            .urls()
            .iter()
            .map(|u| format!("{u}?heartbeat=10"))
            .collect();
        return Ok(cluster::connect_any(&urls, name).await?.0);
    }
    // A short heartbeat: a broker that went away is noticed within seconds.
    let url = format!("{LOCAL_BROKER}?heartbeat=10");
    let conn = tokio::time::timeout(Duration::from_secs(10), broker::connect(&url, Some(name)))
        .await
        .map_err(|_| "connecting to RabbitMQ timed out")??;
    Ok(conn)
}

/// Messages ready in `queue` (on a short-lived connection).
pub async fn queue_ready(queue: &str) -> Res<u32> {
    let conn = amqp_connect("case-intake-faults probe").await?;
    let ch = conn.create_channel().await?;
    let ready = broker::ready_in(&ch, queue).await;
    let _ = conn.close(200, "OK".into()).await;
    Ok(ready?)
}

/// Consumes the suite's events queue until `stop`, reconnecting after every broker fault.
pub async fn collect_events(queue: String, seen: Arc<Mutex<EventLog>>, stop: CancellationToken) {
    let mut delay = Duration::from_millis(200);
    while !stop.is_cancelled() {
        match consume_events(&queue, &seen, &stop).await {
            Ok(()) => return,
            Err(_) => {
                lock(&seen).reconnects += 1;
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

pub async fn consume_events(
    queue: &str,
    seen: &Mutex<EventLog>,
    stop: &CancellationToken,
) -> Res<()> {
    let conn = amqp_connect("case-intake-faults events").await?;
    let ch = conn.create_channel().await?;
    ch.basic_qos(500, BasicQosOptions::default()).await?;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "case-intake-faults".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => {
                let _ = conn.close(200, "OK".into()).await;
                return Ok(());
            }
            next = consumer.next() => next,
        };
        let delivery = match next {
            Some(d) => d?,
            None => return Err("the broker ended the events consumer".into()),
        };
        lock(seen).record(&delivery.data, Instant::now());
        if !delivery.ack(BasicAckOptions::default()).await? {
            return Err("events ack refused".into());
        }
    }
}

/// Declares the topology as the workers do, and the suite's durable capture queue bound to
/// every event (it keeps the events through broker restarts).
pub async fn declare_broker(settings: &Settings, capture_queue: &str) -> Res<()> {
    let conn = amqp_connect("case-intake-faults setup").await?;
    topology::declare(&conn, &settings.amqp).await?;
    let ch = conn.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), broker::text("quorum"));
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(capture_queue.into(), durable, args)
        .await?;
    broker::bind_all_events(&ch, capture_queue, &settings.amqp.events_exchange).await?;
    let _ = conn.close(200, "OK".into()).await;
    Ok(())
}

pub async fn teardown_broker(s: &Setup) {
    let Ok(conn) = amqp_connect("case-intake-faults cleanup").await else {
        say!("cleanup: RabbitMQ unreachable; queues of this run are left");
        return;
    };
    let taps = [s.capture_queue.as_str()];
    broker::delete_run_objects(&conn, &s.intake_queue, &s.events_exchange, &taps).await;
    let _ = conn.close(200, "OK".into()).await;
}
