//! The HTTP surface over real HTTP: liveness, readiness, metrics and the counties endpoint.

use std::sync::Arc;

use case_intake::app::http::{HttpState, serve};
use case_intake::infra::metrics::{ConsumerState, Metrics};
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Serves the HTTP surface of `metrics` on a free local port; returns its base URL.
async fn start_http(env: &TestEnv, metrics: Arc<Metrics>, stop: &CancellationToken) -> String {
    start_http_with(env, metrics, stop, std::time::Duration::from_secs(120)).await
}

async fn start_http_with(
    env: &TestEnv,
    metrics: Arc<Metrics>,
    stop: &CancellationToken,
    stall_limit: std::time::Duration,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        pool: env.pool.clone(),
        metrics,
        stall_limit,
    };
    tokio::spawn(serve(listener, state, stop.clone()));
    base
}

#[tokio::test]
async fn liveness_fails_while_messages_wait_and_nothing_is_consumed() {
    let env = TestEnv::new().await;
    let metrics = Metrics::shared();
    let stop = CancellationToken::new();
    let limit = std::time::Duration::from_millis(50);
    let base = start_http_with(&env, metrics.clone(), &stop, limit).await;
    let client = reqwest::Client::new();
    let live = || async { client.get(format!("{base}/healthz")).send().await.unwrap() };

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
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn probes_follow_the_consumer_and_metrics_count_outcomes() {
    let env = TestEnv::new().await;
    let metrics = Metrics::shared();
    let stop = CancellationToken::new();
    let base = start_http(&env, metrics.clone(), &stop).await;
    let client = reqwest::Client::new();

    let live = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(live.status(), 200);
    // No worker yet: alive but not ready.
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "not ready");

    let mut broker = Broker::connect(&env).await;
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(case_intake::app::supervisor::run_with(
        env.settings.clone(),
        worker_stop.clone(),
        metrics.clone(),
    ));
    broker.declare_topology(&env).await;
    let (h, v) = token_header(&env.a.token);
    let body = serde_json::to_vec(&seed_body(env.a.county_ids[0])).unwrap();
    broker.publish(Some("m1"), &[(h, &v)], None, &body).await;
    broker.publish(Some("m2"), &[], None, &body).await;
    broker.events(2).await;

    // Once the event is out, the consumer is running: ready.
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The counters are bumped, and the outbox rows marked published, just after the events
    // leave: poll until they show (bounded), then check them all.
    let created = r#"case_intake_intakes_total{outcome="created"} 1"#;
    let mut text = String::new();
    for _ in 0..600 {
        text = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text.contains(created)
            && text.contains(r#"code="unauthorized""#)
            && text.contains("case_intake_outbox_backlog 0")
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
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
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    stop.cancel();
    env.cleanup().await;
}

#[tokio::test]
async fn counties_endpoint_lists_only_the_callers_network() {
    let env = TestEnv::new().await;
    let stop = CancellationToken::new();
    let base = start_http(&env, Metrics::shared(), &stop).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/api/v1/counties/");

    let res = client
        .get(&url)
        .header("Authorization", format!("Token {}", env.a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let counties: Vec<Value> = res.json().await.unwrap();
    let names: Vec<&str> = counties
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Kings", "Queens"]);
    let ids: Vec<i64> = counties.iter().map(|c| c["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, env.a.county_ids);

    // The seed's header name works too.
    let res = client
        .get(&url)
        .header("Authorize", format!("Token {}", env.b.token))
        .send()
        .await
        .unwrap();
    let counties: Vec<Value> = res.json().await.unwrap();
    let names: Vec<&str> = counties
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Bexar", "Travis"]);

    for header in [
        None,
        Some("Token nope".to_owned()),
        Some(format!("Bearer {}", env.a.token)),
    ] {
        let mut req = client.get(&url);
        if let Some(h) = header {
            req = req.header("Authorization", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 401);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unauthorized");
    }
    case_intake::admin::provision::revoke_key(&env.pool, env.a.api_key_id)
        .await
        .unwrap();
    let res = client
        .get(&url)
        .header("Authorization", format!("Token {}", env.a.token))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    stop.cancel();
    env.cleanup().await;
}
