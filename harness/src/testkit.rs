//! Small helpers the integration tests share, built on `support`'s public names: reading a
//! window's outcomes, a key's stored event, seed intakes of one network, a worker with its
//! broker, publishing with a caller's token, replaying failed intakes and counting a queue.

use case_intake::admin::failed::{self, Filter, ReplayReport};
use case_intake::admin::provision::Provisioned;
use case_intake::app::supervisor;
use case_intake::domain::error::ErrorCode;
use case_intake::intake::envelope::Envelope;
use case_intake::intake::window::Outcome;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::support::{Broker, RunningWorker, TestEnv, seed_body, token_header};

/// The case and household of an outcome that must be a created case.
pub fn created(outcome: &Outcome) -> (i64, i64) {
    match outcome {
        Outcome::Created {
            case_id,
            household_id,
            ..
        } => (*case_id, *household_id),
        other => panic!("expected a created case, got {other:?}"),
    }
}

/// The error code of an outcome that must be a failure.
pub fn failed(outcome: &Outcome) -> ErrorCode {
    match outcome {
        Outcome::Failed { code, .. } => *code,
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// `body` with `field` set to `value`.
pub fn with(mut body: Value, field: &str, value: Value) -> Value {
    body[field] = value;
    body
}

/// The event stored beside `key` in `network`'s outcomes.
pub async fn event_of(env: &TestEnv, key: &str, network: i64) -> Value {
    sqlx::query_scalar(
        "SELECT event FROM intake_outcomes WHERE network_id = $1 AND message_key = $2",
    )
    .bind(network)
    .bind(key)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The seed body under `key`, sent by `caller` with its own token and first county.
pub fn seed_envelope(env: &TestEnv, key: &str, caller: &Provisioned) -> Envelope {
    env.envelope(key, Some(&caller.token), &seed_body(caller.county_ids[0]))
}

/// Processes the seed intake of `caller` under `key` alone in a window; its outcome.
pub async fn process_seed(env: &TestEnv, key: &str, caller: &Provisioned) -> Outcome {
    let mut out = env.process(&[seed_envelope(env, key, caller)]).await;
    out.remove(0)
}

/// A broker client with the test's topology declared, and a worker started on it.
pub async fn broker_and_worker(env: &TestEnv) -> (Broker, RunningWorker) {
    let broker = Broker::connect(env).await;
    broker.declare_topology(env).await;
    (broker, RunningWorker::start(&env.settings))
}

/// Publishes `body` with confirms, authorized by `token`.
pub async fn publish_as(
    broker: &Broker,
    token: &str,
    key: Option<&str>,
    correlation_id: Option<&str>,
    body: &[u8],
) {
    let (name, value) = token_header(token);
    broker
        .publish(key, &[(name, &value)], correlation_id, body)
        .await;
}

/// A JSON body as the bytes a publisher sends.
pub fn to_bytes(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).expect("a JSON value serializes")
}

/// Replays the failed intakes `filter` selects, in windows of 10, as the operator command does.
pub async fn replay(env: &TestEnv, filter: &Filter) -> ReplayReport {
    let ctx = supervisor::window_context(&env.settings);
    failed::replay(&env.pool, &ctx, filter, 10, |_| {})
        .await
        .expect("replay runs")
}

/// Messages ready in `queue`, which must exist (a passive declare).
pub async fn message_count(ch: &Channel, queue: &str) -> u32 {
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    let declared = ch.queue_declare(queue.into(), passive, FieldTable::default());
    declared.await.expect("the queue exists").message_count()
}

// Bodies and envelopes of one caller, and failed intakes by code or key.

/// The seed body in `caller`'s first county.
pub fn seed_of(caller: &Provisioned) -> Value {
    seed_body(caller.county_ids[0])
}

/// The seed body in `county`, joining `household`.
pub fn joining(county: i64, household: i64) -> Value {
    with(seed_body(county), "household", serde_json::json!(household))
}

/// `body` under `key`, sent by `caller` with its own token.
pub fn envelope_from(env: &TestEnv, key: &str, caller: &Provisioned, body: &Value) -> Envelope {
    env.envelope(key, Some(&caller.token), body)
}

/// Processes `body`, sent by `caller` under `key`, alone in a window; its outcome.
pub async fn process_as(env: &TestEnv, key: &str, caller: &Provisioned, body: &Value) -> Outcome {
    let mut out = env.process(&[envelope_from(env, key, caller, body)]).await;
    out.remove(0)
}

/// How many failed intakes are stored with error code `code`.
pub async fn failed_count(env: &TestEnv, code: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM failed_intakes WHERE error_code = $1")
        .bind(code)
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// The failed intakes with error code `code`, at most 100 (as `failed list --code`).
pub fn failed_with_code(code: &str) -> Filter {
    Filter {
        code: Some(code.to_owned()),
        limit: 100,
        ..Filter::default()
    }
}

/// The failed intakes of message key `key`, at most 100 (as `failed list --key`).
pub fn failed_with_key(key: &str) -> Filter {
    Filter {
        key: Some(key.to_owned()),
        limit: 100,
        ..Filter::default()
    }
}

/// The first page of failed intakes `filter` selects, in the display form `failed list` prints.
pub async fn list_failed(env: &TestEnv, filter: &Filter) -> failed::Page {
    failed::list(&env.pool, filter, 0)
        .await
        .expect("failed intakes listed")
}

/// Two envelopes under `keys` that `caller` must not be able to tell apart: the first joins
/// `other`'s household `household` in `other`'s first county, the second names a county and a
/// household that exist nowhere.
pub fn foreign_and_missing(
    env: &TestEnv,
    keys: [&str; 2],
    caller: &Provisioned,
    other: &Provisioned,
    household: i64,
) -> [Envelope; 2] {
    let foreign = joining(other.county_ids[0], household);
    let missing = joining(9_999_999, 9_999_999);
    [
        envelope_from(env, keys[0], caller, &foreign),
        envelope_from(env, keys[1], caller, &missing),
    ]
}

/// Runs the command-line binary `bin` (a test's `env!("CARGO_BIN_EXE_case-intake")`) against
/// `env`'s database with text logs and no configuration file, no operator in its environment
/// unless `vars` names one (`vars` may also override the log format), and `stdin` as its input:
/// never a terminal, so a command that would ask refuses instead.
pub async fn run_cli(
    bin: &str,
    env: &TestEnv,
    args: &[&str],
    vars: &[(&str, &str)],
    stdin: &[u8],
) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut cmd = std::process::Command::new(bin);
    cmd.args(args)
        .env(
            "CASE_INTAKE__DATABASE__URL",
            env.settings.database.url.expose_secret(),
        )
        .env("CASE_INTAKE__LOG__FORMAT", "text")
        .env_remove("CASE_INTAKE_CONFIG")
        .env_remove("CASE_INTAKE_OPERATOR")
        .env_remove("USER")
        .env_remove("LOGNAME")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_vec();
    tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("the binary runs");
        let mut input = child.stdin.take().expect("stdin is piped");
        // A command that does not read stdin may exit first: a broken pipe is no failure.
        let _ = input.write_all(&stdin);
        drop(input);
        child.wait_with_output().expect("the binary finishes")
    })
    .await
    .expect("the command's task finishes")
}
