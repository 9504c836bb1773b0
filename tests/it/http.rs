//! The HTTP surface over real HTTP: liveness, readiness, metrics and the counties endpoint.

use case_intake_harness::wait::{SETTLE, eventually};
use std::sync::Arc;
use std::time::Duration;

use case_intake::app::http::{HttpState, serve};
use case_intake::infra::metrics::{ConsumerState, Metrics};
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use reqwest::Response;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// How long messages may wait with no completed window before liveness fails, where a test
/// does not look at it: far longer than any test.
const QUIET_STALL_LIMIT: Duration = Duration::from_secs(120);

/// A fresh test environment whose HTTP surface is served on a free local port, and a client.
struct Surface {
    env: TestEnv,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    base: String,
    client: reqwest::Client,
}

impl Surface {
    /// Serves the surface of a new environment; liveness fails after `stall_limit` without
    /// progress while messages wait.
    async fn start(stall_limit: Duration) -> Self {
        let env = TestEnv::new().await;
        let metrics = Metrics::shared();
        let stop = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let state = HttpState {
            pool: env.pool.clone(),
            metrics: metrics.clone(),
            stall_limit,
        };
        tokio::spawn(serve(listener, state, stop.clone()));
        Self {
            env,
            metrics,
            stop,
            base,
            client: reqwest::Client::new(),
        }
    }

    /// `GET path`, with the header `(name, value)` if one is given.
    async fn get(&self, path: &str, header: Option<(&str, String)>) -> Response {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send().await.unwrap()
    }

    /// Stops serving and removes the environment.
    async fn finish(self) {
        self.stop.cancel();
        self.env.cleanup().await;
    }
}

const COUNTIES: &str = "/api/v1/counties/";

/// The names of `counties`, as the counties endpoint lists them.
fn names(counties: &[Value]) -> Vec<&str> {
    counties
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn liveness_fails_while_messages_wait_and_nothing_is_consumed() {
    let limit = Duration::from_millis(50);
    let http = Surface::start(limit).await;
    let metrics = &http.metrics;
    let live = || http.get("/healthz", None);

    // Nothing known of the queue yet, then an empty queue: alive.
    assert_eq!(live().await.status(), 200);
    metrics.set_queues(0, 0);
    assert_eq!(live().await.status(), 200);
    // Messages wait and no window completes for longer than the limit: not alive.
    metrics.set_queues(3, 0);
    tokio::time::sleep(limit * 3).await;
    let stalled = live().await;
    assert_eq!(stalled.status(), 503);
    assert!(stalled.text().await.unwrap().starts_with("stalled"));
    // A database outage pauses intake on purpose: alive (readiness says not ready).
    metrics.set_state(ConsumerState::DatabaseOutage);
    assert_eq!(live().await.status(), 200);
    metrics.set_state(ConsumerState::Consuming);
    assert_eq!(live().await.status(), 503);
    // A completed window is progress.
    metrics.record_window(1, 0.001);
    assert_eq!(live().await.status(), 200);
    http.finish().await;
}

#[tokio::test]
async fn probes_follow_the_consumer_and_metrics_count_outcomes() {
    let http = Surface::start(QUIET_STALL_LIMIT).await;
    let env = &http.env;

    assert_eq!(http.get("/healthz", None).await.status(), 200);
    // No worker yet: alive but not ready.
    let ready = http.get("/readyz", None).await;
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready");

    let mut broker = Broker::connect(env).await;
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(case_intake::app::supervisor::run_with(
        env.settings.clone(),
        worker_stop.clone(),
        http.metrics.clone(),
    ));
    broker.declare_topology(env).await;
    let (h, v) = token_header(&env.a.token);
    let body = serde_json::to_vec(&seed_body(env.a.county_ids[0])).unwrap();
    broker.publish(Some("m1"), &[(h, &v)], None, &body).await;
    broker.publish(Some("m2"), &[], None, &body).await;
    broker.events(2).await;

    // Once the event is out, the consumer is running: ready.
    assert_eq!(http.get("/readyz", None).await.status(), 200);
    // The counters are bumped, and the outbox rows marked published, just after the events
    // leave: poll until they show (bounded), then check them all.
    let created = r#"case_intake_intakes_total{outcome="created"} 1"#;
    let text = eventually(
        "the counters and the empty outbox in /metrics",
        SETTLE,
        || async {
            let text = http.get("/metrics", None).await.text().await.unwrap();
            (text.contains(created)
                && text.contains(r#"code="unauthorized""#)
                && text.contains("case_intake_outbox_backlog 0"))
            .then_some(text)
        },
    )
    .await;
    for wanted in [
        created,
        r#"case_intake_intakes_total{outcome="failed"} 1"#,
        r#"case_intake_intake_failures_total{code="unauthorized"} 1"#,
        r#"case_intake_consumer_state{state="consuming"} 1"#,
        "case_intake_build_info{version=",
        "process_resident_memory_bytes ",
        "case_intake_outbox_backlog 0",
        "case_intake_window_seconds_count",
    ] {
        assert!(text.contains(wanted), "{wanted} missing: {text}");
    }
    assert!(!text.contains(r#"="""#), "no empty label: {text}");

    worker_stop.cancel();
    worker.await.unwrap().unwrap();
    // Stopped: not ready any more.
    assert_eq!(http.get("/readyz", None).await.status(), 503);
    http.finish().await;
}

#[tokio::test]
async fn counties_endpoint_lists_only_the_callers_network() {
    let http = Surface::start(QUIET_STALL_LIMIT).await;
    let env = &http.env;
    let token_of_a = || Some(("Authorization", format!("Token {}", env.a.token)));

    let res = http.get(COUNTIES, token_of_a()).await;
    assert_eq!(res.status(), 200);
    let counties: Vec<Value> = res.json().await.unwrap();
    assert_eq!(names(&counties), ["Kings", "Queens"]);
    let ids: Vec<i64> = counties.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, env.a.county_ids);

    // The seed's header name works too.
    let token_of_b = Some(("Authorize", format!("Token {}", env.b.token)));
    let counties: Vec<Value> = http.get(COUNTIES, token_of_b).await.json().await.unwrap();
    assert_eq!(names(&counties), ["Bexar", "Travis"]);

    for header in [
        None,
        Some("Token nope".to_owned()),
        Some(format!("Bearer {}", env.a.token)),
    ] {
        let res = http
            .get(COUNTIES, header.map(|h| ("Authorization", h)))
            .await;
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    case_intake::admin::provision::revoke_key(&env.pool, env.a.api_key_id)
        .await
        .unwrap();
    assert_eq!(http.get(COUNTIES, token_of_a()).await.status(), 401);
    http.finish().await;
}
