//! `case-intake publish` (admin::publish) through the real broker and a running worker: the
//! outcome event is caught because the private queue is bound before the intake is sent.

use std::time::Duration;

use case_intake::admin::publish::{Intake, PublishError, publish};
use case_intake_harness::support::{Broker, RunningWorker, TestEnv, seed_body};
use secrecy::SecretString;

fn intake(env: &TestEnv, key: &str, body: &serde_json::Value) -> Intake {
    Intake {
        key: key.to_owned(),
        token: SecretString::from(env.a.token.clone()),
        correlation_id: Some(format!("c-{key}")),
        body: serde_json::to_vec(body).unwrap(),
    }
}

#[tokio::test]
async fn publish_waits_for_the_outcome_of_its_key() {
    let env = TestEnv::new().await;
    let mut broker = Broker::connect(&env).await;
    broker.declare_topology(&env).await;
    let worker = RunningWorker::start(&env.settings);
    let wait = Some(Duration::from_secs(60));

    let body = seed_body(env.a.county_ids[0]);
    let created = publish(&env.settings.amqp, &intake(&env, "pub-1", &body), wait)
        .await
        .unwrap()
        .expect("an outcome");
    assert!(created.created(), "{}", created.event);
    assert_eq!(created.routing_key, "case.created");
    assert_eq!(created.event["subject"], "pub-1");
    assert_eq!(created.event["data"]["ss_number"], "*****3333");

    let mut bad = body.clone();
    bad["mailing_zip_code"] = "1".into();
    let failed = publish(&env.settings.amqp, &intake(&env, "pub-2", &bad), wait)
        .await
        .unwrap()
        .expect("an outcome");
    assert!(!failed.created());
    assert_eq!(failed.routing_key, "case.failed");
    assert_eq!(failed.event["data"]["error"]["code"], "validation_failed");

    // Without --wait the intake is only confirmed; the worker still processes it (the test's
    // own subscriber sees its event).
    assert!(
        publish(&env.settings.amqp, &intake(&env, "pub-3", &body), None)
            .await
            .unwrap()
            .is_none()
    );
    let (routing_key, _, _) = broker.next_event_for("pub-3").await;
    assert_eq!(routing_key, "case.created");
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn publish_reports_a_missing_intake_queue_and_a_bad_key() {
    let env = TestEnv::new().await;
    let mut amqp = env.settings.amqp.clone();
    amqp.intake_queue = format!("{}.absent", amqp.intake_queue);
    let body = seed_body(env.a.county_ids[0]);
    let e = publish(&amqp, &intake(&env, "k", &body), None)
        .await
        .unwrap_err();
    assert!(matches!(e, PublishError::NoIntakeQueue(_)), "{e}");
    assert!(!e.to_string().contains(&env.a.token));
    for key in ["", "k\u{1b}[2J"] {
        let e = publish(&env.settings.amqp, &intake(&env, key, &body), None)
            .await
            .unwrap_err();
        assert!(matches!(e, PublishError::InvalidKey), "{e}");
    }
    env.cleanup().await;
}

/// Issue 21, item 4: under the `link` policy the outcome of a second intake of the same person
/// is `case.matched`; `--wait` binds that routing key too and returns it as an outcome with a
/// case (exit status 0), instead of timing out.
#[tokio::test]
async fn publish_waits_for_a_linked_outcome() {
    let env = TestEnv::new().await;
    let broker = Broker::connect(&env).await;
    broker.declare_topology(&env).await;
    sqlx::query("UPDATE networks SET duplicate_policy = 'link' WHERE id = $1")
        .bind(env.a.network_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let worker = RunningWorker::start(&env.settings);
    let wait = Some(Duration::from_secs(60));

    let body = seed_body(env.a.county_ids[0]);
    let first = publish(&env.settings.amqp, &intake(&env, "link-1", &body), wait)
        .await
        .unwrap()
        .expect("an outcome");
    assert_eq!(first.routing_key, "case.created", "{}", first.event);
    let case_id = first.event["data"]["id"].clone();

    let linked = publish(&env.settings.amqp, &intake(&env, "link-2", &body), wait)
        .await
        .expect("an outcome within the wait, not a timeout")
        .expect("an outcome");
    assert_eq!(linked.routing_key, "case.matched", "{}", linked.event);
    assert_eq!(linked.event["type"], "case.matched");
    assert_eq!(linked.event["subject"], "link-2");
    assert_eq!(linked.event["data"]["case_id"], case_id);
    assert!(linked.has_case() && !linked.created());
    worker.stop().await;
    env.cleanup().await;
}
