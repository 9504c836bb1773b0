//! The whole path over the real broker: publish an intake on RabbitMQ, the worker processes it,
//! the event arrives on the events exchange.

use case_intake_harness::support::{Broker, RunningWorker, TestEnv, seed_body, token_header};
use case_intake_harness::testkit::{broker_and_worker, publish_as, seed_envelope, to_bytes};
use serde_json::json;

#[tokio::test]
async fn intake_message_becomes_a_case_and_a_created_event() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let body = to_bytes(&seed_body(env.a.county_ids[0]));
    publish_as(&broker, &env.a.token, Some("e2e-1"), Some("corr-1"), &body).await;
    let (routing_key, props, event) = broker.next_event().await;
    assert_eq!(routing_key, "case.created");
    assert_eq!(event["type"], "case.created");
    assert_eq!(event["subject"], "e2e-1");
    assert_eq!(event["data"]["ss_number"], "*****3333");
    assert_eq!(
        props.message_id().as_ref().map(|m| m.as_str().to_owned()),
        event["id"].as_str().map(str::to_owned)
    );
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.as_str()),
        Some("corr-1")
    );
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/cloudevents+json")
    );
    assert_eq!(props.delivery_mode(), &Some(2));

    // The seed's `Authorize` header name works too, in any case.
    let body2 = to_bytes(&json!({"first_name": "Ann", "last_name": "Lee"}));
    let value = format!("Token {}", env.a.token);
    broker
        .publish(Some("e2e-2"), &[("AUTHORIZE", &value)], None, &body2)
        .await;
    let (routing_key, props, event) = broker.next_event().await;
    assert_eq!(routing_key, "case.created", "{event}");
    assert_eq!(event["subject"], "e2e-2");
    assert!(props.correlation_id().is_none());

    worker.stop().await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 2);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_input_gets_failed_events_and_duplicates_repeat_the_original() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let (h, v) = token_header(&env.a.token);
    let good = to_bytes(&seed_body(env.a.county_ids[0]));

    broker
        .publish(Some("bad-json"), &[(h, &v)], None, b"not json")
        .await;
    broker.publish(None, &[(h, &v)], None, &good).await;
    broker.publish(Some("no-token"), &[], None, &good).await;
    broker.publish(Some("ok"), &[(h, &v)], None, &good).await;
    broker
        .publish(Some("ok"), &[(h, &v)], Some("again"), &good)
        .await;

    // Two consumers may finish their windows in either order: events are matched by key.
    let events = broker.events(5).await;
    let by_key = |key: Option<&str>| -> Vec<&(String, _, serde_json::Value)> {
        events
            .iter()
            .filter(|e| e.2["subject"].as_str() == key)
            .collect()
    };
    let code_of = |key: Option<&str>| {
        let found = by_key(key);
        assert_eq!(found.len(), 1, "one event for {key:?}");
        assert_eq!(found[0].0, "case.failed");
        found[0].2["data"]["error"]["code"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(code_of(Some("bad-json")).as_deref(), Some("malformed_json"));
    assert_eq!(code_of(None).as_deref(), Some("missing_message_key"));
    assert_eq!(code_of(Some("no-token")).as_deref(), Some("unauthorized"));
    let ok = by_key(Some("ok"));
    assert_eq!(ok.len(), 2);
    assert!(ok.iter().all(|e| e.0 == "case.created"));
    // The re-published key yields its original event: same id, same body; the answer to the
    // second copy carries that copy's correlation id.
    assert_eq!(ok[0].2, ok[1].2);
    let correlations: Vec<Option<&str>> = ok
        .iter()
        .map(|e| e.1.correlation_id().as_ref().map(|c| c.as_str()))
        .collect();
    assert!(correlations.contains(&Some("again")), "{correlations:?}");

    worker.stop().await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn events_committed_before_a_crash_are_published_after_restart() {
    let env = TestEnv::new().await;
    let mut broker = Broker::connect(&env).await;
    // Commit two intakes without any relay running: as if the worker died right after commit.
    let out = env
        .process(&[
            seed_envelope(&env, "c1", &env.a),
            env.envelope("c2", Some(&env.a.token), &json!({"last_name": "x"})),
        ])
        .await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 2);
    let worker = RunningWorker::start(&env.settings);
    let events = broker.events(2).await;
    let mut ids: Vec<String> = events
        .iter()
        .map(|e| e.2["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = out.iter().map(|o| o.event_id().to_string()).collect();
    expected.sort();
    assert_eq!(ids, expected);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_stops_consuming_and_leaves_the_rest_queued() {
    let env = TestEnv::new().await;
    let mut broker = Broker::connect(&env).await;
    broker.declare_topology(&env).await;
    let good = to_bytes(&seed_body(env.a.county_ids[0]));
    for i in 0..50 {
        publish_as(&broker, &env.a.token, Some(&format!("s{i}")), None, &good).await;
    }
    let worker = RunningWorker::start(&env.settings);
    // Wait for the first event, then stop while the rest may still be in flight.
    broker.next_event().await;
    worker.stop().await;
    let done = env
        .scalar_i64("SELECT count(*) FROM intake_outcomes WHERE outcome IS NOT NULL")
        .await;
    let unpublished = env.scalar_i64("SELECT count(*) FROM outbox").await;
    assert_eq!(unpublished, 0, "the relay drains before exit");
    // Whatever was not processed is still on the queue; a new worker finishes it exactly once.
    let worker = RunningWorker::start(&env.settings);
    let mut seen = 1;
    while seen < 50 {
        broker.next_event().await;
        seen += 1;
    }
    worker.stop().await;
    assert!(done >= 1);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 50);
    // A graceful stop acks what it committed: one outcome and one event per intake, all sent.
    assert_eq!(
        env.scalar_i64("SELECT count(DISTINCT event_id) FROM intake_outcomes")
            .await,
        50
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 0);
    env.cleanup().await;
}
