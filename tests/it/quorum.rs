//! Quorum queues sized for the cluster, on the local single node: a group of three (capped by
//! RabbitMQ at the cluster's size, one replica here) declares, and a topology an earlier
//! version declared without `x-quorum-initial-group-size` is declared over instead of
//! refusing the worker's start with PRECONDITION_FAILED.

use case_intake::infra::settings::Settings;
use case_intake::outbox::topology;
use case_intake_harness::broker::{LOCAL_BROKER, connect, delete_run_objects};
use lapin::Connection;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;

/// The settings of a topology of this test's own names.
fn settings(tag: &str) -> Settings {
    let mut s = Settings::load(None).unwrap();
    s.amqp.intake_queue = format!("quorum-test-{tag}-{}", std::process::id());
    s.amqp.events_exchange = format!("quorum-test-{tag}-events-{}", std::process::id());
    s
}

/// Declares `intake`'s queues the way versions without the group size did: today's
/// arguments less `x-quorum-initial-group-size`.
async fn declare_as_earlier_versions_did(conn: &Connection, s: &Settings) {
    let ch = conn.create_channel().await.unwrap();
    let intake = s.amqp.intake_queue.as_str();
    for (name, args) in [
        (topology::parked_queue(intake), topology::quorum(3)),
        (
            topology::dead_letter_queue(intake),
            topology::dead_letter_queue_arguments(intake, 3),
        ),
        (
            intake.to_owned(),
            topology::intake_queue_arguments(intake, 3),
        ),
        (
            topology::retry_queue(intake),
            topology::retry_queue_arguments(intake, s.amqp.retry_delay_ms, 3),
        ),
    ] {
        let mut earlier = FieldTable::default();
        for (k, v) in args.inner() {
            if k.as_str() != "x-quorum-initial-group-size" {
                earlier.insert(k.clone(), v.clone());
            }
        }
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        ch.queue_declare(name.as_str().into(), durable, earlier)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_group_of_three_declares_on_one_node_and_over_queues_of_earlier_versions() {
    let conn = connect(LOCAL_BROKER, Some("quorum test")).await.unwrap();
    let fresh = settings("fresh");
    let earlier = settings("earlier");
    let declared_fresh = topology::declare(&conn, &fresh.amqp).await;
    declare_as_earlier_versions_did(&conn, &earlier).await;
    let declared_over = topology::declare(&conn, &earlier.amqp).await;
    let again = topology::declare(&conn, &fresh.amqp).await;
    let mut left = Vec::new();
    for s in [&fresh, &earlier] {
        left.extend(
            delete_run_objects(&conn, &s.amqp.intake_queue, &s.amqp.events_exchange, &[]).await,
        );
    }
    let _ = conn.close(200, "OK".into()).await;
    declared_fresh.expect("a group of three on a single node");
    declared_over.expect("declared over queues without a group size");
    again.expect("declaring is idempotent");
    assert!(left.is_empty(), "{left:?}");
}
