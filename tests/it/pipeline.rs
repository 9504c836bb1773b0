//! The window pipeline against the real PostgreSQL: household rules, idempotency, tenancy,
//! failures and the invariants under concurrent windows.

use case_intake::domain::error::ErrorCode;
use case_intake::intake::envelope::Envelope;
use case_intake::intake::validate::{KNOWN_FIELDS, READ_ONLY_FIELDS};
use case_intake::intake::window::Outcome;
use case_intake_harness::support::{TestEnv, seed_body};
use case_intake_harness::testkit::{
    created, envelope_from, event_of, failed, failed_count, foreign_and_missing, joining,
    process_as, process_seed, seed_envelope, seed_of, with,
};
use case_intake_harness::wait::{SETTLE, eventually, until};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Runs `envelopes` as one window in a task of its own (it is to wait for a lock the test
/// holds); the task ends with the window's outcomes.
fn spawn_window(env: &TestEnv, envelopes: Vec<Envelope>) -> JoinHandle<Vec<Outcome>> {
    let (pool, ctx) = (
        env.pool.clone(),
        case_intake::app::supervisor::window_context(&env.settings),
    );
    tokio::spawn(async move {
        case_intake::intake::window::run(&pool, &ctx, &envelopes)
            .await
            .expect("window processed")
    })
}

/// The head case of `household`.
async fn head_of(env: &TestEnv, household: i64) -> i64 {
    sqlx::query_scalar("SELECT head_case_id FROM households WHERE id = $1")
        .bind(household)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn household_rules_create_join_and_replace_heads() {
    let env = TestEnv::new().await;

    // No household: one is created and the case heads it, even with head_of_household false.
    let (first, household) = created(&process_seed(&env, "k1", &env.a).await);
    let ev = event_of(&env, "k1", env.a.network_id).await;
    assert_eq!(ev["data"]["household_created"], true);
    assert_eq!(ev["data"]["head_of_household"], true);
    assert_eq!(ev["data"]["household_id"], household);

    // Joining with false keeps the head.
    let join = joining(env.a.county_ids[0], household);
    let (second, h2) = created(&process_as(&env, "k2", &env.a, &join).await);
    assert_eq!(h2, household);
    let ev = event_of(&env, "k2", env.a.network_id).await;
    assert_eq!(ev["data"]["head_of_household"], false);
    assert_eq!(ev["data"]["household_created"], false);
    assert_eq!(ev["data"]["previous_head_case_id"], Value::Null);

    // Joining with true replaces the head and names the previous one.
    let replace = with(join.clone(), "head_of_household", json!(true));
    let (third, _) = created(&process_as(&env, "k3", &env.a, &replace).await);
    let ev = event_of(&env, "k3", env.a.network_id).await;
    assert_eq!(ev["data"]["head_of_household"], true);
    assert_eq!(ev["data"]["previous_head_case_id"], first);

    assert_eq!(head_of(&env, household).await, third);
    let flags: Vec<(i64, bool)> = sqlx::query_as(
        "SELECT id, head_of_household FROM cases WHERE household_id = $1 ORDER BY id",
    )
    .bind(household)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(flags, vec![(first, false), (second, false), (third, true)]);
    env.assert_household_invariant().await;
    env.cleanup().await;
}

#[tokio::test]
async fn replacements_within_one_window_keep_one_head() {
    let env = TestEnv::new().await;
    let (_, household) = created(&process_seed(&env, "h", &env.a).await);
    let body = with(
        joining(env.a.county_ids[0], household),
        "head_of_household",
        json!(true),
    );
    let window: Vec<_> = (0..5)
        .map(|i| {
            let mut b = body.clone();
            b["first_name"] = json!(format!("Member{i}"));
            envelope_from(&env, &format!("r{i}"), &env.a, &b)
        })
        .collect();
    let out = env.process(&window).await;
    assert_eq!(head_of(&env, household).await, created(&out[4]).0);
    // Each replacement names the head it displaced, in order.
    for i in 1..5 {
        let ev = event_of(&env, &format!("r{i}"), env.a.network_id).await;
        assert_eq!(ev["data"]["previous_head_case_id"], created(&out[i - 1]).0);
    }
    env.assert_household_invariant().await;
    env.cleanup().await;
}

#[tokio::test]
async fn redelivered_key_creates_nothing_and_repeats_the_original_event() {
    let env = TestEnv::new().await;
    let original = process_seed(&env, "dup", &env.a).await.event_id();
    // Again in a later window, and twice within one window.
    let again = env
        .process(&[
            seed_envelope(&env, "dup", &env.a),
            seed_envelope(&env, "fresh", &env.a),
            seed_envelope(&env, "fresh", &env.a),
        ])
        .await;
    assert_eq!(again[0], Outcome::Duplicate { event_id: original });
    let fresh = again[1].event_id();
    assert!(matches!(again[1], Outcome::Created { .. }));
    assert_eq!(again[2], Outcome::Duplicate { event_id: fresh });
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 2);
    // Every delivery queued an event; duplicates carry the original id.
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM outbox ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(ids, vec![original, original, fresh, fresh]);
    env.cleanup().await;
}

#[tokio::test]
async fn same_key_with_another_body_is_rejected_and_changes_nothing() {
    let env = TestEnv::new().await;
    let body = seed_of(&env.a);
    let first = process_seed(&env, "k", &env.a).await;
    let other = with(body.clone(), "first_name", json!("Jane"));
    let out = process_as(&env, "k", &env.a, &other).await;
    assert_eq!(failed(&out), ErrorCode::IdempotencyKeyReused);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 1);
    // The recorded outcome is still the first one.
    let ev = event_of(&env, "k", env.a.network_id).await;
    assert_eq!(ev["id"], first.event_id().to_string());
    // Key order or whitespace differences are the same body.
    let obj = body.as_object().unwrap();
    let reversed: Vec<String> = obj
        .iter()
        .rev()
        .map(|(k, v)| format!("\n  {:?} :  {}", k, v))
        .collect();
    let reordered = format!("{{{}\n}}", reversed.join(","));
    let mut env_reordered = seed_envelope(&env, "k", &env.a);
    env_reordered.body = reordered.into_bytes();
    let out = env.process(&[env_reordered]).await;
    assert!(matches!(out[0], Outcome::Duplicate { .. }), "{out:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_key_in_another_network_is_another_intake() {
    let env = TestEnv::new().await;
    let (case_a, _) = created(&process_seed(&env, "shared", &env.a).await);
    let (case_b, _) = created(&process_seed(&env, "shared", &env.b).await);
    assert_ne!(case_a, case_b);
    let networks: Vec<i64> = sqlx::query_scalar("SELECT network_id FROM cases ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(networks, vec![env.a.network_id, env.b.network_id]);
    env.cleanup().await;
}

#[tokio::test]
async fn references_into_another_network_look_like_missing_ones() {
    let env = TestEnv::new().await;
    let (_, household_a) = created(&process_seed(&env, "a1", &env.a).await);
    let out = env
        .process(&foreign_and_missing(
            &env,
            ["b1", "b2"],
            &env.b,
            &env.a,
            household_a,
        ))
        .await;
    assert_eq!(failed(&out[0]), ErrorCode::ValidationFailed);
    assert_eq!(failed(&out[1]), ErrorCode::ValidationFailed);
    let e1 = event_of(&env, "b1", env.b.network_id).await;
    let e2 = event_of(&env, "b2", env.b.network_id).await;
    assert_eq!(e1["data"]["error"], e2["data"]["error"]);
    assert_eq!(
        e1["data"]["error"]["fields"]["street_county"][0],
        "is not a county of your network"
    );
    assert_eq!(
        e1["data"]["error"]["fields"]["household"][0],
        "is not a household of your network"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn unauthenticated_intakes_fail_and_revocation_applies_to_the_next_message() {
    let env = TestEnv::new().await;
    let body = seed_of(&env.a);
    let mut no_token = env.envelope("n1", None, &body);
    no_token.token = None;
    let out = env
        .process(&[
            no_token,
            env.envelope("n2", Some("not-a-real-token"), &body),
            seed_envelope(&env, "n3", &env.a),
        ])
        .await;
    assert_eq!(failed(&out[0]), ErrorCode::Unauthorized);
    assert_eq!(failed(&out[1]), ErrorCode::Unauthorized);
    created(&out[2]);
    assert!(
        case_intake::admin::provision::revoke_key(&env.pool, env.a.api_key_id)
            .await
            .unwrap()
    );
    let out = process_seed(&env, "n4", &env.a).await;
    assert_eq!(failed(&out), ErrorCode::Unauthorized);
    // Failed intakes are kept with their error for inspection and replay.
    assert_eq!(failed_count(&env, "unauthorized").await, 3);
    env.cleanup().await;
}

#[tokio::test]
async fn bad_messages_fail_alone_with_stable_codes() {
    let env = TestEnv::new().await;
    let good = seed_of(&env.a);
    let mut malformed = seed_envelope(&env, "m1", &env.a);
    malformed.body = b"{\"first_name\": ".to_vec();
    let mut too_large = seed_envelope(&env, "m2", &env.a);
    too_large.body = vec![b' '; env.settings.intake.max_body_bytes + 1];
    let mut no_key = seed_envelope(&env, "m3", &env.a);
    no_key.message_key = None;
    let mut invalid = good.clone();
    invalid["first_name"] = json!("");
    invalid["ss_number"] = json!("666-12-3456");
    invalid["id"] = json!(5);
    invalid["favourite_colour"] = json!("blue");
    // Reference errors are reported together with the other field errors.
    invalid["street_county"] = json!(999_999);
    let out = env
        .process(&[
            malformed,
            seed_envelope(&env, "ok1", &env.a),
            too_large,
            no_key,
            envelope_from(&env, "m4", &env.a, &invalid),
            seed_envelope(&env, "ok2", &env.a),
        ])
        .await;
    assert_eq!(failed(&out[0]), ErrorCode::MalformedJson);
    created(&out[1]);
    assert_eq!(failed(&out[2]), ErrorCode::PayloadTooLarge);
    assert_eq!(failed(&out[3]), ErrorCode::MissingMessageKey);
    assert_eq!(failed(&out[4]), ErrorCode::ValidationFailed);
    created(&out[5]);
    let ev = event_of(&env, "m4", env.a.network_id).await;
    let fields = ev["data"]["error"]["fields"].as_object().unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "favourite_colour",
            "first_name",
            "id",
            "ss_number",
            "street_county"
        ]
    );
    assert_eq!(ev["type"], "case.failed");
    assert_eq!(ev["subject"], "m4");
    // No event or stored error repeats the SSN.
    let all: String = sqlx::query_scalar("SELECT string_agg(body::text, '') FROM outbox_events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(!all.contains("111223333") && !all.contains("666-12-3456"));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intakes").await,
        4
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM outbox").await, 6);
    env.cleanup().await;
}

#[tokio::test]
async fn created_event_holds_every_field_with_the_ssn_masked() {
    let env = TestEnv::new().await;
    let (case_id, household) = created(&process_seed(&env, "f", &env.a).await);
    let ev = event_of(&env, "f", env.a.network_id).await;
    let data = &ev["data"];
    assert_eq!(data["id"], case_id);
    assert_eq!(data["household"], household);
    assert_eq!(data["ss_number"], "*****3333");
    assert_eq!(data["entry_agent"], env.a.agent_id);
    assert_eq!(data["mod_agent"], env.a.agent_id);
    assert_eq!(data["group"], env.a.group_id);
    assert_eq!(data["roi_exp_date"], Value::Null);
    assert_eq!(data["import_id"], Value::Null);
    assert_eq!(data["yearly_income"], 15350);
    assert_eq!(data["message_key"], "f");
    // Every field the API accepts or the system sets, and the times and warnings.
    let system = ["created_at", "updated_at", "warnings"];
    for field in KNOWN_FIELDS.iter().chain(&READ_ONLY_FIELDS).chain(&system) {
        assert!(data.get(field).is_some(), "missing {field}");
    }
    assert_eq!(ev["specversion"], "1.0");
    assert_eq!(ev["source"], env.settings.events.source);
    // The stored case keeps the SSN sealed (AES-256-GCM) with its key id, an HMAC for exact
    // matching, and the last four digits; the digits never appear in clear.
    let row = sqlx::query(
        "SELECT ss_number_sealed, ss_number_key_id, ss_number_hmac, ss_number_last4
           FROM cases WHERE id = $1",
    )
    .bind(case_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    use sqlx::Row;
    let sealed: Vec<u8> = row.get(0);
    let key_id: String = row.get(1);
    let hmac: Vec<u8> = row.get(2);
    let last4: String = row.get(3);
    assert!(!sealed.windows(9).any(|w| w == b"111223333"));
    let vault = case_intake::store::crypto::Vault::from_settings(&env.settings.crypto).unwrap();
    let opened = vault
        .open(case_intake::store::crypto::Purpose::Ssn, &key_id, &sealed)
        .unwrap();
    assert_eq!(opened, b"111223333");
    assert_eq!(hmac, vault.ssn_hmac("111223333").to_vec());
    assert_eq!(last4, "3333");
    let found: i64 =
        sqlx::query_scalar("SELECT id FROM cases WHERE network_id = $1 AND ss_number_hmac = $2")
            .bind(env.a.network_id)
            .bind(vault.ssn_hmac("111223333").to_vec())
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(found, case_id);
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_windows_on_hot_households_keep_exactly_one_head() {
    let env = TestEnv::new().await;
    let token = env.a.token.clone();
    let county = env.a.county_ids[0];
    let mut households = Vec::new();
    for i in 0..3 {
        let out = process_seed(&env, &format!("seed{i}"), &env.a).await;
        households.push(created(&out).1);
    }
    let env = std::sync::Arc::new(env);
    let mut tasks = Vec::new();
    for t in 0..6 {
        let env = env.clone();
        let token = token.clone();
        let households = households.clone();
        tasks.push(tokio::spawn(async move {
            for w in 0..8 {
                let window: Vec<_> = (0..10)
                    .map(|i| {
                        let mut b = seed_body(county);
                        b["household"] = json!(households[(t + w + i) % 3]);
                        b["head_of_household"] = json!((t + i) % 2 == 0);
                        // Some keys collide across tasks: the same intake processed concurrently.
                        let key = if i == 0 {
                            format!("shared-{w}")
                        } else {
                            format!("t{t}-w{w}-{i}")
                        };
                        if i == 0 {
                            b = seed_body(county);
                        }
                        env.envelope(&key, Some(&token), &b)
                    })
                    .collect();
                // Lock waits between windows are expected.
                env.process_retrying(&window).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    env.assert_household_invariant().await;
    // 3 seeds + 6 tasks × 8 windows × 9 unique keys + 8 shared keys.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM cases").await,
        3 + 6 * 8 * 9 + 8
    );
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM intake_outcomes WHERE outcome IS NULL")
            .await,
        0
    );
    let env = std::sync::Arc::into_inner(env).expect("sole owner");
    env.cleanup().await;
}

#[tokio::test]
async fn new_households_are_written_before_the_window_waits_for_a_household_lock() {
    let env = TestEnv::new().await;
    let (_, household) = created(&process_seed(&env, "existing", &env.a).await);

    // Another transaction holds the household's row lock.
    let mut blocker = env.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *blocker).await.unwrap();
    sqlx::query("SELECT 1 FROM households WHERE id = $1 FOR UPDATE")
        .bind(household)
        .execute(&mut *blocker)
        .await
        .unwrap();

    // A window with a new household and a join of the locked one.
    let join = joining(env.a.county_ids[0], household);
    let envelopes = vec![
        seed_envelope(&env, "new", &env.a),
        envelope_from(&env, "join", &env.a, &join),
    ];
    let window = spawn_window(&env, envelopes);

    // Wait until the window's session is blocked on the household lock.
    let waiting: i32 = eventually(
        "the window waiting for the household lock",
        SETTLE,
        || async {
            assert!(
                !window.is_finished(),
                "the window did not wait for the lock"
            );
            sqlx::query_scalar(
                "SELECT a.pid FROM pg_stat_activity a
              WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
                AND a.query LIKE '%FROM households h%FOR UPDATE%'",
            )
            .fetch_optional(&env.pool)
            .await
            .unwrap()
        },
    )
    .await;
    // By then it has already inserted the new household's case: it holds the row-exclusive
    // table lock that only writing to `cases` takes.
    let wrote_cases: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                         WHERE l.pid = $1 AND c.relname = 'cases'
                           AND l.mode = 'RowExclusiveLock' AND l.granted)",
    )
    .bind(waiting)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert!(
        wrote_cases,
        "the new household's case was not written before the lock wait"
    );

    sqlx::query("COMMIT").execute(&mut *blocker).await.unwrap();
    drop(blocker);
    let out = window.await.unwrap();
    let (_, new_household) = created(&out[0]);
    let (_, joined) = created(&out[1]);
    assert_ne!(new_household, household);
    assert_eq!(joined, household);
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 3);
    env.assert_household_invariant().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_key_written_by_a_concurrent_window_meanwhile_reruns_the_window_and_creates_nothing_twice()
 {
    let env = TestEnv::new().await;

    // Another transaction (as a concurrent window would) writes the outcome of key "raced"
    // and has not committed yet: the window below cannot see it when it looks its keys up.
    // A failure a resend cannot supersede (`retries_exhausted`), so that the key stays bound.
    let mut other = env.pool.acquire().await.unwrap();
    sqlx::query("BEGIN").execute(&mut *other).await.unwrap();
    sqlx::query(
        "INSERT INTO intake_outcomes (network_id, message_key, payload_hash, outcome, error_code,
                                      event_id, event, routing_key)
         VALUES ($1, 'raced', '\\x00', 'failed', 'retries_exhausted', gen_random_uuid(),
                 '{\"type\": \"case.failed\"}', 'case.failed')",
    )
    .bind(env.a.network_id)
    .execute(&mut *other)
    .await
    .unwrap();

    let envelopes = vec![
        seed_envelope(&env, "raced", &env.a),
        seed_envelope(&env, "alone", &env.a),
    ];
    let window = spawn_window(&env, envelopes);

    // Wait until the window, at its end, waits for the other transaction's key.
    until("the window waiting for the other key", SETTLE, || async {
        assert!(!window.is_finished(), "the window did not wait for the key");
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a
                             WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
                               AND a.query LIKE 'INSERT INTO intake_outcomes%')",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap()
    })
    .await;
    sqlx::query("COMMIT").execute(&mut *other).await.unwrap();
    drop(other);

    // The window lost the race for "raced": it ran again, found the committed outcome (with
    // another body: the key was reused) and created a case only for "alone".
    let out = window.await.unwrap();
    assert_eq!(failed(&out[0]), ErrorCode::IdempotencyKeyReused);
    let (case_id, _) = created(&out[1]);
    let cases: Vec<i64> = sqlx::query_scalar("SELECT id FROM cases")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(cases, vec![case_id]);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM intake_outcomes WHERE outcome IS NOT NULL")
            .await,
        2
    );
    env.assert_household_invariant().await;
    env.cleanup().await;
}
