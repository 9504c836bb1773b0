//! Hostile envelopes through the real broker: every AMQP property and header the pipeline
//! reads gets a stable outcome, and intake goes on behind each of them.

use case_intake_harness::support::{Broker, RunningWorker, TestEnv, token_header};
use case_intake_harness::testkit::{broker_and_worker, failed_count, seed_of, to_bytes};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn props(key: &str, correlation: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_correlation_id(correlation.into())
        .with_headers(headers)
        .with_message_id(key.into())
}

/// A header table nested `depth` levels deep.
fn nested(depth: usize) -> AMQPValue {
    let mut deep = text("x");
    for _ in 0..depth {
        let mut t = FieldTable::default();
        t.insert("n".into(), deep);
        deep = AMQPValue::FieldTable(t);
    }
    deep
}

/// A broker client subscribed to the test's events, a running worker, and a valid body.
async fn start(env: &TestEnv) -> (Broker, RunningWorker, Vec<u8>) {
    let (broker, worker) = broker_and_worker(env).await;
    (broker, worker, to_bytes(&seed_of(&env.a)))
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
    let auth_and = |extra: &[(&str, AMQPValue)]| {
        let mut t = auth();
        for (name, value) in extra {
            t.insert((*name).into(), value.clone());
        }
        t
    };
    let big = vec![b' '; 300_000];

    // (message key, correlation id, headers, body), published in this order.
    let sends: [(&str, &str, FieldTable, &[u8]); 9] = [
        // A message key with a NUL: no usable key, never sent to PostgreSQL.
        ("k\u{0}ey", "c-nul-key", auth(), &body),
        // A key with a terminal escape sequence.
        ("k\u{1b}[31m\u{7}", "c-esc-key", auth(), &body),
        // A correlation id with control characters: failed under the key, id dropped.
        ("bad-corr", "c\u{0}x", auth(), &body),
        // A header nested 40 levels deep.
        ("deep", "c-deep", auth_and(&[("x-deep", nested(40))]), &body),
        // Two different credentials on one message.
        (
            "ambiguous",
            "c-ambiguous",
            auth_and(&[("Authorize", text(&format!("Token {}", env.b.token)))]),
            &body,
        ),
        // The same credential under both names is fine.
        (
            "same-twice",
            "c-same",
            auth_and(&[("Authorize", text(&v))]),
            &body,
        ),
        // A retry count set by the publisher means nothing.
        (
            "forged-retries",
            "c-forged",
            auth_and(&[
                ("x-case-intake-retries", AMQPValue::LongLongInt(999)),
                ("x-case-intake-retries-tag", text(&"ab".repeat(32))),
            ]),
            &body,
        ),
        // A body far over the limit: refused by size, stored as a bounded prefix.
        ("big", "c-big", auth(), &big),
        // And a valid intake behind all of them.
        ("after", "c-after", auth(), &body),
    ];
    for (key, correlation, headers, body) in sends {
        broker
            .publish_props(props(key, correlation, headers), body)
            .await;
    }

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
    assert_eq!(failed_count(&env, "invalid_envelope").await, 4);
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

    // Property and header disagree, or a header key holds a control character (refused like
    // the property): no key is chosen, and the header's value is not echoed.
    let refused = [
        (Some("prop-key"), "other-key", "c-conflict"),
        (None, "k\u{1b}[2J", "c-esc"),
    ];
    for (property, header, correlation) in refused {
        broker
            .publish(
                property,
                &[(h, &v), ("message-id", header)],
                Some(correlation),
                &body,
            )
            .await;
        let (rk, p, ev) = broker.next_event().await;
        assert_eq!(rk, "case.failed", "{ev}");
        assert_eq!(
            p.correlation_id().as_ref().map(|c| c.as_str()),
            Some(correlation)
        );
        assert_eq!(ev["subject"], Value::Null);
        assert_eq!(ev["data"]["error"]["code"], "invalid_envelope");
        assert!(!ev.to_string().contains(header), "{ev}");
    }
    worker.stop().await;
    env.cleanup().await;
}
