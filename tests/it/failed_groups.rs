//! Failure groups and the bulk commands over them, against the real services: `failed groups`
//! counts open failures by network, code and failing fields; `--group` selects exactly a
//! group's rows in `failed list`, `replay` and `failed dismiss`; dry runs write nothing but
//! report; `--rate` cuts the work into batches; a dismissal is recorded, keeps its row, and
//! its `case.intake_resolved` events reach the events exchange through the relay.

use crate::cli::{json_of, run, run_with, text};

use case_intake::admin::dismiss::{self, Dismissal};
use case_intake::admin::failed::{self, Filter};
use case_intake::admin::groups;
use case_intake::admin::pacing::BulkOptions;
use case_intake::app::supervisor;
use case_intake::intake::window::Outcome;
use case_intake_harness::support::{Broker, RunningWorker, TestEnv};
use case_intake_harness::testkit::{process_as, seed_of, with};
use serde_json::{Value, json};

/// A county no network has: naming it fails `street_county`.
const NO_COUNTY: i64 = 424_242;

/// Open failures in four groups:
/// - network A, `validation_failed:street_county`: `a-county-0..3`;
/// - network A, `validation_failed:street_county,street_zip_code`: `a-both-0..2`;
/// - network B, `validation_failed:street_county`: `b-county-0`;
/// - no network, `unauthorized`: `wrong-0..2` (a token nobody has).
async fn seed_failures(env: &TestEnv) {
    let county = with(seed_of(&env.a), "street_county", json!(NO_COUNTY));
    let both = with(county.clone(), "street_zip_code", json!("not a zip"));
    for i in 0..3 {
        process_as(env, &format!("a-county-{i}"), &env.a, &county).await;
    }
    for i in 0..2 {
        process_as(env, &format!("a-both-{i}"), &env.a, &both).await;
    }
    let b_county = with(seed_of(&env.b), "street_county", json!(NO_COUNTY));
    process_as(env, "b-county-0", &env.b, &b_county).await;
    let wrong: Vec<_> = (0..2)
        .map(|i| env.envelope(&format!("wrong-{i}"), Some("nobody's"), &seed_of(&env.a)))
        .collect();
    env.process(&wrong).await;
}

/// How many rows the outbox, the cases and the resolved failed intakes hold: what a dry run
/// must leave as it was.
async fn written(env: &TestEnv) -> [i64; 3] {
    [
        env.scalar_i64("SELECT count(*) FROM outbox").await,
        env.scalar_i64("SELECT count(*) FROM cases").await,
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NOT NULL")
            .await,
    ]
}

/// The message keys `failed list` prints as JSON for `args`.
async fn listed_keys(env: &TestEnv, args: &[&str]) -> Vec<String> {
    let mut all = vec!["failed", "list", "--json"];
    all.extend_from_slice(args);
    let rows = json_of(&run(env, &all).await);
    let mut keys: Vec<String> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["message_key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn groups_count_open_failures_by_network_code_and_fields() {
    let env = TestEnv::new().await;
    seed_failures(&env).await;
    let (a, b) = (env.a.network_id, env.b.network_id);

    let all = groups::groups(&env.pool, None).await.unwrap();
    let seen: Vec<(Option<i64>, &str, &str, i64, &str)> = all
        .iter()
        .map(|g| {
            let (code, fields) = (g.code.as_str(), g.fields.as_str());
            (g.network, code, fields, g.count, g.label.as_str())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                Some(a),
                "validation_failed",
                "street_county",
                3,
                "validation_failed:street_county"
            ),
            (None, "unauthorized", "", 2, "unauthorized"),
            (
                Some(a),
                "validation_failed",
                "street_county,street_zip_code",
                2,
                "validation_failed:street_county,street_zip_code"
            ),
            (
                Some(b),
                "validation_failed",
                "street_county",
                1,
                "validation_failed:street_county"
            ),
        ]
    );
    // Each failure is in one group: the counts add up to the open failures.
    let open = env
        .scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NULL")
        .await;
    assert_eq!(all.iter().map(|g| g.count).sum::<i64>(), open);
    // First and last seen are the group's oldest and newest failure.
    let (first, last): (chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as(
            "SELECT min(created_at), max(created_at) FROM failed_intakes
              WHERE message_key LIKE 'a-county-%'",
        )
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!((all[0].first_seen, all[0].last_seen), (first, last));
    assert!(first < last, "three windows, three times");

    // One network's groups, as the command prints them.
    let only_b = json_of(
        &run(
            &env,
            &["failed", "groups", "--network", &b.to_string(), "--json"],
        )
        .await,
    );
    assert_eq!(only_b.as_array().unwrap().len(), 1);
    assert_eq!(only_b[0]["count"], 1);
    assert_eq!(only_b[0]["label"], "validation_failed:street_county");
    let out = run(&env, &["failed", "groups"]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    let first_line = stdout.lines().next().unwrap();
    assert!(
        first_line.starts_with(&format!(
            "validation_failed · street_county · 3 · network {a} · first "
        )),
        "{stdout}"
    );
    assert!(
        first_line.ends_with("--group validation_failed:street_county"),
        "{stdout}"
    );
    assert!(text(&out.stderr).contains("4 group(s), 8 open failed intake(s)"));

    // Resolved failures leave their group.
    let none_left = Filter {
        code: Some("unauthorized".into()),
        ..Filter::default()
    };
    let who = Dismissal::new("ana", "test").unwrap();
    let ctx = supervisor::window_context(&env.settings);
    dismiss::dismiss(
        &env.pool,
        &ctx,
        &none_left,
        &who,
        options(None, false),
        |_| {},
    )
    .await
    .unwrap();
    let after = groups::groups(&env.pool, None).await.unwrap();
    assert_eq!(after.len(), 3);
    assert!(after.iter().all(|g| g.code != "unauthorized"));
    env.cleanup().await;
}

fn options(rate: Option<u32>, dry_run: bool) -> BulkOptions {
    BulkOptions {
        window_size: 200,
        rate,
        dry_run,
    }
}

#[tokio::test]
async fn a_group_label_selects_exactly_its_rows_and_dry_runs_write_nothing() {
    let env = TestEnv::new().await;
    seed_failures(&env).await;
    let a = env.a.network_id.to_string();

    assert_eq!(
        listed_keys(&env, &["--group", "validation_failed:street_county"]).await,
        ["a-county-0", "a-county-1", "a-county-2", "b-county-0"]
    );
    assert_eq!(
        listed_keys(
            &env,
            &[
                "--group",
                "validation_failed:street_county",
                "--network",
                &a
            ]
        )
        .await,
        ["a-county-0", "a-county-1", "a-county-2"]
    );
    assert_eq!(
        listed_keys(
            &env,
            &["--group", "validation_failed:street_county,street_zip_code"]
        )
        .await,
        ["a-both-0", "a-both-1"]
    );
    assert_eq!(
        listed_keys(&env, &["--group", "unauthorized"]).await,
        ["wrong-0", "wrong-1"]
    );
    // The code part is checked before anything connects; --group and --code exclude each other.
    let out = run(&env, &["failed", "list", "--group", "no_such_code:x"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(text(&out.stderr).contains("not an error code"), "{out:?}");
    let out = run(
        &env,
        &[
            "failed",
            "list",
            "--group",
            "unauthorized",
            "--code",
            "unauthorized",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The missing county now exists in network A: a dry run of A's county group would create
    // its three cases; a dry run of the two-field group would fail again.
    sqlx::query("INSERT INTO counties (id, network_id, name) VALUES ($1, $2, 'Late County')")
        .bind(NO_COUNTY)
        .bind(env.a.network_id)
        .execute(&env.pool)
        .await
        .unwrap();
    let before = written(&env).await;
    let group = [
        "--group",
        "validation_failed:street_county",
        "--network",
        &a,
    ];
    let dry = json_of(
        &run(
            &env,
            &[&["replay", "--dry-run", "--json"][..], &group].concat(),
        )
        .await,
    );
    assert_eq!(
        (dry["selected"].as_i64(), dry["created"].as_i64()),
        (Some(3), Some(3))
    );
    assert_eq!(dry["dry_run"], true);
    let dry = json_of(
        &run(
            &env,
            &[
                "replay",
                "--dry-run",
                "--json",
                "--group",
                "validation_failed:street_county,street_zip_code",
            ],
        )
        .await,
    );
    assert_eq!(
        (dry["selected"].as_i64(), dry["failed"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(dry["failed_by_code"], json!({"validation_failed": 2}));
    let dry = json_of(
        &run_with(
            &env,
            &[
                "failed",
                "dismiss",
                "--group",
                "unauthorized",
                "--reason",
                "r",
                "--dry-run",
                "--json",
            ],
            &[("USER", "ana")],
        )
        .await,
    );
    assert_eq!(
        (dry["selected"].as_i64(), dry["dismissed"].as_i64()),
        (Some(2), Some(2))
    );
    assert_eq!(written(&env).await, before, "dry runs wrote nothing");

    // The real replay, throttled to 2 a second: batches of 2 and 1, a progress line each.
    let out = run(
        &env,
        &[
            &["replay", "--rate", "2", "--operator", "bo", "--json"][..],
            &group,
        ]
        .concat(),
    )
    .await;
    let report = json_of(&out);
    assert_eq!(
        (report["selected"].as_i64(), report["created"].as_i64()),
        (Some(3), Some(3))
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("at most 2/s: 2 batch(es) of at most 2"),
        "{stderr}"
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("replayed "))
        .collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(lines[0].starts_with("replayed 2 of 3") && lines[1].starts_with("replayed 3 of 3"));
    let resolved: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT message_key, resolution, resolved_by FROM failed_intakes
          WHERE resolved_at IS NOT NULL ORDER BY message_key",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let replayed = |k: &str| (k.to_owned(), "replayed".to_owned(), Some("bo".to_owned()));
    assert_eq!(
        resolved,
        [
            replayed("a-county-0"),
            replayed("a-county-1"),
            replayed("a-county-2")
        ]
    );
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 3);
    env.cleanup().await;
}

#[tokio::test]
async fn rate_limited_runs_report_progress_once_per_batch() {
    let env = TestEnv::new().await;
    seed_failures(&env).await;
    let ctx = supervisor::window_context(&env.settings);
    let every = Filter::default();

    // A dry replay of all eight at 3 a second: batches of 3, 3, 2.
    let mut seen = Vec::new();
    let r = failed::replay_with(&env.pool, &ctx, &every, options(Some(3), true), None, |r| {
        seen.push(r.selected)
    })
    .await
    .unwrap();
    assert_eq!(seen, [3, 6, 8]);
    assert_eq!((r.selected, r.failed, r.dry_run), (8, 8, true));
    assert_eq!(
        r.failed_by_code,
        [("unauthorized", 2), ("validation_failed", 6)]
            .into_iter()
            .collect()
    );

    // Dismissing A's five at 2 a second: batches of 2, 2, 1.
    let of_a = Filter {
        network: Some(env.a.network_id),
        ..Filter::default()
    };
    let who = Dismissal::new("ana", "closing network A's test data").unwrap();
    let mut seen = Vec::new();
    let r = dismiss::dismiss(&env.pool, &ctx, &of_a, &who, options(Some(2), false), |r| {
        seen.push(r.dismissed)
    })
    .await
    .unwrap();
    assert_eq!(seen, [2, 4, 5]);
    assert_eq!((r.selected, r.dismissed, r.already_resolved), (5, 5, 0));
    env.cleanup().await;
}

/// A dismissed row: key, failure event, attempts, resolution, by, reason, resolving event.
type DismissedRow = (
    String,
    uuid::Uuid,
    i32,
    String,
    String,
    String,
    Option<uuid::Uuid>,
);

#[tokio::test]
async fn a_dismissal_is_recorded_kept_and_announced_through_the_relay() {
    let env = TestEnv::new().await;
    seed_failures(&env).await;
    let mut broker = Broker::connect(&env).await;
    broker.declare_topology(&env).await;
    let worker = RunningWorker::start(&env.settings);

    let out = run_with(
        &env,
        &[
            "failed",
            "dismiss",
            "--group",
            "unauthorized",
            "--reason",
            "sender retired",
            "--json",
        ],
        &[("CASE_INTAKE_OPERATOR", "ops-ana"), ("USER", "ana")],
    )
    .await;
    let report = json_of(&out);
    assert_eq!(
        (report["dismissed"].as_i64(), report["dry_run"].as_bool()),
        (Some(2), Some(false))
    );

    // Kept, resolved as dismissed, with who and why.
    let rows: Vec<DismissedRow> = sqlx::query_as(
        "SELECT message_key, event_id, attempts, resolution, resolved_by, resolution_reason,
                resolved_event_id
           FROM failed_intakes WHERE error_code = 'unauthorized' ORDER BY message_key",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (key, _, _, how, by, why, eid) in &rows {
        assert_eq!(
            (how.as_str(), by.as_str(), why.as_str()),
            ("dismissed", "ops-ana", "sender retired"),
            "{key}"
        );
        assert_eq!(*eid, None);
    }
    // Nothing else was touched.
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NOT NULL")
            .await,
        2
    );

    // One case.intake_resolved event per dismissed failure reaches the events exchange.
    let mut announced = Vec::new();
    while announced.len() < 2 {
        let (routing_key, props, event) = broker.next_event().await;
        if event["type"] == "case.intake_resolved" {
            announced.push((routing_key, props, event));
        }
    }
    announced.sort_by_key(|(_, _, e)| e["subject"].as_str().unwrap().to_owned());
    for ((routing_key, props, event), (key, failed_event, attempts, ..)) in
        announced.iter().zip(&rows)
    {
        assert_eq!(routing_key, &env.settings.amqp.resolved_routing_key);
        assert_eq!(
            props.correlation_id().as_ref().map(|c| c.to_string()),
            Some(format!("corr-{key}"))
        );
        assert_eq!(
            event["data"],
            json!({
                "message_key": key,
                "resolution": "dismissed",
                "failed_event_id": failed_event,
                "attempt": attempts,
                "event_id": null,
                "case_id": null,
                "household_id": null,
            })
        );
        assert!(
            !event.to_string().contains("sender retired"),
            "the reason is not published"
        );
    }
    worker.stop().await;

    // The key's recorded outcome is unchanged: the same intake answers the recorded failure.
    let again = env
        .process(&[env.envelope("wrong-0", Some("nobody's"), &seed_of(&env.a))])
        .await;
    assert_eq!(
        again[0],
        Outcome::Duplicate {
            event_id: rows[0].1
        }
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_dismissal_without_a_reason_or_an_operator_is_refused() {
    let env = TestEnv::new().await;
    seed_failures(&env).await;
    let dismiss = ["failed", "dismiss", "--group", "unauthorized", "--yes"];

    let out = run_with(&env, &dismiss, &[("USER", "ana")]).await;
    assert_eq!(out.status.code(), Some(2), "no --reason: {out:?}");
    assert!(text(&out.stderr).contains("--reason"), "{out:?}");
    let out = run_with(
        &env,
        &[&dismiss[..], &["--reason", "  "]].concat(),
        &[("USER", "ana")],
    )
    .await;
    assert!(!out.status.success(), "a blank reason: {out:?}");
    assert!(text(&out.stderr).contains("1 to 500"), "{out:?}");
    let long = "x".repeat(501);
    let out = run_with(
        &env,
        &[&dismiss[..], &["--reason", &long]].concat(),
        &[("USER", "ana")],
    )
    .await;
    assert!(!out.status.success(), "a reason too long: {out:?}");
    let out = run(&env, &[&dismiss[..], &["--reason", "why"]].concat()).await;
    assert!(!out.status.success(), "no operator: {out:?}");
    assert!(text(&out.stderr).contains("no operator"), "{out:?}");
    // Nothing without a selection either.
    let out = run_with(
        &env,
        &["failed", "dismiss", "--reason", "why"],
        &[("USER", "ana")],
    )
    .await;
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("--all"), "{out:?}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NOT NULL")
            .await,
        0
    );
    // With both, it goes through (LOGNAME is the last resort for the operator).
    let out = run_with(
        &env,
        &[&dismiss[..], &["--reason", "why"]].concat(),
        &[("LOGNAME", "al")],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_by = 'al'")
            .await,
        2
    );
    env.cleanup().await;
}

/// A dismissed failure has one resolution. Its sender's corrected body is still the key's
/// next attempt (the case is created, its `case.created` names the failure it supersedes),
/// but it announces no second `case.intake_resolved` for that failure, and the failure stays
/// `dismissed`: the failure's story ends at the dismissal, the key's goes on to its case.
#[tokio::test]
async fn a_resend_after_a_dismissal_creates_the_case_without_a_second_resolution() {
    let env = TestEnv::new().await;
    let county = with(seed_of(&env.a), "street_county", json!(NO_COUNTY));
    process_as(&env, "gone-0", &env.a, &county).await;
    let (failed_id, failed_event): (i64, uuid::Uuid) =
        sqlx::query_as("SELECT id, event_id FROM failed_intakes WHERE message_key = 'gone-0'")
            .fetch_one(&env.pool)
            .await
            .unwrap();

    let only = Filter {
        key: Some("gone-0".into()),
        ..Filter::default()
    };
    let who = Dismissal::new("ana", "entered by hand").unwrap();
    let ctx = supervisor::window_context(&env.settings);
    let r = dismiss::dismiss(&env.pool, &ctx, &only, &who, options(None, false), |_| {})
        .await
        .unwrap();
    assert_eq!(r.dismissed, 1);

    let corrected = seed_of(&env.a);
    let created = process_as(&env, "gone-0", &env.a, &corrected).await;
    let Outcome::Created { event_id, .. } = created else {
        panic!("a corrected body after a dismissal creates the case: {created:?}");
    };
    let ev = case_intake_harness::testkit::event_of(&env, "gone-0", env.a.network_id).await;
    assert_eq!(ev["id"], json!(event_id.to_string()));
    assert_eq!(
        ev["data"]["replay"],
        json!({"how": "resent", "replayed": true, "attempt": 2, "supersedes_event_id": failed_event})
    );

    // Exactly one resolution announced for the failure: the dismissal.
    let resolutions: Vec<Value> = sqlx::query_scalar(
        "SELECT body FROM outbox
          WHERE routing_key = $1 AND body->'data'->>'failed_event_id' = $2 ORDER BY id",
    )
    .bind(&env.settings.amqp.resolved_routing_key)
    .bind(failed_event.to_string())
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let how: Vec<&str> = resolutions
        .iter()
        .map(|b| b["data"]["resolution"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(how, ["dismissed"], "{resolutions:?}");

    // The failure stays as the operator left it.
    let (resolution, by, eid): (String, String, Option<uuid::Uuid>) = sqlx::query_as(
        "SELECT resolution, resolved_by, resolved_event_id FROM failed_intakes WHERE id = $1",
    )
    .bind(failed_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (resolution.as_str(), by.as_str(), eid),
        ("dismissed", "ana", None)
    );

    // The key's status is its case, made by attempt 2.
    let out = run(&env, &["status", "gone-0", "--json"]).await;
    let status = json_of(&out);
    let status = if status.is_array() {
        status[0].clone()
    } else {
        status
    };
    assert_eq!(
        (status["status"].as_str(), status["attempt"].as_i64()),
        (Some("created"), Some(2)),
        "{status}"
    );
    env.cleanup().await;
}
