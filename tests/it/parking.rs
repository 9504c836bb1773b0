//! The delivery-limit chain through the real broker: a message the AMQP client cannot parse
//! (invalid UTF-8 in a short-string property or a header name) ends the worker's broker
//! session on every delivery; the intake queue's and the dead-letter queue's delivery limits
//! move it to the parking queue, and every other message keeps flowing.

use case_intake_harness::wait::{SETTLE, eventually};
use std::time::Duration;

use case_intake::admin::parked::{Client, FieldValue, Headers, Properties, Table};
use case_intake::outbox::topology::{dead_letter_queue, parked_queue};
use case_intake_harness::support::{TestEnv, token_header};
use case_intake_harness::testkit::{broker_and_worker, seed_of, to_bytes};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

async fn client() -> Client {
    Client::connect(URL, Duration::from_secs(10))
        .await
        .expect("broker reachable")
}

/// Messages in `queue`, once it holds at least `n` (parking takes 25 deliveries).
async fn wait_for_count(queue: &str, n: u32) -> u32 {
    let c = tokio::sync::Mutex::new(client().await);
    let seen = eventually(format!("{n} messages in {queue}"), SETTLE, || async {
        let seen = c.lock().await.message_count(queue).await.unwrap();
        (seen >= n).then_some(seen)
    })
    .await;
    c.into_inner().close().await;
    seen
}

#[tokio::test]
async fn unparseable_deliveries_are_parked_and_intake_goes_on() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let (h, v) = token_header(&env.a.token);
    let body = to_bytes(&seed_of(&env.a));

    // Two messages lapin cannot parse, between valid intakes.
    broker
        .publish(Some("before"), &[(h, &v)], None, &body)
        .await;
    let auth = (
        h.as_bytes().to_vec(),
        FieldValue::LongStr(v.as_bytes().to_vec()),
    );
    let bad_key = Properties {
        message_id: Some(vec![0xff, 0xfe, 0x41]),
        headers: Some(Headers::Parsed(Table(vec![auth.clone()]))),
        ..Properties::default()
    };
    let bad_header_name = Properties {
        message_id: Some(b"bad-header-name".to_vec()),
        headers: Some(Headers::Parsed(Table(vec![
            auth,
            (vec![b'x', 0xc3, 0x28], FieldValue::LongStr(b"v".to_vec())),
        ]))),
        ..Properties::default()
    };
    let mut raw = client().await;
    raw.confirm_select().await.unwrap();
    let intake = env.settings.amqp.intake_queue.clone();
    for props in [&bad_key, &bad_header_name] {
        raw.publish("", &intake, true, props, &body).await.unwrap();
    }
    raw.close().await;
    broker.publish(Some("after"), &[(h, &v)], None, &body).await;

    // The valid intakes are created, the hostile ones end parked, nothing is left behind.
    let mut created = Vec::new();
    for _ in 0..2 {
        let (rk, _, ev) = broker.next_event().await;
        assert_eq!(rk, "case.created", "{ev}");
        created.push(ev["subject"].as_str().unwrap().to_owned());
    }
    created.sort();
    assert_eq!(created, ["after", "before"]);
    let parked = parked_queue(&intake);
    assert_eq!(wait_for_count(&parked, 2).await, 2);
    let mut c = client().await;
    assert_eq!(c.message_count(&intake).await.unwrap(), 0);
    assert_eq!(
        c.message_count(&dead_letter_queue(&intake)).await.unwrap(),
        0
    );
    c.close().await;

    // The worker is still consuming: one more intake goes through.
    broker.publish(Some("later"), &[(h, &v)], None, &body).await;
    let (rk, _, ev) = broker.next_event_for("later").await;
    assert_eq!(rk, "case.created", "{ev}");
    assert!(!worker.handle.is_finished());
    worker.stop().await;
    env.cleanup().await;
}
