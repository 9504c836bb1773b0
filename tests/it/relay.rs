//! The outbox relay against the real broker: rows handed over by committed windows leave at
//! once, rows the broker does not take are put back and published later, and two relays on
//! one outbox publish each row exactly once.

use case_intake_harness::wait::{SETTLE, until};
use std::sync::Arc;

use case_intake::app::supervisor;
use case_intake::infra::metrics::Metrics;
use case_intake::intake::window::{self, Outcome};
use case_intake::outbox::relay::{Handoff, Relay};
use case_intake_harness::support::{Broker, TestEnv, amqp_connect, seed_body};
use case_intake_harness::testkit::{message_count, process_seed, seed_envelope};
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A relay running in this test, on its own broker connection.
struct RunningRelay {
    handoff: Arc<Handoff>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    _conn: lapin::Connection,
}

impl RunningRelay {
    async fn start(env: &TestEnv, poll_interval_ms: u64, batch_size: i64) -> Self {
        let conn = amqp_connect().await.expect("broker reachable");
        let mut settings = env.settings.outbox.clone();
        settings.poll_interval_ms = poll_interval_ms;
        settings.batch_size = batch_size;
        let handoff = Arc::new(Handoff::default());
        let relay = Relay::new(
            env.pool.clone(),
            conn.create_channel().await.unwrap(),
            env.settings.amqp.events_exchange.clone(),
            settings,
            Arc::new(Metrics::new()),
            handoff.clone(),
        )
        .await
        .expect("relay starts");
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move { relay.run(&stop).await.expect("relay runs") })
        };
        Self {
            handoff,
            stop,
            task,
            _conn: conn,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("relay task");
    }
}

/// A new environment whose events exchange exists, with no queue bound to it yet.
async fn env_with_events_exchange() -> TestEnv {
    let env = TestEnv::new().await;
    let conn = amqp_connect().await.unwrap();
    case_intake_harness::support::declare_events_exchange(
        &conn.create_channel().await.unwrap(),
        &env,
    )
    .await;
    let _ = conn.close(200, "OK".into()).await;
    env
}

/// Polls `sql` until it returns `want` (the relay works in the background).
async fn wait_for(env: &TestEnv, sql: &'static str, want: i64) {
    until(format!("`{sql}` returning {want}"), SETTLE, || async {
        env.scalar_i64(sql).await == want
    })
    .await;
}

/// Waits until `relays` have emptied the outbox (published rows leave it in the transaction
/// that published them), then stops them.
async fn publish_all_then_stop<const N: usize>(env: &TestEnv, relays: [RunningRelay; N]) {
    wait_for(env, "SELECT count(*) FROM outbox", 0).await;
    for relay in relays {
        relay.stop().await;
    }
}

#[tokio::test]
async fn rows_handed_over_by_a_window_are_published_without_a_sweep() {
    let env = TestEnv::new().await;
    let mut broker = Broker::connect(&env).await;
    // Committed before the relay starts: only its first sweep can publish it. No second
    // sweep comes within the test (an hour apart).
    let before = process_seed(&env, "before", &env.a).await;
    let relay = RunningRelay::start(&env, 3_600_000, 500).await;
    let (_, _, first) = broker.next_event().await;
    assert_eq!(first["id"], before.event_id().to_string());

    // A window that hands its rows over: its event can only leave through the handoff.
    let ctx = window::WindowContext {
        handoff: Some(relay.handoff.clone()),
        ..supervisor::window_context(&env.settings)
    };
    let out = window::run(&env.pool, &ctx, &[seed_envelope(&env, "after", &env.a)])
        .await
        .unwrap();
    assert!(matches!(out[0], Outcome::Created { .. }));
    let (routing_key, props, event) = broker.next_event().await;
    assert_eq!(event["id"], out[0].event_id().to_string());
    assert_eq!(routing_key, env.settings.amqp.created_routing_key);
    assert_eq!(
        props.message_id().as_ref().map(|m| m.to_string()),
        Some(out[0].event_id().to_string())
    );
    publish_all_then_stop(&env, [relay]).await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_unroutable_event_is_put_back_with_a_pause_and_published_once_routable() {
    // The exchange exists but no queue is bound: the broker returns the event (mandatory).
    let env = env_with_events_exchange().await;
    let lonely = process_seed(&env, "lonely", &env.a).await;
    let relay = RunningRelay::start(&env, 100, 500).await;
    wait_for(
        &env,
        "SELECT count(*) FROM outbox WHERE attempts >= 1 AND retry_at > created_at",
        1,
    )
    .await;
    // The row kept its reference to the stored event (no copy was made).
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM outbox WHERE body IS NULL AND outcome_key = 'lonely'")
            .await,
        1
    );
    // Once a queue is bound, a later sweep publishes it, once, with its original id.
    let mut broker = Broker::connect(&env).await;
    let (_, _, event) = broker.next_event().await;
    assert_eq!(event["id"], lonely.event_id().to_string());
    publish_all_then_stop(&env, [relay]).await;
    env.cleanup().await;
}

#[tokio::test]
async fn two_relays_on_one_outbox_publish_each_row_exactly_once() {
    let env = env_with_events_exchange().await;
    // A durable queue of this test's own, bound to every event, counted at the end.
    let conn = amqp_connect().await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    let tap = format!("{}.tap", env.settings.amqp.events_exchange);
    ch.queue_declare(
        tap.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    case_intake_harness::support::bind_to_events(&ch, &tap, &env).await;
    // 1,200 events committed while no relay runs: more than two batches for each relay.
    for chunk in 0..12 {
        let window: Vec<_> = (0..100)
            .map(|i| {
                env.envelope(
                    &format!("k{chunk}-{i}"),
                    Some(&env.a.token),
                    &seed_body(env.a.county_ids[0]),
                )
            })
            .collect();
        env.process(&window).await;
    }
    let (one, two) = tokio::join!(
        RunningRelay::start(&env, 50, 100),
        RunningRelay::start(&env, 50, 100)
    );
    publish_all_then_stop(&env, [one, two]).await;
    // Both stopped: every publication either happened before a commit or not at all.
    assert_eq!(message_count(&ch, &tap).await, 1_200);
    ch.queue_delete(tap.as_str().into(), Default::default())
        .await
        .unwrap();
    let _ = conn.close(200, "OK".into()).await;
    env.cleanup().await;
}
