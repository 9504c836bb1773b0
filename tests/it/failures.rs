//! Failure handling against the real services: replay of failed intakes, the delayed retry
//! queue, `retries_exhausted`, the dead-letter consumer, retention, configuration errors.

use case_intake::admin::failed::{self, Filter};
use case_intake::domain::error::ErrorCode;
use case_intake::intake::window::Outcome;
use case_intake_harness::support::{TestEnv, seed_body, token_header};
use case_intake_harness::testkit::{
    broker_and_worker, created, failed as failed_code, failed_count, failed_with_code,
    failed_with_key, joining, list_failed, message_count, process_as, process_seed, publish_as,
    replay, seed_envelope, seed_of, to_bytes,
};
use case_intake_harness::wait::{SETTLE, until};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use sqlx::Connection;

#[tokio::test]
async fn replay_succeeds_once_the_missing_county_exists() {
    let env = TestEnv::new().await;
    let body = seed_body(424_242);
    let out = process_as(&env, "needs-county", &env.a, &body).await;
    assert_eq!(failed_code(&out), ErrorCode::ValidationFailed);

    let listed = list_failed(&env, &failed_with_code("validation_failed")).await;
    assert_eq!(
        (listed.rows.len(), listed.total, listed.next_after),
        (1, 1, None)
    );
    assert_eq!(listed.rows[0].message_key.as_deref(), Some("needs-county"));
    let vault = case_intake::store::crypto::Vault::from_settings(&env.settings.crypto).unwrap();
    let shown = failed::show(&env.pool, &vault, "needs-county", Some(env.a.network_id))
        .await
        .unwrap();
    assert_eq!(shown[0].payload["ss_number"], "*****3333");
    // The failed event is stored once, beside its key; the outbox row refers to it.
    assert_eq!(
        env.scalar_i64(
            "SELECT count(*) FROM outbox WHERE body IS NULL AND outcome_key = 'needs-county'"
        )
        .await,
        1
    );

    // Replaying before the fix fails again, as attempt 2.
    let all = Filter {
        limit: 0,
        ..Filter::default()
    };
    let r = replay(&env, &all).await;
    assert_eq!((r.selected, r.failed), (1, 1));

    sqlx::query("INSERT INTO counties (id, network_id, name) VALUES (424242, $1, 'Late County')")
        .bind(env.a.network_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let mut progress_calls = 0;
    let ctx = case_intake::app::supervisor::window_context(&env.settings);
    let r = failed::replay(&env.pool, &ctx, &all, 50, |_| progress_calls += 1)
        .await
        .unwrap();
    assert_eq!((r.selected, r.created), (1, 1));
    assert_eq!(progress_calls, 1);
    let event: serde_json::Value =
        sqlx::query_scalar("SELECT event FROM intake_outcomes WHERE message_key = 'needs-county'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(event["type"], "case.created");
    assert_eq!(event["data"]["replay"]["replayed"], true);
    assert_eq!(event["data"]["replay"]["attempt"], 3);

    // Nothing is left to replay; the history keeps every attempt.
    assert_eq!(replay(&env, &all).await.selected, 0);
    let history = failed::show(&env.pool, &vault, "needs-county", None)
        .await
        .unwrap();
    assert_eq!(history.len(), 2);
    assert!(history.iter().all(|h| h.intake.resolved_at.is_some()));
    // No relay ran: each replay forgot a failed outcome whose event was still unpublished,
    // and that event was copied into its outbox row first. All three events stay publishable.
    let queued: Vec<(String, Option<i32>)> = sqlx::query_as(
        "SELECT body->>'type', (body->'data'->'replay'->>'attempt')::int
           FROM outbox_events ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        queued,
        vec![
            ("case.failed".to_owned(), None),
            ("case.failed".to_owned(), Some(2)),
            ("case.created".to_owned(), Some(3)),
            // The replay that created the case announces that the failure is resolved.
            ("case.intake_resolved".to_owned(), None),
        ]
    );
    // A re-published duplicate now gets the created outcome.
    let out = process_as(&env, "needs-county", &env.a, &body).await;
    assert!(matches!(out, Outcome::Duplicate { .. }));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn replaying_a_key_that_has_since_succeeded_creates_nothing() {
    let env = TestEnv::new().await;
    let body = seed_of(&env.a);
    // First without a valid token (kept in the unauthenticated namespace), then properly.
    env.process(&[env.envelope("later-ok", Some("wrong"), &body)])
        .await;
    let mut env_ok = env.envelope("later-ok", Some(&env.a.token), &body);
    env_ok.correlation_id = None;
    let out = env.process(&[env_ok]).await;
    assert!(matches!(out[0], Outcome::Created { .. }));
    // The failed intake carries the wrong token's hash, so replaying it fails again...
    let by_key = failed_with_key("later-ok");
    let r = replay(&env, &by_key).await;
    assert_eq!((r.selected, r.failed), (1, 1));
    // ...and a failed intake replayed with the right caller finds the existing case.
    sqlx::query("UPDATE failed_intakes SET token_hash = $1 WHERE resolved_at IS NULL")
        .bind(case_intake::store::auth::hash_token(&env.a.token).to_vec())
        .execute(&env.pool)
        .await
        .unwrap();
    let r = replay(&env, &by_key).await;
    assert_eq!((r.selected, r.duplicate, r.created), (1, 1, 0));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 1);
    env.cleanup().await;
}

/// Holds an exclusive lock on `households` until the returned connection commits.
async fn lock_households(env: &TestEnv) -> sqlx::PgConnection {
    let mut conn = sqlx::PgConnection::connect(&format!(
        "postgres://postgres@127.0.0.1:5432/{}",
        env.db_name
    ))
    .await
    .unwrap();
    sqlx::raw_sql("BEGIN; LOCK TABLE households IN ACCESS EXCLUSIVE MODE")
        .execute(&mut conn)
        .await
        .unwrap();
    conn
}

fn fast_retries(env: &mut TestEnv, max_attempts: u32) {
    env.settings.database.lock_timeout_ms = 100;
    env.settings.intake.transient_retries = 1;
    env.settings.intake.max_attempts = max_attempts;
    env.settings.amqp.retry_delay_ms = 200;
}

#[tokio::test]
async fn a_lock_past_the_timeout_goes_through_the_retry_queue_and_then_succeeds() {
    let mut env = TestEnv::new().await;
    fast_retries(&mut env, 1000);
    let (_, household) = created(&process_seed(&env, "head", &env.a).await);
    let (mut broker, worker) = broker_and_worker(&env).await;
    let lock = lock_households(&env).await;
    let join = joining(env.a.county_ids[0], household);
    publish_as(&broker, &env.a.token, Some("join"), None, &to_bytes(&join)).await;
    // Wait until the intake has been through the retry queue at least once, then release.
    let retried_queue = case_intake::outbox::topology::retry_queue(&env.settings.amqp.intake_queue);
    let ch = broker.conn.create_channel().await.unwrap();
    until("the intake in the retry queue", SETTLE, || async {
        message_count(&ch, &retried_queue).await > 0
    })
    .await;
    lock.close().await.unwrap();
    let (routing_key, _, event) = broker.next_event_for("join").await;
    assert_eq!(routing_key, "case.created", "{event}");
    assert_eq!(event["data"]["household_id"], household);
    worker.stop().await;
    env.assert_household_invariant().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_lock_that_never_ends_fails_the_intake_with_retries_exhausted() {
    let mut env = TestEnv::new().await;
    fast_retries(&mut env, 2);
    let (_, household) = created(&process_seed(&env, "head", &env.a).await);
    let lock = lock_households(&env).await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let stuck = to_bytes(&joining(env.a.county_ids[0], household));
    publish_as(
        &broker,
        &env.a.token,
        Some("stuck"),
        Some("c-stuck"),
        &stuck,
    )
    .await;
    let (routing_key, props, event) = broker.next_event_for("stuck").await;
    assert_eq!(routing_key, "case.failed");
    assert_eq!(event["data"]["error"]["code"], "retries_exhausted");
    assert_eq!(
        props.correlation_id().as_ref().map(|c| c.as_str()),
        Some("c-stuck")
    );
    lock.close().await.unwrap();
    worker.stop().await;
    // Kept for replay, which succeeds now that the lock is gone.
    let r = replay(&env, &failed_with_code("retries_exhausted")).await;
    assert_eq!((r.selected, r.created), (1, 1));
    env.cleanup().await;
}

#[tokio::test]
async fn dead_lettered_intakes_become_failed_intakes_unless_already_done() {
    let env = TestEnv::new().await;
    let done = process_seed(&env, "done", &env.a).await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    let dead = case_intake::outbox::topology::dead_letter_queue(&env.settings.amqp.intake_queue);
    let (h, v) = token_header(&env.a.token);
    let mut headers = lapin::types::FieldTable::default();
    headers.insert(
        h.into(),
        lapin::types::AMQPValue::LongString(v.as_bytes().to_vec().into()),
    );
    let body = to_bytes(&seed_of(&env.a));
    for key in ["poison", "done"] {
        broker
            .publish
            .basic_publish(
                "".into(),
                dead.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default()
                    .with_message_id(key.into())
                    .with_headers(headers.clone()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let events = [
        broker.next_event_for("poison").await,
        broker.next_event_for("done").await,
    ];
    let poison = events.iter().find(|e| e.2["subject"] == "poison").unwrap();
    assert_eq!(poison.2["data"]["error"]["code"], "dead_lettered");
    // A key that already had an outcome keeps it: its original event is repeated.
    let again = events.iter().find(|e| e.2["subject"] == "done").unwrap();
    assert_eq!(again.2["id"], done.event_id().to_string());
    worker.stop().await;
    assert_eq!(failed_count(&env, "dead_lettered").await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn retention_purges_old_keys_and_resolved_failures_but_not_what_the_outbox_needs() {
    let env = TestEnv::new().await;
    env.process(&[
        seed_envelope(&env, "old", &env.a),
        seed_envelope(&env, "new", &env.a),
        env.envelope("bad", None, &seed_of(&env.a)),
        seed_envelope(&env, "unsent", &env.a),
    ])
    .await;
    // 'unsent' is past retention too, but its event has not left yet (broker down for a
    // month): its outbox row still reads the event from the outcome row, which must stay.
    sqlx::raw_sql(
        "UPDATE intake_outcomes SET created_at = now() - interval '31 days' WHERE message_key IN ('old', 'bad', 'unsent');
         DELETE FROM outbox WHERE outcome_key IS DISTINCT FROM 'unsent';
         UPDATE failed_intakes SET resolved_at = now() - interval '31 days', resolution = 'dismissed'",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    let purged = case_intake::admin::retention::purge(&env.pool, 30)
        .await
        .unwrap();
    assert_eq!(purged.outcomes, 2);
    assert_eq!(purged.failed, 1);
    let left: Vec<String> =
        sqlx::query_scalar("SELECT message_key FROM intake_outcomes ORDER BY message_key")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(left, vec!["new".to_owned(), "unsent".to_owned()]);
    let unsent: Option<String> = sqlx::query_scalar("SELECT body->>'type' FROM outbox_events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(unsent.as_deref(), Some("case.created"));
    // After the window a re-published key is a new intake (documented in the README).
    created(&process_seed(&env, "old", &env.a).await);
    env.cleanup().await;
}

/// The message with which loading the configuration file `file` is refused.
fn load_error(file: &std::path::Path) -> String {
    case_intake::infra::settings::Settings::load(Some(file))
        .unwrap_err()
        .to_string()
}

#[test]
fn invalid_configuration_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("case-intake-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(
        &file,
        "[intake]\nwindow_size = 0\n[amqp]\nurl = \"http://nope\"\n",
    )
    .unwrap();
    let err = load_error(&file);
    assert!(
        err.contains("intake.window_size must be greater than 0"),
        "{err}"
    );
    assert!(err.contains("amqp.url must start with amqp://"), "{err}");
    std::fs::write(&file, "[intake]\nwindw_size = 3\n").unwrap();
    let err = load_error(&file);
    assert!(err.contains("windw_size"), "{err}");
    // Keys of earlier versions are refused, not silently ignored (README, configuration).
    std::fs::write(&file, "[outbox]\nlease_ms = 30000\n").unwrap();
    let err = load_error(&file);
    assert!(err.contains("lease_ms"), "{err}");
    // Without its sweep the relay would never find rows no window handed it.
    std::fs::write(&file, "[outbox]\npoll_interval_ms = 0\n").unwrap();
    let err = load_error(&file);
    assert!(
        err.contains("outbox.poll_interval_ms must be greater than 0"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A body of the seed with `names` added as unknown keys.
fn with_unknown(env: &TestEnv, names: &[String]) -> Vec<u8> {
    let mut body = seed_of(&env.a);
    for n in names {
        body[n.as_str()] = serde_json::json!(1);
    }
    to_bytes(&body)
}

#[tokio::test]
async fn long_error_lists_are_stored_bounded_and_stay_resendable() {
    use case_intake::domain::error::{MAX_FIELD_NAME_BYTES, MAX_LISTED_FIELDS};
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    // A name at the byte bound, one just past it (ASCII), one past it in 4-byte characters
    // (cut on a character boundary), and the 2,800-character key.
    let at = |c: char| c.to_string().repeat(MAX_FIELD_NAME_BYTES / c.len_utf8());
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("name-at-bound", vec![at('a')]),
        (
            "name-past-bound",
            vec!["b".repeat(MAX_FIELD_NAME_BYTES + 1)],
        ),
        ("wide-name", vec!["😀".repeat(2_800)]),
        ("one-huge-name", vec!["x".repeat(2_800)]),
        // Escaped in the stored list: `\\` and `,` doubled to the bound's full width.
        ("escaped-name", vec![",\\".repeat(MAX_FIELD_NAME_BYTES / 2)]),
        (
            "list-at-bound",
            (0..MAX_LISTED_FIELDS)
                .map(|i| format!("{}{}", (b'a' + i as u8) as char, at('c')))
                .collect(),
        ),
        (
            "list-past-bound",
            (0..=MAX_LISTED_FIELDS)
                .map(|i| format!("{}{}", (b'a' + i as u8) as char, "d".repeat(300)))
                .collect(),
        ),
    ];
    // Distinct people, so that no resend meets another as a possible duplicate.
    let person = |n: u64| {
        let mut body = seed_of(&env.a);
        case_intake_harness::people::Person::of(n).apply(&mut body);
        to_bytes(&body)
    };
    let seed = person(7_000);
    for (key, names) in &cases {
        publish_as(
            &broker,
            &env.a.token,
            Some(key),
            None,
            &with_unknown(&env, names),
        )
        .await;
    }
    publish_as(&broker, &env.a.token, Some("innocent"), None, &seed).await;

    let mut events = std::collections::HashMap::new();
    while events.len() < cases.len() + 1 {
        let e = broker.next_event().await;
        events.insert(e.2["subject"].as_str().unwrap().to_owned(), e);
    }
    assert_eq!(events["innocent"].0, env.settings.amqp.created_routing_key);
    for (key, names) in &cases {
        let (rk, _, ev) = &events[*key];
        let error = &ev["data"]["error"];
        assert_eq!(rk, &env.settings.amqp.failed_routing_key, "{key}");
        assert_eq!(error["code"], "validation_failed", "{key}");
        let listed: Vec<&String> = error["fields"].as_object().unwrap().keys().collect();
        assert_eq!(listed.len(), names.len().min(MAX_LISTED_FIELDS), "{key}");
        let omitted = names.len().saturating_sub(MAX_LISTED_FIELDS);
        assert_eq!(
            error["fields_omitted"].as_u64().unwrap_or(0),
            omitted as u64,
            "{key}: {error}"
        );
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{} field", names.len())),
            "{key}: {error}"
        );
        for (name, sent) in listed.iter().zip(names) {
            assert!(name.len() <= MAX_FIELD_NAME_BYTES, "{key}: {name}");
            if sent.len() <= MAX_FIELD_NAME_BYTES {
                assert_eq!(*name, sent, "{key}");
            } else {
                assert!(name.ends_with('…'), "{key}: {name}");
                assert!(sent.starts_with(name.trim_end_matches('…')), "{key}");
            }
        }
        // What is stored agrees with the event: the listed names, then the count omitted.
        let stored: (String, serde_json::Value) =
            sqlx::query_as("SELECT error_fields, error FROM failed_intakes WHERE message_key = $1")
                .bind(key)
                .fetch_one(&env.pool)
                .await
                .unwrap();
        let mut expected: Vec<String> = listed
            .iter()
            .map(|s| s.replace('\\', "\\\\").replace(',', "\\,"))
            .collect();
        if omitted > 0 {
            expected.push(format!("…and {omitted} more"));
        }
        assert_eq!(stored.0, expected.join(","), "{key}");
        assert_eq!(&stored.1, error, "{key}");
    }
    assert_eq!(failed_count(&env, "dead_lettered").await, 0);

    // Each is resendable: the corrected body under the same key creates the case.
    for (i, (key, _)) in cases.iter().enumerate() {
        let corrected = person(7_001 + i as u64);
        publish_as(&broker, &env.a.token, Some(key), None, &corrected).await;
        // Its resolution event may come first.
        loop {
            let (rk, _, ev) = broker.next_event_for(key).await;
            assert_ne!(rk, env.settings.amqp.failed_routing_key, "{key}: {ev}");
            if rk == env.settings.amqp.created_routing_key {
                break;
            }
        }
    }
    worker.stop().await;
    env.cleanup().await;
}
