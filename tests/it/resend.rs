//! Fix and resend: a key whose recorded outcome is a failure its sender can correct may be
//! re-published with another body, which is processed as the key's next attempt and supersedes
//! the failure. The same body answers the recorded outcome again; a created case keeps its key
//! bound to its body; failures that say nothing about the body are not superseded by a resend;
//! two bodies racing for one failed key end with exactly one outcome.

use case_intake::domain::error::{ErrorCode, IntakeError};
use case_intake::intake::window::Outcome;
use case_intake::store::crypto::Vault;
use case_intake_harness::support::{TestEnv, seed_body, token_header};
use case_intake_harness::testkit::{broker_and_worker, created, failed, to_bytes, with};
use serde_json::{Value, json};

/// A county id no network has: the intake fails `validation_failed` on `street_county`.
const NO_COUNTY: i64 = 990_077;

/// The open and resolved failed intakes of `key`: (attempts, resolution, resolved event id).
async fn failures_of(env: &TestEnv, key: &str) -> Vec<(i32, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT attempts, resolution, resolved_event_id::text FROM failed_intakes
          WHERE message_key = $1 ORDER BY id",
    )
    .bind(key)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

fn code_of(event: &Value) -> &str {
    event["data"]["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_corrected_body_under_a_failed_key_creates_the_case_and_resolves_the_failure() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let (h, v) = token_header(&env.a.token);
    let good = seed_body(env.a.county_ids[0]);
    let bad = with(good.clone(), "street_county", json!(NO_COUNTY));

    broker
        .publish(Some("r1"), &[(h, &v)], None, &to_bytes(&bad))
        .await;
    let (rk, _, failure) = broker.next_event_for("r1").await;
    assert_eq!(
        (rk.as_str(), code_of(&failure)),
        ("case.failed", "validation_failed")
    );

    // The same failed body again: the recorded outcome, same event.
    broker
        .publish(Some("r1"), &[(h, &v)], None, &to_bytes(&bad))
        .await;
    let (_, _, again) = broker.next_event_for("r1").await;
    assert_eq!(again, failure);

    // The corrected body: attempt 2, superseding the failure, announced as resolved.
    broker
        .publish(Some("r1"), &[(h, &v)], Some("fix-1"), &to_bytes(&good))
        .await;
    let mut events = vec![
        broker.next_event_for("r1").await,
        broker.next_event_for("r1").await,
    ];
    events.sort_by(|a, b| a.0.cmp(&b.0));
    let [(rk_c, _, created_ev), (rk_r, props_r, resolved_ev)] =
        <[_; 2]>::try_from(events).unwrap_or_else(|e| panic!("two events, got {}", e.len()));
    assert_eq!(rk_c, "case.created");
    assert_eq!(rk_r, "case.intake_resolved");
    let replay = &created_ev["data"]["replay"];
    assert_eq!(replay["attempt"], 2);
    assert_eq!(replay["how"], "resent");
    assert_eq!(replay["supersedes_event_id"], failure["id"]);
    let data = &resolved_ev["data"];
    assert_eq!(data["resolution"], "resent");
    assert_eq!(data["failed_event_id"], failure["id"]);
    assert_eq!(data["event_id"], created_ev["id"]);
    assert_eq!(data["case_id"], created_ev["data"]["id"]);
    assert_eq!(data["household_id"], created_ev["data"]["household_id"]);
    assert_eq!(data["attempt"], 2);
    assert_eq!(resolved_ev["subject"], "r1");
    assert_eq!(
        props_r.correlation_id().as_ref().map(|c| c.as_str()),
        Some("fix-1")
    );

    // Now the key is bound to the body that created its case.
    broker
        .publish(Some("r1"), &[(h, &v)], None, &to_bytes(&good))
        .await;
    let (_, _, dup) = broker.next_event_for("r1").await;
    assert_eq!(dup, created_ev);
    broker
        .publish(Some("r1"), &[(h, &v)], None, &to_bytes(&bad))
        .await;
    let (rk, _, reused) = broker.next_event_for("r1").await;
    assert_eq!(
        (rk.as_str(), code_of(&reused)),
        ("case.failed", "idempotency_key_reused")
    );

    worker.stop().await;
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 1);
    let rows = failures_of(&env, "r1").await;
    let created_id = created_ev["id"].as_str().map(str::to_owned);
    assert_eq!(
        rows,
        vec![
            (1, Some("resent".into()), created_id),
            // The reused-key failure is a failure of that publication, open for an operator.
            (1, None, None),
        ]
    );
    let outcome: (String, String) = sqlx::query_as(
        "SELECT outcome, event_id::text FROM intake_outcomes WHERE message_key = 'r1'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (outcome.0.as_str(), Some(outcome.1.as_str())),
        ("created", created_ev["id"].as_str())
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_resend_that_fails_again_supersedes_the_failure_without_announcing_it() {
    let env = TestEnv::new().await;
    let t = Some(env.a.token.as_str());
    let good = seed_body(env.a.county_ids[0]);
    let no_county = with(good.clone(), "street_county", json!(NO_COUNTY));
    let bad_email = with(good.clone(), "email", json!("not an e-mail"));

    let first = env.process(&[env.envelope("r2", t, &no_county)]).await;
    assert_eq!(failed(&first[0]), ErrorCode::ValidationFailed);
    let second = env.process(&[env.envelope("r2", t, &bad_email)]).await;
    assert_eq!(failed(&second[0]), ErrorCode::ValidationFailed);
    assert_ne!(first[0].event_id(), second[0].event_id());
    let third = env.process(&[env.envelope("r2", t, &good)]).await;
    created(&third[0]);

    let ids = |o: &[Outcome]| Some(o[0].event_id().to_string());
    assert_eq!(
        failures_of(&env, "r2").await,
        vec![
            (1, Some("resent".into()), ids(&second)),
            (2, Some("resent".into()), ids(&third)),
        ]
    );
    // `failed show` tells the history: how each attempt ended and what superseded it.
    let vault = Vault::from_settings(&env.settings.crypto).unwrap();
    let shown = case_intake::admin::failed::show(&env.pool, &vault, "r2", None)
        .await
        .unwrap();
    let history: Vec<_> = shown
        .iter()
        .map(|s| (s.intake.resolution.as_deref(), s.intake.resolved_event_id))
        .collect();
    assert_eq!(
        history,
        vec![
            (Some("resent"), Some(second[0].event_id())),
            (Some("resent"), Some(third[0].event_id())),
        ]
    );
    // Attempt 2 failed: its own case.failed event tells; only the case is announced.
    let queued: Vec<(String, Option<i32>, Option<String>)> = sqlx::query_as(
        "SELECT body->>'type', (body->'data'->'replay'->>'attempt')::int,
                body->'data'->'replay'->>'supersedes_event_id'
           FROM outbox_events ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        queued,
        vec![
            ("case.failed".into(), None, None),
            ("case.failed".into(), Some(2), ids(&first)),
            ("case.created".into(), Some(3), ids(&second)),
            ("case.intake_resolved".into(), None, None),
        ]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn failures_that_say_nothing_about_the_body_keep_the_key() {
    let env = TestEnv::new().await;
    let t = Some(env.a.token.as_str());
    let good = seed_body(env.a.county_ids[0]);
    let mut exhausted = env.envelope("r3", t, &good);
    exhausted.fail_with(IntakeError::new(
        ErrorCode::RetriesExhausted,
        "database unavailable",
    ));
    let out = env.process(&[exhausted]).await;
    assert_eq!(failed(&out[0]), ErrorCode::RetriesExhausted);
    // Another body is not a correction of this failure: an operator replays it.
    let other = with(good.clone(), "first_name", json!("Other"));
    let out = env.process(&[env.envelope("r3", t, &other)]).await;
    assert_eq!(failed(&out[0]), ErrorCode::IdempotencyKeyReused);
    // The same body answers the recorded failure.
    let out = env.process(&[env.envelope("r3", t, &good)]).await;
    assert!(matches!(out[0], Outcome::Duplicate { .. }), "{out:?}");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn an_unauthenticated_failure_is_not_tied_to_the_network_that_resends() {
    let env = TestEnv::new().await;
    let good = seed_body(env.a.county_ids[0]);
    let out = env.process(&[env.envelope("r4", None, &good)]).await;
    assert_eq!(failed(&out[0]), ErrorCode::Unauthorized);
    // With a valid token the key is one of the caller's network: a new intake there.
    let out = env
        .process(&[env.envelope("r4", Some(&env.a.token), &good)])
        .await;
    let created_event = out[0].event_id();
    created(&out[0]);
    let resolved_in_a: i64 = env
        .scalar_i64(
            "SELECT count(*) FROM failed_intakes WHERE message_key = 'r4' AND resolved_at IS NOT NULL",
        )
        .await;
    assert_eq!(
        resolved_in_a, 0,
        "the unauthenticated failure stays for an operator"
    );
    assert_ne!(created_event, uuid::Uuid::nil());
    env.cleanup().await;
}

/// Two corrected bodies for one failed key in two windows at once: exactly one supersedes the
/// failure and creates the case; the other finds the key bound and fails
/// `idempotency_key_reused`. Repeated over many keys to meet the race often.
#[tokio::test]
async fn two_corrections_racing_for_one_failed_key_end_with_one_outcome() {
    let env = TestEnv::new().await;
    let t = Some(env.a.token.as_str());
    let good = seed_body(env.a.county_ids[0]);
    let bad = with(good.clone(), "street_county", json!(NO_COUNTY));
    let keys: Vec<String> = (0..40).map(|i| format!("race-{i}")).collect();
    let failures: Vec<_> = keys.iter().map(|k| env.envelope(k, t, &bad)).collect();
    for o in env.process(&failures).await {
        assert_eq!(failed(&o), ErrorCode::ValidationFailed);
    }
    let one: Vec<_> = keys
        .iter()
        .map(|k| env.envelope(k, t, &with(good.clone(), "first_name", json!("One"))))
        .collect();
    let two: Vec<_> = keys
        .iter()
        .map(|k| env.envelope(k, t, &with(good.clone(), "first_name", json!("Two"))))
        .collect();
    let (a, b) = tokio::join!(env.process(&one), env.process(&two));
    for (i, (a, b)) in a.iter().zip(&b).enumerate() {
        let winners = [a, b]
            .iter()
            .filter(|o| matches!(o, Outcome::Created { .. }))
            .count();
        let losers = [a, b]
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Outcome::Failed {
                        code: ErrorCode::IdempotencyKeyReused,
                        ..
                    }
                )
            })
            .count();
        assert_eq!((winners, losers), (1, 1), "key {i}: {a:?} {b:?}");
    }
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 40);
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM intake_outcomes WHERE message_key LIKE 'race-%' AND outcome = 'created'"
        )
        .await,
        40
    );
    // Each original failure was resolved exactly once, by the winner.
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM failed_intakes f JOIN intake_outcomes o
                ON o.message_key = f.message_key AND o.event_id = f.resolved_event_id
              WHERE f.resolution = 'resent'"
        )
        .await,
        40
    );
    env.assert_household_invariant().await;
    env.cleanup().await;
}
