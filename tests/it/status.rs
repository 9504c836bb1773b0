//! What became of a message key, against the real services: the status endpoint over real HTTP
//! (every kind of status, scoped to the caller's network, one 404 for every unknown key) and
//! the operator's `status` command through the built binary.

use crate::cli::text;
use std::process::Output;
use std::time::Duration;

use case_intake::admin::status;
use case_intake::app::http::{HttpState, serve};
use case_intake::domain::error::{ErrorCode, IntakeError};
use case_intake::infra::metrics::Metrics;
use case_intake::intake::event::Resolution;
use case_intake::store::{self, ResolvedRow};
use case_intake_harness::support::TestEnv;
use case_intake_harness::testkit::{
    broker_and_worker, created, failed as failed_code, process_as, publish_as, seed_of, to_bytes,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A test environment with its HTTP surface on a free local port.
struct Surface {
    env: TestEnv,
    stop: CancellationToken,
    base: String,
    client: reqwest::Client,
}

impl Surface {
    async fn start() -> Self {
        let env = TestEnv::new().await;
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState {
            pool: env.pool.clone(),
            metrics: Metrics::shared(),
            stall_limit: Duration::from_secs(120),
        };
        tokio::spawn(serve(listener, state, stop.clone()));
        Self {
            env,
            stop,
            base,
            client: reqwest::Client::new(),
        }
    }

    /// `GET /api/v1/intakes/{key}` (`key` as written in the path) with `authorization` if
    /// given: the status and the body's bytes.
    async fn status_raw(&self, key: &str, authorization: Option<String>) -> (StatusCode, Vec<u8>) {
        let mut req = self
            .client
            .get(format!("{}/api/v1/intakes/{key}", self.base));
        if let Some(value) = authorization {
            req = req.header("Authorization", value);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.bytes().await.unwrap().to_vec())
    }

    /// The status of `key` as `token`'s caller sees it, as JSON.
    async fn status(&self, key: &str, token: &str) -> (StatusCode, Value) {
        let (code, body) = self.status_raw(key, Some(format!("Token {token}"))).await;
        (code, serde_json::from_slice(&body).expect("a JSON answer"))
    }

    async fn finish(self) {
        self.stop.cancel();
        self.env.cleanup().await;
    }
}

/// A body that fails validation: no last name.
fn invalid() -> Value {
    json!({"first_name": "A"})
}

#[tokio::test]
async fn a_case_created_by_the_worker_is_reported_over_http() {
    let http = Surface::start().await;
    let env = &http.env;
    let (mut broker, worker) = broker_and_worker(env).await;
    let body = to_bytes(&seed_of(&env.a));
    publish_as(&broker, &env.a.token, Some("via-broker"), None, &body).await;
    let (routing_key, _, event) = broker.next_event_for("via-broker").await;
    assert_eq!(routing_key, "case.created");

    let (code, found) = http.status("via-broker", &env.a.token).await;
    assert_eq!(code, StatusCode::OK, "{found}");
    assert_eq!(found["status"], "created");
    assert_eq!(found["message_key"], "via-broker");
    assert_eq!(found["case_id"], event["data"]["id"]);
    assert_eq!(found["household_id"], event["data"]["household_id"]);
    assert_eq!(found["event_id"], event["id"]);
    assert_eq!(found["attempt"], 1);
    assert!(found["decided_at"].is_string(), "{found}");
    // Network B has no such key.
    let (code, _) = http.status("via-broker", &env.b.token).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    worker.stop().await;
    http.finish().await;
}

#[tokio::test]
async fn a_failure_is_the_senders_to_fix_and_a_resend_creates_attempt_2() {
    let http = Surface::start().await;
    let env = &http.env;
    let out = process_as(env, "fix-me", &env.a, &invalid()).await;
    assert_eq!(failed_code(&out), ErrorCode::ValidationFailed);

    let (code, found) = http.status("fix-me", &env.a.token).await;
    assert_eq!(code, StatusCode::OK, "{found}");
    assert_eq!(found["status"], "failed");
    assert_eq!(found["retry_by"], "sender");
    assert_eq!(found["attempt"], 1);
    assert_eq!(found["event_id"], out.event_id().to_string());
    assert_eq!(found["error"]["code"], "validation_failed");
    assert!(found["error"]["fields"]["last_name"].is_array(), "{found}");
    assert!(found["failed_at"].is_string(), "{found}");

    // The sender corrects the body and re-publishes under the same key.
    let out = process_as(env, "fix-me", &env.a, &seed_of(&env.a)).await;
    let (case_id, household_id) = created(&out);
    let (code, found) = http.status("fix-me", &env.a.token).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(found["status"], "created");
    assert_eq!(found["attempt"], 2);
    assert_eq!(
        (&found["case_id"], &found["household_id"]),
        (&json!(case_id), &json!(household_id))
    );
    assert_eq!(found["event_id"], out.event_id().to_string());
    http.finish().await;
}

#[tokio::test]
async fn an_exhausted_intake_is_pending_and_a_dismissed_one_resolved() {
    let http = Surface::start().await;
    let env = &http.env;
    let mut stuck = env.envelope("stuck", Some(&env.a.token), &seed_of(&env.a));
    stuck.fail_with(IntakeError::new(
        ErrorCode::RetriesExhausted,
        "transient database errors persisted through every retry",
    ));
    let dropped = env.envelope("dropped", Some(&env.a.token), &invalid());
    env.process(&[stuck, dropped]).await;

    let (code, found) = http.status("stuck", &env.a.token).await;
    assert_eq!(code, StatusCode::OK, "{found}");
    assert_eq!(found["status"], "pending");
    assert_eq!(found["retry_by"], "operator");
    assert_eq!(found["error"]["code"], "retries_exhausted");

    // An operator dismisses the other failure (as `failed dismiss` does).
    let id: i64 = sqlx::query_scalar("SELECT id FROM failed_intakes WHERE message_key = 'dropped'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    let mut tx = env.pool.begin().await.unwrap();
    let row = ResolvedRow {
        failed_intake_id: id,
        how: Resolution::Dismissed,
        event_id: None,
        operator: Some("operator-alice".to_owned()),
        reason: Some("duplicate-of-paper-form".to_owned()),
    };
    let closed = store::resolve_failed(&mut tx, &[row], chrono::Utc::now()).await;
    assert_eq!(closed.unwrap(), [id]);
    tx.commit().await.unwrap();

    let (code, body) = http
        .status_raw("dropped", Some(format!("Token {}", env.a.token)))
        .await;
    assert_eq!(code, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(!text.contains("operator-alice") && !text.contains("duplicate-of-paper-form"));
    let found: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(found["status"], "resolved");
    assert_eq!(found["resolution"], "dismissed");
    assert!(found["resolved_at"].is_string(), "{found}");
    assert_eq!(found["error"]["code"], "validation_failed");
    http.finish().await;
}

#[tokio::test]
async fn another_networks_key_answers_exactly_like_an_unknown_one() {
    let http = Surface::start().await;
    let env = &http.env;
    created(&process_as(env, "theirs", &env.b, &seed_of(&env.b)).await);
    process_as(env, "theirs-failed", &env.b, &invalid()).await;
    let a = || Some(format!("Token {}", env.a.token));

    let unknown = http.status_raw("never-sent", a()).await;
    assert_eq!(unknown.0, StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_slice(&unknown.1).unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    let too_long = "k".repeat(256);
    for key in [
        "theirs",
        "theirs-failed",
        too_long.as_str(),
        "bell%07key",
        "not%FFutf8",
    ] {
        assert_eq!(http.status_raw(key, a()).await, unknown, "key {key}");
    }
    // Their own network sees them.
    let (code, found) = http.status("theirs", &env.b.token).await;
    assert_eq!(
        (code, &found["status"]),
        (StatusCode::OK, &json!("created"))
    );
    http.finish().await;
}

#[tokio::test]
async fn the_status_needs_a_valid_token() {
    let http = Surface::start().await;
    let env = &http.env;
    created(&process_as(env, "mine", &env.a, &seed_of(&env.a)).await);
    for authorization in [
        None,
        Some("Token nope".to_owned()),
        Some(format!("Bearer {}", env.a.token)),
    ] {
        let (code, body) = http.status_raw("mine", authorization).await;
        assert_eq!(code, StatusCode::UNAUTHORIZED);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    case_intake::admin::provision::revoke_key(&env.pool, env.a.api_key_id)
        .await
        .unwrap();
    let (code, _) = http.status("mine", &env.a.token).await;
    assert_eq!(code, StatusCode::UNAUTHORIZED);
    http.finish().await;
}

/// Runs the binary against `env`'s database, stdin not a terminal.
async fn run(env: &TestEnv, args: &[&str]) -> Output {
    run_logging(env, args, "text").await
}

async fn run_logging(env: &TestEnv, args: &[&str], format: &str) -> Output {
    let vars = [("CASE_INTAKE__LOG__FORMAT", format)];
    crate::cli::run_with(env, args, &vars).await
}

/// The key `shared` in network A (created), network B (failed) and the unauthenticated
/// namespace (failed `unauthorized`).
async fn shared_key_everywhere(env: &TestEnv) {
    created(&process_as(env, "shared", &env.a, &seed_of(&env.a)).await);
    process_as(env, "shared", &env.b, &invalid()).await;
    let anonymous = env.envelope("shared", None, &seed_of(&env.a));
    failed_code(&env.process(&[anonymous]).await[0]);
}

#[tokio::test]
async fn the_status_command_shows_every_network_in_human_and_json_form() {
    let env = TestEnv::new().await;
    shared_key_everywhere(&env).await;
    let (a, b) = (env.a.network_id, env.b.network_id);

    let out = run(&env, &["status", "shared"]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = text(&out.stdout);
    for line in [
        "network -  key shared  failed".to_owned(),
        format!("network {a}  key shared  created"),
        format!("network {b}  key shared  failed"),
    ] {
        assert!(stdout.contains(&line), "{line:?} missing:\n{stdout}");
    }
    assert!(stdout.contains("retry by sender"), "{stdout}");
    assert!(stdout.contains("error validation_failed"), "{stdout}");
    assert!(
        stdout.contains("last_name:"),
        "the failing field:\n{stdout}"
    );

    let out = run(&env, &["status", "shared", "--json"]).await;
    assert!(out.status.success(), "{out:?}");
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let networks: Vec<&Value> = all.iter().map(|s| &s["network"]).collect();
    assert_eq!(networks, [&json!("-"), &json!(a), &json!(b)]);
    assert_eq!(all[0]["error"]["code"], "unauthorized");
    // Each element is the endpoint's object with its network.
    let caller = store::caller_of(&env.pool, store::auth::hash_token(&env.a.token))
        .await
        .unwrap()
        .unwrap();
    let api = status::for_caller(&env.pool, &caller, "shared").await;
    let mut expected = serde_json::to_value(api.unwrap().unwrap()).unwrap();
    expected["network"] = json!(a);
    assert_eq!(all[1], expected);

    let b_arg = b.to_string();
    let out = run(&env, &["status", "shared", "--network", &b_arg, "--json"]).await;
    let one: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(
        (&one[0]["status"], &one[0]["retry_by"]),
        (&json!("failed"), &json!("sender"))
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_status_command_fails_clearly_for_a_key_found_nowhere() {
    let env = TestEnv::new().await;
    let out = run_logging(&env, &["status", "nowhere\u{1b}[31m"], "json").await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = text(&out.stderr);
    let errors: Vec<String> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|l| l["error"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("no outcome is recorded"), "{stderr}");
    assert!(
        errors[0].contains(r"nowhere\u{1b}[31m"),
        "escaped: {stderr}"
    );
    assert!(!errors[0].contains('\u{1b}'), "no raw escape: {stderr:?}");
    env.cleanup().await;
}
