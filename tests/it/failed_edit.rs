//! `case-intake failed edit` as an operator runs it: the binary against a private database,
//! a dry run that writes nothing, a real edit that runs as the key's next attempt (resolved
//! `edited`, audited in the same transaction, announced through the relay), an edit that fails
//! again, `--unset`, `--body`, the refusals, and the edit of a selection (a row per attempt and
//! audit, rows it cannot apply to skipped and listed).

use std::process::Output;

use case_intake::domain::error::ErrorCode;
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{
    broker_and_worker, failed as failed_code, process_as, run_cli, seed_of, to_bytes, with,
};
use serde_json::{Value, json};

/// A county id that exists in no network.
const NO_COUNTY: i64 = 424_242;

/// Runs the binary against `env`'s database with no operator in its environment (unless
/// `vars` gives one), `stdin` as its input.
async fn run_with(env: &TestEnv, args: &[&str], vars: &[(&str, &str)], stdin: &[u8]) -> Output {
    run_cli(crate::cli::BIN, env, args, vars, stdin).await
}

async fn run(env: &TestEnv, args: &[&str]) -> Output {
    run_with(env, args, &[], b"").await
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn report(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| panic!("JSON: {}", text(out)))
}

/// A failed intake of network A under `key`: the seed body naming a county that does not
/// exist (plus `extra` fields).
async fn failure(env: &TestEnv, key: &str, extra: &[(&str, Value)]) {
    let mut body = with(seed_of(&env.a), "street_county", json!(NO_COUNTY));
    for (field, value) in extra {
        body = with(body, field, value.clone());
    }
    let out = process_as(env, key, &env.a, &body).await;
    assert_eq!(failed_code(&out), ErrorCode::ValidationFailed);
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Rows that an edit writes: open failures, outbox rows, cases, audit rows.
async fn footprint(env: &TestEnv) -> [i64; 4] {
    [
        count(
            env,
            "SELECT count(*) FROM failed_intakes WHERE resolved_at IS NULL",
        )
        .await,
        count(env, "SELECT count(*) FROM outbox").await,
        count(env, "SELECT count(*) FROM cases").await,
        count(env, "SELECT count(*) FROM failed_intake_edits").await,
    ]
}

/// (resolution, resolved_by, resolved_event_id) of failed intake attempt `attempt` of `key`.
async fn resolution_of(
    env: &TestEnv,
    key: &str,
    attempt: i32,
) -> (Option<String>, Option<String>, Option<uuid::Uuid>) {
    sqlx::query_as(
        "SELECT resolution, resolved_by, resolved_event_id FROM failed_intakes
          WHERE message_key = $1 AND attempts = $2",
    )
    .bind(key)
    .bind(attempt)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The audit rows of `key` as JSON text (every column), oldest first.
async fn audit_rows(env: &TestEnv, key: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT to_jsonb(e) FROM failed_intake_edits e WHERE message_key = $1 ORDER BY id",
    )
    .bind(key)
    .fetch_all(&env.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_dry_run_shows_the_error_or_the_placement_and_writes_nothing() {
    let env = TestEnv::new().await;
    failure(&env, "dry", &[]).await;
    let before = footprint(&env).await;

    // Still a county of no network: the field error, as the attempt would record it.
    let bad = format!("street_county:={}", NO_COUNTY + 1);
    let args = ["failed", "edit", "dry", "--set", &bad, "--dry-run"];
    let out = run(&env, &args).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("validation_failed"), "{shown}");
    assert!(shown.contains("street_county"), "{shown}");
    assert!(shown.contains("nothing was written"), "{shown}");

    // A county of the network: the placement the case would get.
    let good = format!("street_county:={}", env.a.county_ids[0]);
    let args = [
        "failed",
        "edit",
        "dry",
        "--set",
        &good,
        "--dry-run",
        "--json",
    ];
    let r = report(&run(&env, &args).await);
    assert_eq!(r["dry_run"], true);
    assert_eq!(r["ids_illustrative"], true);
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["attempt"], 2);
    assert_eq!(r["fields_set"], json!(["street_county"]));
    assert_eq!(r["case"]["household_created"], true, "{r}");
    assert_eq!(r["case"]["head_of_household"], true);
    assert!(r["case"]["household_id"].is_i64(), "{r}");
    assert!(r["case"]["case_id"].is_i64(), "{r}");
    assert_eq!(r["case"]["previous_head_case_id"], Value::Null);
    let args = ["failed", "edit", "dry", "--set", &good, "--dry-run"];
    let shown = text(&run(&env, &args).await);
    assert!(shown.contains("illustrative"), "{shown}");

    // No operator was needed, and nothing was written: the row is open, no outbox row, no
    // case, no audit row.
    assert_eq!(footprint(&env).await, before);
    assert_eq!(resolution_of(&env, "dry", 1).await, (None, None, None));
    env.cleanup().await;
}

#[tokio::test]
async fn an_edit_creates_the_case_resolves_audits_and_announces_it() {
    let env = TestEnv::new().await;
    let (mut broker, worker) = broker_and_worker(&env).await;
    failure(&env, "fix-me", &[]).await;

    let county = format!("street_county:={}", env.a.county_ids[0]);
    let args = [
        "failed",
        "edit",
        "fix-me",
        "--set",
        &county,
        "--set",
        "ss_number=345-67-8912",
        "--json",
    ];
    let out = run_with(&env, &args, &[("CASE_INTAKE_OPERATOR", "alice")], b"").await;
    let r = report(&out);
    assert_eq!(r["dry_run"], false);
    assert_eq!(r["outcome"], "created", "{r}");
    assert_eq!(r["operator"], "alice");
    let case_id = r["case"]["case_id"].as_i64().expect("a case id");
    let event_id: uuid::Uuid = r["event_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(count(&env, "SELECT count(*) FROM cases").await, 1);

    // The row is resolved by the edit, by its operator, with the attempt's event.
    let resolved = resolution_of(&env, "fix-me", 1).await;
    assert_eq!(
        resolved,
        (Some("edited".into()), Some("alice".into()), Some(event_id))
    );
    let audit = audit_rows(&env, "fix-me").await;
    assert_eq!(audit.len(), 1);
    let a = &audit[0];
    assert_eq!(a["operator"], "alice");
    assert_eq!(a["fields_set"], json!(["street_county", "ss_number"]));
    assert_eq!(a["fields_unset"], json!([]));
    assert_eq!(a["body_replaced"], false);
    assert_eq!(a["outcome"], "created");
    assert_eq!(a["event_id"], event_id.to_string());
    assert_eq!(a["network_id"], env.a.network_id);
    // No SSN digits, old or new, in the audit or the output.
    let seen = format!("{a}{}", text(&out));
    for digits in ["345-67", "34567", "67-8912", "111223333", "11122"] {
        assert!(!seen.contains(digits), "{digits} in {seen}");
    }

    // The relay of the running worker publishes the announcement of the resolution.
    let announced = loop {
        let (routing_key, _, ev) = broker.next_event_for("fix-me").await;
        if ev["type"] == "case.intake_resolved" {
            assert_eq!(routing_key, env.settings.amqp.resolved_routing_key);
            break ev;
        }
    };
    assert_eq!(announced["data"]["resolution"], "edited");
    assert_eq!(announced["data"]["case_id"], case_id);
    assert_eq!(announced["data"]["attempt"], 2);
    assert_eq!(announced["data"]["event_id"], event_id.to_string());

    // Nothing is left to edit.
    let out = run_with(&env, &args, &[("CASE_INTAKE_OPERATOR", "alice")], b"").await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no open failed intake"),
        "{}",
        text(&out)
    );
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_edit_that_fails_again_records_the_next_attempt() {
    let env = TestEnv::new().await;
    failure(&env, "again", &[]).await;
    let args = [
        "failed",
        "edit",
        "again",
        "--unset",
        "last_name",
        "--operator",
        "bob",
    ];
    let out = run(&env, &args).await;
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(shown.contains("failed: validation_failed"), "{shown}");
    assert!(shown.contains("last_name"), "{shown}");
    assert!(shown.contains("street_county"), "{shown}");

    // The old row is resolved 'edited'; attempt 2 is the open failure now.
    assert_eq!(
        resolution_of(&env, "again", 1).await.0.as_deref(),
        Some("edited")
    );
    assert_eq!(resolution_of(&env, "again", 2).await.0, None);
    let audit = audit_rows(&env, "again").await;
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["outcome"], "failed");
    assert_eq!(audit[0]["fields_set"], json!([]));
    assert_eq!(audit[0]["fields_unset"], json!(["last_name"]));
    assert_eq!(audit[0]["operator"], "bob");

    // Attempt 2 is edited in turn (the operator from $USER), as attempt 3.
    let county = format!("street_county:={}", env.a.county_ids[0]);
    let args = [
        "failed",
        "edit",
        "again",
        "--set",
        &county,
        "--set",
        "last_name=Smith",
        "--json",
    ];
    let r = report(&run_with(&env, &args, &[("USER", "carol")], b"").await);
    assert_eq!(
        (r["outcome"].as_str(), r["attempt"].as_i64()),
        (Some("created"), Some(3))
    );
    assert_eq!(
        resolution_of(&env, "again", 2).await.1.as_deref(),
        Some("carol")
    );
    assert_eq!(audit_rows(&env, "again").await.len(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn a_body_replaces_the_payload_from_stdin_or_a_file() {
    let env = TestEnv::new().await;
    failure(&env, "by-stdin", &[]).await;
    failure(&env, "by-file", &[]).await;
    let good = to_bytes(&seed_of(&env.a));

    let args = [
        "failed",
        "edit",
        "by-stdin",
        "--body",
        "-",
        "--operator",
        "dan",
        "--json",
    ];
    let r = report(&run_with(&env, &args, &[], &good).await);
    assert_eq!(r["outcome"], "created");
    assert_eq!(r["body_replaced"], true);
    let audit = audit_rows(&env, "by-stdin").await;
    assert_eq!(audit[0]["body_replaced"], true);
    assert_eq!(audit[0]["fields_set"], json!([]));

    // From a file: a body that is not even JSON fails again, as the attempt would.
    let path = std::env::temp_dir().join(format!("edit-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&path, b"not json").unwrap();
    let file = path.to_str().unwrap();
    let args = [
        "failed",
        "edit",
        "by-file",
        "--body",
        file,
        "--operator",
        "dan",
        "--json",
    ];
    let r = report(&run(&env, &args).await);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(r["outcome"], "failed");
    assert_eq!(r["error"]["code"], "malformed_json");
    assert_eq!(audit_rows(&env, "by-file").await[0]["outcome"], "failed");
    env.cleanup().await;
}

#[tokio::test]
async fn conflicting_options_and_a_missing_operator_are_refused() {
    let env = TestEnv::new().await;
    failure(&env, "refused", &[]).await;
    let before = footprint(&env).await;
    let refusals: [(&[&str], i32); 5] = [
        // --body with --set or --unset, and no change at all: refused by the parser.
        (&["--body", "-", "--set", "ss_number=123-45-6789"], 2),
        (&["--body", "-", "--unset", "email"], 2),
        (&[], 2),
        // A field both set and unset.
        (&["--set", "email=a@b.org", "--unset", "email"], 1),
        // No operator anywhere.
        (&["--set", "email=a@b.org"], 1),
    ];
    for (extra, code) in refusals {
        let mut args = vec!["failed", "edit", "refused"];
        args.extend_from_slice(extra);
        let out = run(&env, &args).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
        assert!(!text(&out).contains("6789"), "{}", text(&out));
    }
    let out = run(
        &env,
        &["failed", "edit", "refused", "--set", "email=a@b.org"],
    )
    .await;
    assert!(text(&out).contains("--operator"), "{}", text(&out));
    assert_eq!(footprint(&env).await, before, "nothing was written");
    env.cleanup().await;
}

#[tokio::test]
async fn the_failure_edited_is_the_open_one_of_its_network() {
    let env = TestEnv::new().await;
    // The same key failed in both networks.
    failure(&env, "shared", &[]).await;
    let body = with(seed_of(&env.b), "street_county", json!(NO_COUNTY));
    process_as(&env, "shared", &env.b, &body).await;
    let set = ["--set", "email=a@b.org", "--dry-run"];
    let mut args = vec!["failed", "edit", "shared"];
    args.extend_from_slice(&set);
    let out = run(&env, &args).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("--network"), "{}", text(&out));

    let b = env.b.network_id.to_string();
    args.extend_from_slice(&["--network", &b, "--json"]);
    let r = report(&run(&env, &args).await);
    assert_eq!(r["network_id"], env.b.network_id);

    // None open: a clear error.
    let out = run(
        &env,
        &["failed", "edit", "nothing", "--set", "a=b", "--dry-run"],
    )
    .await;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no open failed intake"),
        "{}",
        text(&out)
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_truncated_payload_is_edited_with_a_body_only() {
    let env = TestEnv::new().await;
    let mut env_big = env.envelope("big", Some(&env.a.token), &seed_of(&env.a));
    env_big.oversize = Some(case_intake::intake::envelope::Oversize {
        bytes: 10_000_000,
        sha256: [7; 32],
    });
    let out = env.process(&[env_big]).await;
    assert_eq!(failed_code(&out[0]), ErrorCode::PayloadTooLarge);

    let args = [
        "failed",
        "edit",
        "big",
        "--set",
        "email=a@b.org",
        "--dry-run",
    ];
    let out = run(&env, &args).await;
    assert!(!out.status.success());
    assert!(text(&out).contains("truncated"), "{}", text(&out));
    let good = to_bytes(&seed_of(&env.a));
    let args = [
        "failed",
        "edit",
        "big",
        "--body",
        "-",
        "--dry-run",
        "--json",
    ];
    let r = report(&run_with(&env, &args, &[], &good).await);
    assert_eq!(r["outcome"], "created");
    env.cleanup().await;
}

#[tokio::test]
async fn a_selection_is_edited_row_by_row_and_rows_it_cannot_apply_to_are_skipped() {
    let env = TestEnv::new().await;
    failure(&env, "many-0", &[]).await;
    failure(&env, "many-1", &[]).await;
    let mut big = env.envelope("many-big", Some(&env.a.token), &seed_of(&env.a));
    big.oversize = Some(case_intake::intake::envelope::Oversize {
        bytes: 10_000_000,
        sha256: [7; 32],
    });
    env.process(&[big]).await;
    let big_id: i64 =
        sqlx::query_scalar("SELECT id FROM failed_intakes WHERE message_key = 'many-big'")
            .fetch_one(&env.pool)
            .await
            .unwrap();

    // Refused: --body without a KEY, a KEY with a selection, no selection at all.
    let a = env.a.network_id.to_string();
    for (args, code) in [
        (vec!["--network", &a, "--body", "-"], 2),
        (
            vec!["many-0", "--code", "payload_too_large", "--set", "a=b"],
            2,
        ),
        (vec!["--set", "a=b", "--dry-run"], 1),
    ] {
        let out = run(&env, &[&["failed", "edit"][..], &args].concat()).await;
        assert_eq!(out.status.code(), Some(code), "{args:?}: {}", text(&out));
    }

    let county = format!("street_county:={}", env.a.county_ids[0]);
    let args = ["failed", "edit", "--network", &a, "--set", &county];
    // As text: the totals and the skipped id.
    let out = run(&env, &[&args[..], &["--dry-run"]].concat()).await;
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("dry run, nothing written: would edit 3: created 2, failed again 0"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("failed intake(s) {big_id}")),
        "{shown}"
    );

    let r = report(
        &run(
            &env,
            &[&args[..], &["--operator", "erin", "--json"]].concat(),
        )
        .await,
    );
    assert_eq!(
        (
            r["selected"].as_i64(),
            r["created"].as_i64(),
            r["skipped"].as_i64()
        ),
        (Some(3), Some(2), Some(1)),
        "{r}"
    );
    assert_eq!(r["skipped_ids"], json!([big_id]));
    assert_eq!(r["operator"], "erin");
    for key in ["many-0", "many-1"] {
        let (how, by, event) = resolution_of(&env, key, 1).await;
        assert_eq!(
            (how.as_deref(), by.as_deref()),
            (Some("edited"), Some("erin"))
        );
        let audit = audit_rows(&env, key).await;
        assert_eq!(audit.len(), 1, "one audit row per edited failure");
        assert_eq!(audit[0]["event_id"], event.unwrap().to_string());
        assert_eq!(audit[0]["fields_set"], json!(["street_county"]));
    }
    // The skipped failure is still open, unaudited.
    assert_eq!(resolution_of(&env, "many-big", 1).await, (None, None, None));
    assert!(audit_rows(&env, "many-big").await.is_empty());
    env.cleanup().await;
}
