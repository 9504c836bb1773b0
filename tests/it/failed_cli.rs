//! The `failed list` and `replay` commands as an operator runs them: the binary against a
//! private database, a page at a time with the total, codes checked before anything connects,
//! and bulk replays that ask first.

use crate::cli::{BIN, run, text};
use case_intake_harness::support::TestEnv;
use serde_json::{Value, json};

/// `n` intakes of network a that fail validation (no last name), keys `bad-0` ….
async fn fail_intakes(env: &TestEnv, n: usize) {
    let envelopes: Vec<_> = (0..n)
        .map(|i| {
            env.envelope(
                &format!("bad-{i}"),
                Some(&env.a.token),
                &json!({"first_name": "A"}),
            )
        })
        .collect();
    env.process(&envelopes).await;
}

#[tokio::test]
async fn failed_list_pages_with_a_total_and_the_error_message() {
    let env = TestEnv::new().await;
    fail_intakes(&env, 5).await;

    let out = run(&env, &["failed", "list", "--limit", "2"]).await;
    assert!(out.status.success(), "{out:?}");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        stdout.lines().count(),
        3,
        "a header and two rows:\n{stdout}"
    );
    assert!(
        stdout.lines().next().unwrap().ends_with("message"),
        "{stdout}"
    );
    let json = run(&env, &["failed", "list", "--limit", "1", "--json"]).await;
    let rows: Vec<Value> = serde_json::from_slice(&json.stdout).unwrap();
    let message = rows[0]["error"]["message"].as_str().unwrap();
    assert!(!message.is_empty());
    let shown: String = message.chars().take(40).collect();
    assert!(
        stdout.contains(&shown),
        "the error message is listed:\n{stdout}"
    );
    assert!(
        stderr.contains("showing 2 of 5 failed intake(s)"),
        "{stderr}"
    );
    let next: i64 = stderr
        .split("--after ")
        .nth(1)
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no next page in {stderr}"));

    // The next pages, as JSON: all five keys once, then no further page.
    let mut keys = Vec::new();
    let mut after = 0;
    loop {
        let after_arg = after.to_string();
        let out = run(
            &env,
            &[
                "failed", "list", "--limit", "2", "--after", &after_arg, "--json",
            ],
        )
        .await;
        assert!(out.status.success(), "{out:?}");
        let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
        keys.extend(
            rows.iter()
                .map(|r| r["message_key"].as_str().unwrap().to_owned()),
        );
        let stderr = text(&out.stderr);
        match stderr.split("--after ").nth(1) {
            Some(n) => after = n.trim().parse().unwrap(),
            None => break,
        }
        if after == 0 {
            break;
        }
    }
    keys.sort();
    assert_eq!(keys, ["bad-0", "bad-1", "bad-2", "bad-3", "bad-4"]);
    assert!(next > 0);
    env.cleanup().await;
}

#[tokio::test]
async fn an_unknown_code_is_refused_before_anything_connects() {
    let env = TestEnv::new().await;
    let mut cmd = std::process::Command::new(BIN);
    // A database that cannot answer: the refusal must come from the argument check.
    cmd.args(["failed", "list", "--code", "no_such_code"])
        .env(
            "CASE_INTAKE__DATABASE__URL",
            "postgres://nobody@127.0.0.1:1/none",
        )
        .env_remove("CASE_INTAKE_CONFIG");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("no_such_code"), "{stderr}");
    assert!(
        stderr.contains("validation_failed"),
        "the valid codes are listed: {stderr}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_bulk_replay_needs_yes_without_a_terminal() {
    let env = TestEnv::new().await;
    fail_intakes(&env, 12).await;
    let open = "SELECT count(*) FROM failed_intakes WHERE resolved_at IS NULL";

    let out = run(&env, &["replay", "--code", "validation_failed"]).await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("12 open failed intake(s) selected"),
        "{stderr}"
    );
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(env.scalar_i64(open).await, 12, "nothing was replayed");

    let out = run(
        &env,
        &["replay", "--code", "validation_failed", "--yes", "--json"],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["selected"], 12);
    assert_eq!(report["failed"], 12, "the same bodies fail again");
    // Each replayed row is resolved; the new failures are the open ones now.
    assert_eq!(env.scalar_i64(open).await, 12);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM failed_intakes WHERE resolved_at IS NOT NULL")
            .await,
        12
    );

    // A few are replayed without asking.
    let out = run(&env, &["replay", "--key", "bad-3"]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("1 open failed intake(s) selected"));
    env.cleanup().await;
}
