//! Issue 14's acceptance test: an operator clears a realistic backlog — thousands of failed
//! intakes of three causes, one of which needs a body fix — with the command line alone.
//!
//! The backlog (network A): 1000 `unauthorized` (the agent was deactivated: fixed by
//! reactivating it and replaying the group), 1000 `validation_failed · street_county` naming a
//! county that does not exist (fixed by a bulk `failed edit` of the group), 500
//! `malformed_json` junk from a retired test sender, published through the broker to a worker
//! (dismissed). Every operator step runs the binary; dry runs first, writing nothing.

use case_intake_harness::wait::{SETTLE, until};
use std::collections::BTreeSet;
use std::process::Output;

use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{broker_and_worker, failed_count, publish_as, seed_of, with};
use serde_json::{Value, json};

/// A county id that exists in no network.
const NO_COUNTY: i64 = 424_242;
const UNAUTHORIZED: usize = 1000;
const BAD_COUNTY: usize = 1000;
const JUNK: usize = 500;
/// The operator who clears the backlog.
const OPERATOR: &str = "ops-ana";

/// The binary run against `env`'s database, stdin not a terminal, no operator in the
/// environment (each step names one).
async fn cli(env: &TestEnv, args: &[&str]) -> Output {
    crate::cli::run(env, args).await
}

/// The JSON a successful step printed.
async fn step(env: &TestEnv, args: &[&str]) -> Value {
    let out = cli(env, args).await;
    let shown = || {
        format!(
            "{args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(out.status.success(), "{}", shown());
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("JSON of {}", shown()))
}

/// Processes `n` intakes of `body` under `prefix-0..n` with `token`, in windows of 200, as the
/// worker would.
async fn fail_in_windows(env: &TestEnv, prefix: &str, n: usize, token: &str, body: &Value) {
    let keys: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    for chunk in keys.chunks(200) {
        let envelopes: Vec<_> = chunk
            .iter()
            .map(|k| env.envelope(k, Some(token), body))
            .collect();
        env.process(&envelopes).await;
    }
}

/// The backlog: the bad-county and unauthorized failures through windows, the junk through
/// the broker and a worker, which is then stopped (so the events the operator's steps queue
/// stay in the outbox to be counted).
async fn build_backlog(env: &TestEnv) {
    let bad_county = with(seed_of(&env.a), "street_county", json!(NO_COUNTY));
    fail_in_windows(env, "county", BAD_COUNTY, &env.a.token, &bad_county).await;

    let (broker, worker) = broker_and_worker(env).await;
    for i in 0..JUNK {
        let junk = format!("{{\"first_name\": \"test sender {i}\", ");
        publish_as(
            &broker,
            &env.a.token,
            Some(&format!("junk-{i}")),
            None,
            junk.as_bytes(),
        )
        .await;
    }
    // The worker records them as they come; wait for all of them.
    until(
        "every junk intake recorded malformed_json",
        SETTLE,
        || async { failed_count(env, "malformed_json").await == JUNK as i64 },
    )
    .await;
    worker.stop().await;

    // The agent is deactivated (by mistake): its valid intakes fail `unauthorized`.
    let agent = env.a.agent_id.to_string();
    step(env, &["agent", "deactivate", &agent, "--json"]).await;
    fail_in_windows(env, "auth", UNAUTHORIZED, &env.a.token, &seed_of(&env.a)).await;
}

/// What the operator's steps write: open failures, outbox rows, cases, audit rows, outcomes.
async fn footprint(env: &TestEnv) -> [i64; 5] {
    [
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NULL")
            .await,
        env.scalar_i64("SELECT count(*) FROM outbox").await,
        env.scalar_i64("SELECT count(*) FROM cases").await,
        env.scalar_i64("SELECT count(*) FROM failed_intake_edits")
            .await,
        env.scalar_i64("SELECT count(*) FROM intake_outcomes").await,
    ]
}

/// The groups `failed groups --json` prints: (network, label, count), sorted.
async fn groups(env: &TestEnv) -> Vec<(Option<i64>, String, i64)> {
    let shown = step(env, &["failed", "groups", "--json"]).await;
    let mut groups: Vec<_> = shown
        .as_array()
        .expect("an array")
        .iter()
        .map(|g| {
            let label = g["label"].as_str().expect("a label").to_owned();
            (g["network"].as_i64(), label, g["count"].as_i64().unwrap())
        })
        .collect();
    groups.sort();
    groups
}

/// (selected, created, failed, skipped) of a replay's or bulk edit's report.
fn totals(r: &Value) -> [i64; 4] {
    ["selected", "created", "failed", "skipped"].map(|k| r[k].as_i64().expect(k))
}

#[tokio::test]
async fn an_operator_clears_a_backlog_of_three_causes_with_the_cli() {
    let env = TestEnv::new().await;
    build_backlog(&env).await;
    let a = env.a.network_id;
    let a_text = a.to_string();
    let mut expected = vec![
        (None, "unauthorized".to_owned(), UNAUTHORIZED as i64),
        (Some(a), "malformed_json".to_owned(), JUNK as i64),
        (
            Some(a),
            "validation_failed:street_county".to_owned(),
            BAD_COUNTY as i64,
        ),
    ];
    expected.sort();
    assert_eq!(groups(&env).await, expected);

    // Dry runs first: what each step would come to, nothing written. While the agent is
    // inactive a replay would fail again.
    let before = footprint(&env).await;
    let agent = env.a.agent_id.to_string();
    let replay = ["replay", "--group", "unauthorized"];
    let dry_replay = [&replay[..], &["--dry-run", "--json"]].concat();
    let dry = step(&env, &dry_replay).await;
    assert_eq!(totals(&dry), [1000, 0, 1000, 0], "{dry}");
    assert_eq!(dry["failed_by_code"], json!({"unauthorized": 1000}));
    // (a) The agent active again (a change to the agent only): the replay would create.
    step(&env, &["agent", "reactivate", &agent, "--json"]).await;
    let dry = step(&env, &dry_replay).await;
    assert_eq!(totals(&dry), [1000, 1000, 0, 0], "{dry}");
    let county = format!("street_county:={}", env.a.county_ids[0]);
    let edit = [
        "failed",
        "edit",
        "--group",
        "validation_failed:street_county",
        "--network",
        &a_text,
        "--set",
        &county,
    ];
    let dry = step(&env, &[&edit[..], &["--dry-run", "--json"]].concat()).await;
    assert_eq!(totals(&dry), [1000, 1000, 0, 0], "{dry}");
    assert_eq!(dry["dry_run"], true);
    // The junk cannot be edited field by field: skipped, each id listed, no payload shown.
    let junk_edit = [
        "failed",
        "edit",
        "--group",
        "malformed_json",
        "--set",
        "x=y",
    ];
    let dry = step(&env, &[&junk_edit[..], &["--dry-run", "--json"]].concat()).await;
    assert_eq!(totals(&dry), [500, 0, 0, 500], "{dry}");
    assert_eq!(dry["skipped_ids"].as_array().map(Vec::len), Some(JUNK));
    assert!(!dry.to_string().contains("test sender"), "{dry}");
    let dismiss = [
        "failed",
        "dismiss",
        "--group",
        "malformed_json",
        "--reason",
        "junk from the retired test sender",
    ];
    let dry_dismiss = [
        &dismiss[..],
        &["--dry-run", "--operator", OPERATOR, "--json"],
    ];
    let dry = step(&env, &dry_dismiss.concat()).await;
    assert_eq!(dry["dismissed"], 500, "{dry}");
    assert_eq!(footprint(&env).await, before, "the dry runs wrote nothing");

    // The fixes. (a) The unauthorized group replayed.
    let who = ["--yes", "--operator", OPERATOR, "--json"];
    let r = step(&env, &[&replay[..], &who].concat()).await;
    assert_eq!(totals(&r), [1000, 1000, 0, 0], "{r}");
    // (b) The body fix, for the whole group at once.
    let r = step(&env, &[&edit[..], &who].concat()).await;
    assert_eq!(totals(&r), [1000, 1000, 0, 0], "{r}");
    assert_eq!(r["skipped_ids"], json!([]));
    assert_eq!(r["fields_set"], json!(["street_county"]));
    // (c) The junk dismissed, throttled (a rate high enough to keep the test short).
    let r = step(&env, &[&dismiss[..], &["--rate", "5000"], &who].concat()).await;
    assert_eq!(r["dismissed"], 500, "{r}");

    assert_eq!(groups(&env).await, [], "no open failure remains");
    assert_cleared(&env).await;
    env.cleanup().await;
}

/// After the steps: one case per fixed key, every failure resolved as fixed and by whom, one
/// `case.intake_resolved` event per resolved failure, an audit row per edited failure.
async fn assert_cleared(env: &TestEnv) {
    let cases: (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT case_id) FROM intake_outcomes
          WHERE network_id = $1 AND outcome = 'created'
            AND (message_key LIKE 'auth-%' OR message_key LIKE 'county-%')",
    )
    .bind(env.a.network_id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(cases, (2000, 2000));
    assert_eq!(env.scalar_i64("SELECT count(*) FROM cases").await, 2000);
    env.assert_household_invariant().await;

    let resolved: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT split_part(message_key, '-', 1), resolution || ' by ' || resolved_by,
                count(*), count(resolution_reason)
           FROM failed_intakes GROUP BY 1, 2 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let by = |how: &str| format!("{how} by {OPERATOR}");
    assert_eq!(
        resolved,
        [
            ("auth".into(), by("replayed"), 1000, 0),
            ("county".into(), by("edited"), 1000, 0),
            ("junk".into(), by("dismissed"), 500, 500),
        ]
    );

    // The operator's steps ran without a relay: their events wait in the outbox, one
    // announcement per resolved failure.
    let announced: Vec<String> = sqlx::query_scalar(
        "SELECT body->'data'->>'failed_event_id' FROM outbox WHERE routing_key = $1",
    )
    .bind(&env.settings.amqp.resolved_routing_key)
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let failures: Vec<String> = sqlx::query_scalar(
        "SELECT event_id::text FROM failed_intakes WHERE resolved_at IS NOT NULL",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(announced.len(), failures.len());
    let announced: BTreeSet<String> = announced.into_iter().collect();
    assert_eq!(announced, failures.into_iter().collect::<BTreeSet<_>>());

    let audits: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT e.failed_intake_id),
                count(*) FILTER (WHERE e.operator = $1 AND e.outcome = 'created'
                                   AND e.fields_set = ARRAY['street_county']
                                   AND e.event_id = f.resolved_event_id)
           FROM failed_intake_edits e JOIN failed_intakes f ON f.id = e.failed_intake_id
          WHERE f.resolution = 'edited'",
    )
    .bind(OPERATOR)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(audits, (1000, 1000, 1000));
}
