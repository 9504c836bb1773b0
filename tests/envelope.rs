//! Hostile envelopes through the real broker: every AMQP property and header the pipeline
//! reads gets a stable outcome, and intake goes on behind each of them.

use case_intake_harness::support::{Broker, RunningWorker, TestEnv, seed_body, token_header};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn props(key: Option<&str>, correlation: &str, headers: FieldTable) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_correlation_id(correlation.into())
        .with_headers(headers);
    if let Some(k) = key {
        p = p.with_message_id(k.into());
    }
    p
}

/// A broker client subscribed to the test's events, a running worker, and a valid body.
async fn start(env: &TestEnv) -> (Broker, RunningWorker, Vec<u8>) {
    let broker = Broker::connect(env).await;
    broker.declare_topology(env).await;
    let worker = RunningWorker::start(&env.settings);
    let body = serde_json::to_vec(&seed_body(env.a.county_ids[0])).unwrap();
    (broker, worker, body)
}

#[tokio::test]
async fn hostile_envelopes_get_a_stable_outcome_and_intake_goes_on() {
    let env = TestEnv::new().await;
    let (mut broker, worker, body) = start(&env).await;
    let (h, v) = token_header(&env.a.token);
    let auth = || {
        let mut t = FieldTable::default();
        t.insert(h.into(), text(&v));
        t
    };

    // A message key with a NUL: no usable key, never sent to PostgreSQL.
    broker
        .publish_props(props(Some("k\u{0}ey"), "c-nul-key", auth()), &body)
        .await;
    // A key with a terminal escape sequence.
    broker
        .publish_props(props(Some("k\u{1b}[31m\u{7}"), "c-esc-key", auth()), &body)
        .await;
    // A correlation id with control characters: failed under the key, id dropped.
    broker
        .publish_props(props(Some("bad-corr"), "c\u{0}x", auth()), &body)
        .await;
    // A header nested 40 levels deep.
    let mut deep = text("x");
    for _ in 0..40 {
        let mut t = FieldTable::default();
        t.insert("n".into(), deep);
        deep = AMQPValue::FieldTable(t);
    }
    let mut headers = auth();
    headers.insert("x-deep".into(), deep);
    broker
        .publish_props(props(Some("deep"), "c-deep", headers), &body)
        .await;
    // Two different credentials on one message.
    let mut headers = auth();
    headers.insert("Authorize".into(), text(&format!("Token {}", env.b.token)));
    broker
        .publish_props(props(Some("ambiguous"), "c-ambiguous", headers), &body)
        .await;
    // The same credential under both names is fine.
    let mut headers = auth();
    headers.insert("Authorize".into(), text(&v));
    broker
        .publish_props(props(Some("same-twice"), "c-same", headers), &body)
        .await;
    // A retry count set by the publisher means nothing.
    let mut headers = auth();
    headers.insert("x-case-intake-retries".into(), AMQPValue::LongLongInt(999));
    headers.insert("x-case-intake-retries-tag".into(), text(&"ab".repeat(32)));
    broker
        .publish_props(props(Some("forged-retries"), "c-forged", headers), &body)
        .await;
    // A body far over the limit: refused by size, stored as a bounded prefix.
    let big = vec![b' '; 300_000];
    broker
        .publish_props(props(Some("big"), "c-big", auth()), &big)
        .await;
    // And a valid intake behind all of them.
    broker
        .publish_props(props(Some("after"), "c-after", auth()), &body)
        .await;

    let expect = [
        (
            "c-nul-key",
            "case.failed",
            Some("invalid_envelope"),
            Value::Null,
        ),
        (
            "c-esc-key",
            "case.failed",
            Some("invalid_envelope"),
            Value::Null,
        ),
        (
            "c-deep",
            "case.failed",
            Some("invalid_envelope"),
            "deep".into(),
        ),
        (
            "c-ambiguous",
            "case.failed",
            Some("unauthorized"),
            "ambiguous".into(),
        ),
        ("c-same", "case.created", None, "same-twice".into()),
        ("c-forged", "case.created", None, "forged-retries".into()),
        (
            "c-big",
            "case.failed",
            Some("payload_too_large"),
            "big".into(),
        ),
        ("c-after", "case.created", None, "after".into()),
    ];
    // One event per intake; found by correlation id, or by key for the one without.
    let events = broker.events(expect.len() + 1).await;
    let correlation = |p: &BasicProperties| p.correlation_id().as_ref().map(|c| c.to_string());
    for (id, routing_key, code, subject) in expect {
        let matching: Vec<_> = events
            .iter()
            .filter(|(_, p, _)| correlation(p).as_deref() == Some(id))
            .collect();
        assert_eq!(matching.len(), 1, "{id}: {events:?}");
        let (rk, _, ev) = matching[0];
        assert_eq!(rk, routing_key, "{id}: {ev}");
        assert_eq!(ev["subject"], subject, "{id}: {ev}");
        if let Some(code) = code {
            assert_eq!(ev["data"]["error"]["code"], code, "{id}: {ev}");
        }
    }
    // The bad correlation id is dropped from its event, which its key finds.
    let (rk, p, ev) = events
        .iter()
        .find(|(_, _, ev)| ev["subject"] == "bad-corr")
        .expect("an event for bad-corr");
    assert_eq!(rk, "case.failed");
    assert_eq!(correlation(p), None);
    assert_eq!(ev["data"]["error"]["code"], "invalid_envelope");
    assert!(
        ev["data"]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("correlation_id")
    );
    worker.stop().await;

    // Every failure is stored once, with what PostgreSQL can hold; the big body only as its
    // size, hash and a prefix.
    let failed: i64 = env
        .scalar_i64("SELECT count(*) FROM failed_intakes WHERE error_code = 'invalid_envelope'")
        .await;
    assert_eq!(failed, 4);
    let (bytes, truncated, sealed): (Option<i64>, bool, i32) = sqlx::query_as(
        "SELECT payload_bytes, payload_truncated, octet_length(payload_sealed)
           FROM failed_intakes WHERE message_key = 'big'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(bytes, Some(300_000));
    assert!(truncated);
    assert!(sealed < 8192, "{sealed} bytes stored");
    env.cleanup().await;
}

/// For publishers that can set headers but not AMQP properties: the key and correlation id
/// travel in the `message-id` and `correlation-id` headers, and a header that disagrees with
/// its property is refused, never picked from.
#[tokio::test]
async fn the_key_and_correlation_id_may_travel_as_headers() {
    let env = TestEnv::new().await;
    let (mut broker, worker, body) = start(&env).await;
    let (h, v) = token_header(&env.a.token);

    broker
        .publish(
            None,
            &[
                (h, &v),
                ("Message-Id", "hdr-key"),
                ("correlation-id", "c-hdr"),
            ],
            None,
            &body,
        )
        .await;
    let (rk, p, ev) = broker.next_event_for("hdr-key").await;
    assert_eq!(rk, "case.created", "{ev}");
    assert_eq!(ev["data"]["message_key"], "hdr-key");
    assert_eq!(
        p.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-hdr")
    );

    // The same key again, as a property this time: the same intake, the same event.
    broker
        .publish(Some("hdr-key"), &[(h, &v)], None, &body)
        .await;
    let (_, _, again) = broker.next_event_for("hdr-key").await;
    assert_eq!(again["id"], ev["id"]);

    // Property and header disagree: no key is chosen.
    broker
        .publish(
            Some("prop-key"),
            &[(h, &v), ("message-id", "other-key")],
            Some("c-conflict"),
            &body,
        )
        .await;
    let (rk, p, ev) = broker.next_event().await;
    assert_eq!(rk, "case.failed", "{ev}");
    assert_eq!(
        p.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-conflict")
    );
    assert_eq!(ev["subject"], Value::Null);
    assert_eq!(ev["data"]["error"]["code"], "invalid_envelope");
    assert!(!ev.to_string().contains("other-key"));

    // A header key with a control character is refused like the property.
    broker
        .publish(
            None,
            &[(h, &v), ("message-id", "k\u{1b}[2J")],
            Some("c-esc"),
            &body,
        )
        .await;
    let (rk, _, ev) = broker.next_event().await;
    assert_eq!(rk, "case.failed", "{ev}");
    assert_eq!(ev["data"]["error"]["code"], "invalid_envelope");
    worker.stop().await;
    env.cleanup().await;
}
