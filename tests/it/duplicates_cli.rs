//! `case-intake duplicates …` through the built binary, each test with a database of its own:
//! a network's duplicate policy shown and set; match keys computed for cases written before
//! matching existed; and the pairs the pipeline flags, listed, shown (SSNs masked) and
//! dismissed.
//!
//! The tests named `pipeline_flagged_*` need the pipeline's matching (a window that, under the
//! default policy `flag`, writes `possible_duplicates` rows): they create their pairs by
//! processing intakes, never by inserting rows.

use crate::cli::{json_of, run, run_with, text};
use std::process::Output;

use case_intake::intake::matching::MatchKeys;
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{created, process_as, seed_of, with};
use chrono::NaiveDate;
use serde_json::{Value, json};

fn stdout_of(out: &Output) -> String {
    assert!(out.status.success(), "{out:?}");
    text(&out.stdout)
}

fn failure_of(out: &Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    text(&out.stderr)
}

/// The stored policy of `network`.
async fn stored_policy(env: &TestEnv, network: i64) -> String {
    sqlx::query_scalar("SELECT duplicate_policy FROM networks WHERE id = $1")
        .bind(network)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn policy_is_shown_and_set_and_the_old_one_reported() {
    let env = TestEnv::new().await;
    let a = env.a.network_id.to_string();

    let out = run(&env, &["duplicates", "policy", "--network", &a]).await;
    assert_eq!(stdout_of(&out).trim(), format!("network {a}: flag"));

    let out = run(&env, &["duplicates", "policy", "--network", &a, "reject"]).await;
    assert_eq!(
        stdout_of(&out).trim(),
        format!("network {a}: flag → reject")
    );
    assert_eq!(stored_policy(&env, env.a.network_id).await, "reject");
    // The other network keeps its own.
    assert_eq!(stored_policy(&env, env.b.network_id).await, "flag");

    let args = ["duplicates", "policy", "--network", &a, "--json"];
    let shown = json_of(&run(&env, &args).await);
    assert_eq!(
        shown,
        json!({"network": env.a.network_id, "policy": "reject"})
    );

    let args = ["duplicates", "policy", "--network", &a, "link", "--json"];
    let changed = json_of(&run(&env, &args).await);
    assert_eq!(
        changed,
        json!({"network": env.a.network_id, "old": "reject", "new": "link"})
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_unknown_policy_or_network_is_refused_and_nothing_changes() {
    let env = TestEnv::new().await;
    let a = env.a.network_id.to_string();

    let out = run(&env, &["duplicates", "policy", "--network", &a, "maybe"]).await;
    let err = failure_of(&out);
    assert!(err.contains("maybe") && err.contains("reject"), "{err}");
    assert_eq!(stored_policy(&env, env.a.network_id).await, "flag");

    for args in [
        &["duplicates", "policy", "--network", "987654"][..],
        &["duplicates", "policy", "--network", "987654", "off"][..],
    ] {
        let err = failure_of(&run(&env, args).await);
        assert!(err.contains("no network with id 987654"), "{err}");
    }
    env.cleanup().await;
}

/// The stored columns the keys are computed from, and the keys, of every case in id order.
async fn case_keys(env: &TestEnv) -> Vec<(i64, MatchKeys, MatchKeys)> {
    type Row = (
        i64,
        String,
        String,
        Option<NaiveDate>,
        Option<String>,
        Option<i64>,
        Option<i64>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, first_name, last_name, date_of_birth, street_address, match_name,
                match_address
           FROM cases ORDER BY id",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(id, first, last, dob, street, name, address)| {
            let expected = MatchKeys::from_parts(&first, &last, dob, street.as_deref());
            (id, expected, MatchKeys { name, address })
        })
        .collect()
}

#[tokio::test]
async fn reindex_gives_legacy_cases_their_keys_once() {
    let env = TestEnv::new().await;
    // Three different people (no pair is flagged), one without a date of birth, one in
    // network B.
    let mut no_dob = with(seed_of(&env.a), "first_name", json!("Mary"));
    no_dob.as_object_mut().unwrap().remove("date_of_birth");
    let bodies = [
        ("legacy-1", &env.a, seed_of(&env.a)),
        (
            "legacy-2",
            &env.a,
            with(
                with(seed_of(&env.a), "first_name", json!("Ann")),
                "last_name",
                json!("Lee"),
            ),
        ),
        ("legacy-3", &env.a, no_dob),
        (
            "legacy-4",
            &env.b,
            with(seed_of(&env.b), "first_name", json!("Bo")),
        ),
    ];
    for (key, caller, body) in &bodies {
        created(&process_as(&env, key, caller, body).await);
    }
    // As a database from before migration 0010 has them.
    sqlx::query("UPDATE cases SET match_name = NULL, match_address = NULL")
        .execute(&env.pool)
        .await
        .unwrap();

    // Network B's only: network A's cases keep no keys.
    let b = env.b.network_id.to_string();
    let args = ["duplicates", "reindex", "--network", &b, "--json"];
    let report = json_of(&run(&env, &args).await);
    assert_eq!(report["updated"], 1, "{report}");
    let indexed = env
        .scalar_i64("SELECT count(*) FROM cases WHERE match_name IS NOT NULL")
        .await;
    assert_eq!(indexed, 1);

    // Every network, two cases per batch: the case without a date of birth is read and left.
    let out = run(&env, &["duplicates", "reindex", "--batch", "2"]).await;
    let stdout = stdout_of(&out);
    assert!(stdout.contains("updated 2 case(s)"), "{stdout}");
    assert!(text(&out.stderr).contains("batch 2:"), "{out:?}");
    let keys = case_keys(&env).await;
    assert_eq!(keys.len(), 4);
    for (id, expected, stored) in &keys {
        assert_eq!(stored, expected, "case {id}");
    }
    let with_name_key = keys.iter().filter(|(_, _, k)| k.name.is_some()).count();
    assert_eq!(with_name_key, 3, "{keys:?}");

    // Nothing left to do.
    let report = json_of(&run(&env, &["duplicates", "reindex", "--json"]).await);
    assert_eq!(report["updated"], 0, "{report}");
    let err = failure_of(&run(&env, &["duplicates", "reindex", "--network", "987654"]).await);
    assert!(err.contains("no network with id 987654"), "{err}");
    env.cleanup().await;
}

#[tokio::test]
async fn dismiss_needs_a_reason_an_operator_and_known_ids() {
    let env = TestEnv::new().await;
    let ops = [("CASE_INTAKE_OPERATOR", "ops-ana")];
    let err = failure_of(&run_with(&env, &["duplicates", "dismiss", "1"], &ops).await);
    assert!(err.contains("--reason"), "{err}");
    let args = ["duplicates", "dismiss", "1", "--reason", "different people"];
    let err = failure_of(&run(&env, &args).await);
    assert!(err.contains("no operator"), "{err}");
    let err = failure_of(&run_with(&env, &args, &ops).await);
    assert!(err.contains("no possible duplicate with id 1"), "{err}");
    // Neither ids nor --all-open; --all-open without --network.
    let err = failure_of(&run_with(&env, &["duplicates", "dismiss", "--reason", "x"], &ops).await);
    assert!(err.contains("required"), "{err}");
    let args = ["duplicates", "dismiss", "--all-open", "--reason", "x"];
    let err = failure_of(&run_with(&env, &args, &ops).await);
    assert!(err.contains("--network"), "{err}");
    let args = ["duplicates", "show", "1"];
    let err = failure_of(&run(&env, &args).await);
    assert!(err.contains("no possible duplicate with id 1"), "{err}");
    let out = run(&env, &["duplicates", "list", "--json"]).await;
    assert_eq!(json_of(&out), json!([]));
    env.cleanup().await;
}

/// Two intakes of the seed's person (same names, date of birth, SSN and address) under two
/// keys in network A: under the default policy `flag` the second creates its case and flags
/// the pair. The two cases: (first, second).
async fn flag_one_pair(env: &TestEnv) -> (i64, i64) {
    let (first, _) = created(&process_as(env, "dup-first", &env.a, &seed_of(&env.a)).await);
    let (second, _) = created(&process_as(env, "dup-second", &env.a, &seed_of(&env.a)).await);
    (first, second)
}

/// The seed's SSN (`111223333`) in every form it could be printed in.
const FULL_SSN: [&str; 3] = ["111223333", "111-22-3333", "111 22 3333"];

#[tokio::test]
async fn pipeline_flagged_pair_is_listed_and_shown_with_the_ssn_masked() {
    let env = TestEnv::new().await;
    let (first, second) = flag_one_pair(&env).await;

    let pairs = json_of(&run(&env, &["duplicates", "list", "--json"]).await);
    let pairs = pairs.as_array().expect("an array");
    assert_eq!(pairs.len(), 1, "{pairs:?}");
    let pair = &pairs[0];
    assert_eq!(pair["case_id"], second, "{pair}");
    assert_eq!(pair["candidate_case_id"], first, "{pair}");
    assert_eq!(pair["network"], env.a.network_id);
    assert_eq!(pair["state"], "open");
    assert_eq!(pair["message_key"], "dup-second");
    assert_eq!(pair["overridden"], false);
    let rules: Vec<&str> = pair["rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(rules.contains(&"name_dob"), "{pair}");
    let id = pair["id"].as_i64().unwrap().to_string();

    // The text listing: one row under the header, the rule filter, another network.
    let listed = stdout_of(&run(&env, &["duplicates", "list"]).await);
    let rows: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{listed}");
    assert!(
        rows[0].contains("name_dob") && rows[0].contains("dup-second"),
        "{listed}"
    );
    assert!(rows[0].trim_end().ends_with("open"), "{listed}");
    let by_rule = ["duplicates", "list", "--rule", "name_dob", "--json"];
    assert_eq!(
        json_of(&run(&env, &by_rule).await)
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let b = env.b.network_id.to_string();
    let other = ["duplicates", "list", "--network", &b, "--json"];
    assert_eq!(json_of(&run(&env, &other).await), json!([]));

    // Show: both cases, what deciding needs, the SSN masked only.
    let shown = stdout_of(&run(&env, &["duplicates", "show", &id]).await);
    for needle in [
        format!("possible duplicate {id}"),
        format!("case {second}"),
        format!("candidate {first}"),
        "John Smith".to_owned(),
        "1950-12-03".to_owned(),
        "123 Adams Street".to_owned(),
        "*****3333".to_owned(),
        "private no".to_owned(),
    ] {
        assert!(shown.contains(&needle), "{needle:?} missing:\n{shown}");
    }
    let detail = json_of(&run(&env, &["duplicates", "show", &id, "--json"]).await);
    assert_eq!(detail["case"]["case_id"], second);
    assert_eq!(detail["candidate"]["case_id"], first);
    assert_eq!(detail["candidate"]["ssn"], "*****3333");
    assert!(detail["candidate"]["household_id"].is_i64(), "{detail}");
    for out in [&shown, &detail.to_string()] {
        for ssn in FULL_SSN {
            assert!(!out.contains(ssn), "the full SSN was printed:\n{out}");
        }
    }
    env.cleanup().await;
}

#[tokio::test]
async fn pipeline_flagged_pair_is_dismissed_once_with_who_and_why() {
    let env = TestEnv::new().await;
    flag_one_pair(&env).await;
    let pairs = json_of(&run(&env, &["duplicates", "list", "--json"]).await);
    let id = pairs[0]["id"]
        .as_i64()
        .expect("one flagged pair")
        .to_string();

    // No reason: refused, nothing changed.
    let ops = [("CASE_INTAKE_OPERATOR", "ops-ana")];
    let err = failure_of(&run_with(&env, &["duplicates", "dismiss", &id], &ops).await);
    assert!(err.contains("--reason"), "{err}");
    let open = json_of(&run(&env, &["duplicates", "list", "--json"]).await);
    assert_eq!(open.as_array().unwrap().len(), 1);

    let args = [
        "duplicates",
        "dismiss",
        &id,
        "--reason",
        "twins, checked by phone",
    ];
    let out = stdout_of(&run_with(&env, &args, &ops).await);
    assert!(out.contains("dismissed 1"), "{out}");

    let open = json_of(&run(&env, &["duplicates", "list", "--json"]).await);
    assert_eq!(open, json!([]));
    let args = ["duplicates", "list", "--state", "dismissed", "--json"];
    let dismissed = json_of(&run(&env, &args).await);
    let dismissed = dismissed.as_array().unwrap();
    assert_eq!(dismissed.len(), 1, "{dismissed:?}");
    assert_eq!(dismissed[0]["state"], "dismissed");
    assert_eq!(dismissed[0]["resolved_by"], "ops-ana");
    assert_eq!(dismissed[0]["resolution_reason"], "twins, checked by phone");
    assert!(dismissed[0]["resolved_at"].is_string());
    let all = ["duplicates", "list", "--state", "all", "--json"];
    assert_eq!(json_of(&run(&env, &all).await).as_array().unwrap().len(), 1);
    let shown = stdout_of(&run(&env, &["duplicates", "show", &id]).await);
    assert!(
        shown.contains("by ops-ana: twins, checked by phone"),
        "{shown}"
    );

    // Again, by someone else: reported, left as it was.
    let args = [
        "duplicates",
        "dismiss",
        &id,
        "--reason",
        "again",
        "--operator",
        "bo",
    ];
    let out = stdout_of(&run(&env, &args).await);
    assert!(out.contains("dismissed 0"), "{out}");
    assert!(
        out.contains(&format!("already dismissed 1 (left as they were): {id}")),
        "{out}"
    );
    let (by, why): (String, String) = sqlx::query_as(
        "SELECT resolved_by, resolution_reason FROM possible_duplicates WHERE id = $1",
    )
    .bind(id.parse::<i64>().unwrap())
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        (by.as_str(), why.as_str()),
        ("ops-ana", "twins, checked by phone")
    );

    // --all-open of the network finds nothing left.
    let a = env.a.network_id.to_string();
    let args = [
        "duplicates",
        "dismiss",
        "--all-open",
        "--network",
        &a,
        "--reason",
        "x",
        "--json",
    ];
    let report = json_of(&run_with(&env, &args, &ops).await);
    assert_eq!(report, json!({"dismissed": 0, "already_dismissed": []}));
    env.cleanup().await;
}

#[tokio::test]
async fn pipeline_flagged_pairs_above_ten_need_yes_to_dismiss_all_open() {
    let env = TestEnv::new().await;
    // The same person six times: each intake after the first is flagged against those before.
    for i in 0..6 {
        created(&process_as(&env, &format!("same-{i}"), &env.a, &seed_of(&env.a)).await);
    }
    let args = ["duplicates", "list", "--limit", "1000", "--json"];
    let open = json_of(&run(&env, &args).await).as_array().unwrap().len();
    assert!(open > 10, "{open} pairs flagged");

    let ops = [("CASE_INTAKE_OPERATOR", "ops-ana")];
    let a = env.a.network_id.to_string();
    let mut args = vec![
        "duplicates",
        "dismiss",
        "--all-open",
        "--network",
        &a,
        "--reason",
        "one family",
    ];
    let err = failure_of(&run_with(&env, &args, &ops).await);
    assert!(err.contains("--yes"), "{err}");
    let still = json_of(&run(&env, &["duplicates", "list", "--limit", "1000", "--json"]).await);
    assert_eq!(still.as_array().unwrap().len(), open);

    args.push("--yes");
    let out = stdout_of(&run_with(&env, &args, &ops).await);
    assert!(out.contains(&format!("dismissed {open}")), "{out}");
    let left = json_of(&run(&env, &["duplicates", "list", "--json"]).await);
    assert_eq!(left, json!([]));
    env.cleanup().await;
}
