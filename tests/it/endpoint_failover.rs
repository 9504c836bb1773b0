//! A worker given several broker endpoints: it passes over one that refuses and consumes
//! through the next (the metric names the endpoint, `/readyz` says ready), and while no
//! endpoint is reachable it reports `reconnecting` and `/readyz` answers 503.

use case_intake_harness::wait::{SETTLE, until};
use std::sync::Arc;
use std::time::Duration;

use case_intake::app::http::{HttpState, serve};
use case_intake::infra::metrics::{ConsumerState, Metrics};
use case_intake_harness::broker::LOCAL_BROKER;
use case_intake_harness::support::{Broker, TestEnv, seed_body, token_header};
use tokio_util::sync::CancellationToken;

/// A loopback port nothing listens on: bound, then released.
fn closed_endpoint() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!(
        "amqp://guest:guest@127.0.0.1:{}/%2f",
        l.local_addr().unwrap().port()
    )
}

/// Serves the HTTP surface of `metrics`; returns its base URL.
async fn surface(env: &TestEnv, metrics: &Arc<Metrics>, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let state = HttpState {
        pool: env.pool.clone(),
        metrics: metrics.clone(),
        stall_limit: Duration::from_secs(120),
    };
    tokio::spawn(serve(listener, state, stop.clone()));
    base
}

async fn status(base: &str, path: &str) -> u16 {
    reqwest::get(format!("{base}{path}"))
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_refused_endpoint_is_passed_over_and_none_reachable_is_not_ready() {
    let mut env = TestEnv::new().await;
    let stop = CancellationToken::new();

    // No endpoint reachable: reconnecting, not ready.
    let mut settings = env.settings.clone();
    settings.amqp.urls = Some(vec![closed_endpoint().into(), closed_endpoint().into()]);
    let metrics = Metrics::shared();
    let base = surface(&env, &metrics, &stop).await;
    let worker_stop = CancellationToken::new();
    let worker = tokio::spawn(case_intake::app::supervisor::run_with(
        settings,
        worker_stop.clone(),
        metrics.clone(),
    ));
    until("the consumers reconnecting", SETTLE, || async {
        metrics.state() == ConsumerState::Reconnecting
    })
    .await;
    assert_eq!(status(&base, "/readyz").await, 503);
    worker_stop.cancel();
    worker.await.unwrap().unwrap();

    // A refused endpoint and the broker: intake runs through the broker, whatever the order.
    env.settings.amqp.urls = Some(vec![
        closed_endpoint().into(),
        LOCAL_BROKER.to_owned().into(),
    ]);
    let metrics = Metrics::shared();
    let base = surface(&env, &metrics, &stop).await;
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
    broker.publish(Some("e1"), &[(h, &v)], None, &body).await;
    broker.events(1).await;
    assert_eq!(status(&base, "/readyz").await, 200);
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let on = r#"case_intake_broker_endpoint{connection="case-intake consumer",endpoint="127.0.0.1:5672/%2f"} 1"#;
    assert!(text.lines().any(|l| l == on), "{on} missing: {text}");
    assert!(!text.contains("guest"), "{text}");

    worker_stop.cancel();
    worker.await.unwrap().unwrap();
    stop.cancel();
    env.cleanup().await;
}
