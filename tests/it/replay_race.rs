//! An operator's retry racing its sender's resend (issue 21, items 1 and 3): a replay or an
//! edit whose failure the sender's corrected body superseded after the retry selected it does
//! nothing to the key (`already_resolved`: no second outcome, no new failed intake, nothing
//! published), and a replay's report accounts for every row it announced, those resolved
//! before their batch included.
//!
//! The races are staged in order, without timing: the retry selects its failure (a replay's
//! envelopes, a staged edit), then the resend commits through the window, then the retry runs.

use case_intake::admin::dismiss::{self, Dismissal};
use case_intake::admin::edit::{self, Changes, EditRequest};
use case_intake::admin::failed::{self, Filter};
use case_intake::admin::pacing::BulkOptions;
use case_intake::app::supervisor;
use case_intake::domain::error::ErrorCode;
use case_intake::intake::envelope::Envelope;
use case_intake::intake::window::{self, Outcome, WindowContext};
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{created, envelope_from, failed, process_as, seed_of, with};
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

/// A county id no network has: the intake fails `validation_failed` on `street_county`.
const NO_COUNTY: i64 = 990_021;
/// Another one: a second wrong body, so that a resend fails again.
const NO_COUNTY_EITHER: i64 = 990_022;

/// The operator the retries run for.
const OPERATOR: &str = "ana";

fn operator_ctx(env: &TestEnv) -> WindowContext {
    supervisor::window_context(&env.settings)
}

/// The failed intakes of `key`: (id, attempts, resolution, resolved event id), oldest first.
async fn failures_of(env: &TestEnv, key: &str) -> Vec<(i64, i32, Option<String>, Option<Uuid>)> {
    sqlx::query_as(
        "SELECT id, attempts, resolution, resolved_event_id FROM failed_intakes
          WHERE message_key = $1 ORDER BY id",
    )
    .bind(key)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// The key's recorded outcome: (outcome, event id).
async fn outcome_of(env: &TestEnv, key: &str) -> (String, Uuid) {
    sqlx::query_as("SELECT outcome, event_id FROM intake_outcomes WHERE message_key = $1")
        .bind(key)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Every event queued in the outbox, in order: (routing key, body).
async fn outbox(env: &TestEnv) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT b.routing_key, COALESCE(b.body::jsonb, o.event)
           FROM outbox b
           LEFT JOIN intake_outcomes o
             ON o.network_id = b.outcome_network_id AND o.message_key = b.outcome_key
          ORDER BY b.id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

/// Fails `key` with `validation_failed`; the failure's event id and failed-intake id.
async fn fail_key(env: &TestEnv, key: &str) -> (Uuid, i64) {
    let bad = with(seed_of(&env.a), "street_county", json!(NO_COUNTY));
    let out = process_as(env, key, &env.a, &bad).await;
    assert_eq!(failed(&out), ErrorCode::ValidationFailed);
    let rows = failures_of(env, key).await;
    (out.event_id(), rows[0].0)
}

/// The replay envelopes of `key`'s open failure, as a replay's batch builds them.
async fn replay_of(env: &TestEnv, failed_id: i64) -> Vec<Envelope> {
    let envelopes =
        failed::replay_envelopes(&env.pool, &operator_ctx(env), &[failed_id], Some(OPERATOR))
            .await
            .unwrap();
    assert_eq!(envelopes.len(), 1);
    envelopes
}

#[tokio::test]
async fn a_replay_whose_failure_a_resend_created_meanwhile_does_nothing() {
    let env = TestEnv::new().await;
    let (failure, failed_id) = fail_key(&env, "rr1").await;
    let replay = replay_of(&env, failed_id).await;

    // The sender's corrected body commits after the replay selected the failure.
    let resend = process_as(&env, "rr1", &env.a, &seed_of(&env.a)).await;
    created(&resend);
    let queued = outbox(&env).await;

    let out = window::run(&env.pool, &operator_ctx(&env), &replay)
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::AlreadyResolved { event_id: failure }]);
    // One outcome (the resend's), one failed intake (resolved by the resend), nothing queued.
    assert_eq!(
        outcome_of(&env, "rr1").await,
        ("created".into(), resend.event_id())
    );
    assert_eq!(
        failures_of(&env, "rr1").await,
        vec![(failed_id, 1, Some("resent".into()), Some(resend.event_id()))]
    );
    assert_eq!(outbox(&env).await, queued);
    env.cleanup().await;
}

#[tokio::test]
async fn a_replay_whose_failure_a_resend_failed_again_meanwhile_leaves_the_new_failure() {
    let env = TestEnv::new().await;
    let (_, failed_id) = fail_key(&env, "rr2").await;
    let replay = replay_of(&env, failed_id).await;

    // The resend fails too (another wrong county): attempt 2 is now the key's open failure.
    let wrong = with(seed_of(&env.a), "street_county", json!(NO_COUNTY_EITHER));
    let resend = process_as(&env, "rr2", &env.a, &wrong).await;
    assert_eq!(failed(&resend), ErrorCode::ValidationFailed);
    let before = failures_of(&env, "rr2").await;
    assert_eq!(before.len(), 2);
    assert_eq!((before[1].1, before[1].2.as_deref()), (2, None));
    let queued = outbox(&env).await;

    let out = window::run(&env.pool, &operator_ctx(&env), &replay)
        .await
        .unwrap();
    assert!(
        matches!(out[..], [Outcome::AlreadyResolved { .. }]),
        "{out:?}"
    );
    // The resend's failure is still the key's outcome and still open for its own retry.
    assert_eq!(
        outcome_of(&env, "rr2").await,
        ("failed".into(), resend.event_id())
    );
    assert_eq!(failures_of(&env, "rr2").await, before);
    assert_eq!(outbox(&env).await, queued);
    env.cleanup().await;
}

#[tokio::test]
async fn an_edit_whose_failure_a_resend_created_meanwhile_does_nothing() {
    let env = TestEnv::new().await;
    let (failure, failed_id) = fail_key(&env, "re1").await;
    let ctx = operator_ctx(&env);
    let county = env.a.county_ids[1];
    let req = EditRequest {
        key: "re1".into(),
        network: None,
        changes: Changes::Fields {
            set: vec![("street_county".into(), json!(county))],
            unset: vec![],
        },
        dry_run: false,
        operator: Some("ana".into()),
    };
    let staged = edit::stage(&env.pool, &ctx, req).await.unwrap();
    assert_eq!(staged.failed_intake_id(), failed_id);

    let resend = process_as(&env, "re1", &env.a, &seed_of(&env.a)).await;
    created(&resend);
    let queued = outbox(&env).await;

    let report = edit::run_staged(&env.pool, &ctx, staged).await.unwrap();
    assert_eq!(
        (report.outcome, report.event_id, report.case.is_none()),
        ("already_resolved", failure, true)
    );
    assert_eq!(
        outcome_of(&env, "re1").await,
        ("created".into(), resend.event_id())
    );
    let rows = failures_of(&env, "re1").await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].2.as_deref(), Some("resent"));
    // Not applied, so not audited.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intake_edits")
            .await,
        0
    );
    assert_eq!(outbox(&env).await, queued);
    env.cleanup().await;
}

#[tokio::test]
async fn a_resend_after_a_replay_that_failed_again_supersedes_the_replays_failure() {
    // The other order of the race: the replay commits first (its failure still open), and the
    // resend then meets the replay's outcome as any later message would.
    let env = TestEnv::new().await;
    let (_, failed_id) = fail_key(&env, "rr3").await;
    let replay = replay_of(&env, failed_id).await;
    let out = window::run(&env.pool, &operator_ctx(&env), &replay)
        .await
        .unwrap();
    assert_eq!(failed(&out[0]), ErrorCode::ValidationFailed);
    let resend = process_as(&env, "rr3", &env.a, &seed_of(&env.a)).await;
    created(&resend);
    let rows = failures_of(&env, "rr3").await;
    assert_eq!(
        rows.iter()
            .map(|r| (r.1, r.2.as_deref()))
            .collect::<Vec<_>>(),
        vec![(1, Some("replayed")), (2, Some("resent"))]
    );
    env.cleanup().await;
}

/// Runs `envelopes` as one window on a pool and runtime of their own, blocking the caller:
/// what a worker does while a replay's progress callback holds its place between batches.
fn resend_elsewhere(env: &TestEnv, envelopes: Vec<Envelope>) {
    let url = env.settings.database.url.expose_secret().to_owned();
    let ctx = supervisor::window_context(&env.settings);
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let pool = sqlx::PgPool::connect(&url).await.unwrap();
                let out = window::run(&pool, &ctx, &envelopes).await.unwrap();
                assert!(out.iter().all(|o| matches!(o, Outcome::Created { .. })));
                pool.close().await;
            });
        })
        .join()
        .expect("the resends ran");
    });
}

#[tokio::test]
async fn a_replays_report_accounts_for_failures_resolved_before_their_batch() {
    let env = TestEnv::new().await;
    let keys: Vec<String> = (0..6).map(|i| format!("rp{i}")).collect();
    for key in &keys {
        fail_key(&env, key).await;
    }
    // After the first batch, the senders of the last three keys resend corrected bodies.
    let mut resends: Vec<Envelope> = keys[3..]
        .iter()
        .map(|k| envelope_from(&env, k, &env.a, &seed_of(&env.a)))
        .collect();
    let mut lines: Vec<Value> = Vec::new();
    let options = BulkOptions {
        window_size: 2,
        rate: None,
        dry_run: false,
    };
    let filter = Filter {
        code: Some("validation_failed".into()),
        limit: 100,
        ..Filter::default()
    };
    let report = failed::replay_with(
        &env.pool,
        &operator_ctx(&env),
        &filter,
        options,
        Some(OPERATOR),
        |r| {
            lines.push(serde_json::to_value(r).unwrap());
            if !resends.is_empty() {
                resend_elsewhere(&env, std::mem::take(&mut resends));
            }
        },
    )
    .await
    .unwrap();
    let report = serde_json::to_value(&report).unwrap();
    // Compared as JSON: the same test ran against the code before `already_resolved` existed.
    let count = |v: &Value, k: &str| v[k].as_i64().unwrap_or(-1);
    assert_eq!(
        ["selected", "failed", "created", "already_resolved"].map(|k| count(&report, k)),
        [6, 3, 0, 3],
        "{report}"
    );
    let parts = ["created", "failed", "duplicate", "matched", "skipped"];
    let sum: i64 =
        parts.iter().map(|k| count(&report, k)).sum::<i64>() + count(&report, "already_resolved");
    assert_eq!(sum, 6, "{report}");
    // Every announced batch ran and was reported: 2, 4, 6 of 6.
    let progress: Vec<i64> = lines.iter().map(|l| count(l, "selected")).collect();
    assert_eq!(progress, vec![2, 4, 6]);
    // The replays of the three still-open failures failed again; nothing else was touched.
    for key in &keys[3..] {
        let rows = failures_of(&env, key).await;
        assert_eq!(rows.len(), 1, "{key}: {rows:?}");
        assert_eq!(rows[0].2.as_deref(), Some("resent"));
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_dismissal_whose_failure_a_resend_resolved_after_selection_does_nothing() {
    let env = TestEnv::new().await;
    let (_, failed_id) = fail_key(&env, "rd1").await;
    fail_key(&env, "rd2").await;
    let filter = Filter {
        limit: 100,
        ..Filter::default()
    };
    let selected = failed::select_open(&env.pool, &filter).await.unwrap();
    assert_eq!(selected.len(), 2);

    let resend = process_as(&env, "rd1", &env.a, &seed_of(&env.a)).await;
    created(&resend);
    let queued = outbox(&env).await;

    let who = Dismissal::new("ana", "sender retired").unwrap();
    let options = BulkOptions {
        window_size: 1,
        rate: None,
        dry_run: false,
    };
    let ctx = supervisor::window_context(&env.settings);
    let report = dismiss::dismiss_selected(&env.pool, &ctx, &selected, &who, options, |_| {})
        .await
        .unwrap();
    assert_eq!(
        (report.selected, report.dismissed, report.already_resolved),
        (2, 1, 1)
    );
    // The resent key keeps its resolution; only the other key's dismissal is announced.
    let rows = failures_of(&env, "rd1").await;
    assert_eq!(
        (rows[0].0, rows[0].2.as_deref()),
        (failed_id, Some("resent"))
    );
    let added: Vec<(String, Value)> = outbox(&env).await.split_off(queued.len());
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0].1["data"]["message_key"], "rd2");
    assert_eq!(added[0].1["data"]["resolution"], "dismissed");
    env.cleanup().await;
}
