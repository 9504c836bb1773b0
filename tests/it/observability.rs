//! Observability of the real binary: its JSON log lines (flat fields, the startup line), W3C
//! trace context from an intake to its event through the broker, and the `healthcheck`
//! command's exit codes.

use case_intake_harness::wait::{Lazy, SETTLE, eventually, until};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use case_intake::app::http::{HttpState, serve};
use case_intake::infra::metrics::{ConsumerState, Metrics};
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use lapin::BasicProperties;
use lapin::types::AMQPValue;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BIN: &str = crate::cli::BIN;
const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const OTHER_PARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Runs `case-intake healthcheck` (with `extra` arguments) against `address`; its exit status.
async fn healthcheck(address: &str, extra: &[&str]) -> bool {
    let mut cmd = Command::new(BIN);
    cmd.arg("healthcheck")
        .args(extra)
        .env("CASE_INTAKE__HTTP__ADDRESS", address)
        .env("CASE_INTAKE__LOG__FORMAT", "json")
        .env_remove("CASE_INTAKE_CONFIG")
        .env_remove("RUST_LOG");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    out.status.success()
}

/// A local port nothing listens on (bound, then released).
fn free_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn healthcheck_follows_readiness_and_liveness() {
    let env = TestEnv::new().await;
    let closed = free_address();
    assert!(!healthcheck(&closed, &[]).await, "nothing listens");

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let metrics = Metrics::shared();
    let stop = CancellationToken::new();
    let state = HttpState {
        pool: env.pool.clone(),
        metrics: metrics.clone(),
        stall_limit: Duration::from_secs(120),
    };
    tokio::spawn(serve(listener, state, stop.clone()));
    // Alive but not consuming yet: not ready.
    assert!(!healthcheck(&address, &[]).await);
    assert!(healthcheck(&address, &["--live"]).await);
    metrics.set_state(ConsumerState::Consuming);
    assert!(healthcheck(&address, &[]).await);
    // Asked on the wildcard address, the probe goes to the loopback.
    let port = address.rsplit_once(':').unwrap().1;
    assert!(healthcheck(&format!("0.0.0.0:{port}"), &[]).await);
    stop.cancel();
    env.cleanup().await;
}

/// The worker binary on the test's database and queues, logging JSON lines into `lines`.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn start(env: &TestEnv, http: &str) -> Self {
        let s = &env.settings;
        let mut child = Command::new(BIN)
            .arg("run")
            .env("CASE_INTAKE__DATABASE__URL", s.database.url.expose_secret())
            .env("CASE_INTAKE__AMQP__INTAKE_QUEUE", &s.amqp.intake_queue)
            .env(
                "CASE_INTAKE__AMQP__EVENTS_EXCHANGE",
                &s.amqp.events_exchange,
            )
            .env("CASE_INTAKE__HTTP__ADDRESS", http)
            .env("CASE_INTAKE__LOG__FORMAT", "json")
            .env("CASE_INTAKE__LOG__FILTER", "info")
            .env("CASE_INTAKE__OUTBOX__POLL_INTERVAL_MS", "100")
            .env_remove("CASE_INTAKE_CONFIG")
            .env_remove("RUST_LOG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Self { child, lines }
    }

    /// The first JSON log line for which `wanted` holds, once the worker has written it.
    async fn line(&self, wanted: impl Fn(&Value) -> bool) -> Value {
        let what = || format!("a wanted log line in {:#?}", self.lines.lock().unwrap());
        eventually(Lazy(what), SETTLE, || {
            let found = self.lines.lock().unwrap().iter().find_map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}"));
                wanted(&v).then_some(v)
            });
            async move { found }
        })
        .await
    }

    fn all_lines(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn header(props: &BasicProperties, name: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8(s.as_bytes().to_vec()).unwrap()),
        other => panic!("{name} is not a string: {other:?}"),
    }
}

#[tokio::test]
async fn the_binary_logs_flat_json_and_carries_trace_context_to_events() {
    let env = TestEnv::new().await;
    let http = free_address();
    let mut broker = Broker::connect(&env).await;
    let worker = Worker::start(&env, &http);

    // The startup line: version, queue, "consuming".
    let start = worker.line(|v| v["message"] == "consuming").await;
    assert_eq!(start["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(start["queue"], env.settings.amqp.intake_queue.as_str());
    assert_eq!(start["level"], "INFO");
    until("the healthcheck ready once consuming", SETTLE, || {
        healthcheck(&http, &[])
    })
    .await;

    // An intake with a trace context: the event carries it in its headers and its JSON.
    let (h, token) = token_header(&env.a.token);
    let body = serde_json::to_vec(&seed_body(env.a.county_ids[0])).unwrap();
    let traced = [
        (h, token.as_str()),
        ("TraceParent", PARENT),
        ("tracestate", "congo=t61rcWkgMzE"),
    ];
    broker.publish(Some("t-1"), &traced, None, &body).await;
    let (_, props, event) = broker.next_event_for("t-1").await;
    assert_eq!(event["type"], "case.created");
    assert_eq!(event["traceparent"], PARENT);
    assert_eq!(event["tracestate"], "congo=t61rcWkgMzE");
    assert_eq!(header(&props, "traceparent").as_deref(), Some(PARENT));
    assert_eq!(
        header(&props, "tracestate").as_deref(),
        Some("congo=t61rcWkgMzE")
    );

    // Its log line: flat, with the trace id beside the message key, each once.
    let created = worker
        .line(|v| v["message"] == "case created" && v["message_key"] == "t-1")
        .await;
    assert_eq!(created["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(
        created.get("span").is_none() && created.get("spans").is_none(),
        "{created}"
    );
    let raw = created.to_string();
    assert_eq!(raw.matches("message_key").count(), 1, "{raw}");

    // A duplicate under another trace re-publishes the original event, trace context included.
    let again = [(h, token.as_str()), ("traceparent", OTHER_PARENT)];
    broker.publish(Some("t-1"), &again, None, &body).await;
    let (_, dup_props, dup) = broker.next_event_for("t-1").await;
    assert_eq!(dup["id"], event["id"]);
    assert_eq!(dup["traceparent"], PARENT);
    assert_eq!(header(&dup_props, "traceparent").as_deref(), Some(PARENT));
    // The duplicate's own trace id is on its log line.
    let dup_line = worker
        .line(|v| v["message_key"] == "t-1" && v["trace_id"] == "0af7651916cd43dd8448eb211c80319c")
        .await;
    assert!(
        dup_line["message"]
            .as_str()
            .unwrap()
            .starts_with("duplicate intake")
    );

    // An invalid traceparent is ignored: no attribute, no header, not logged.
    let bad = "00-ZZZ92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let invalid = [(h, token.as_str()), ("traceparent", bad)];
    let other = serde_json::to_vec(&seed_body(env.a.county_ids[1])).unwrap();
    broker.publish(Some("t-2"), &invalid, None, &other).await;
    let (_, bad_props, untraced) = broker.next_event_for("t-2").await;
    assert_eq!(untraced["type"], "case.created");
    assert!(untraced.get("traceparent").is_none(), "{untraced}");
    assert_eq!(header(&bad_props, "traceparent"), None);
    let line = worker.line(|v| v["message_key"] == "t-2").await;
    assert!(line.get("trace_id").is_none(), "{line}");
    assert!(!worker.all_lines().contains("ZZZ92f"));

    drop(worker);
    assert!(!healthcheck(&http, &[]).await, "stopped: unhealthy");
    env.cleanup().await;
}
