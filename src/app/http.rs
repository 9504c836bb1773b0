//! The HTTP surface: liveness, readiness, Prometheus metrics, and the counties endpoint that
//! upstream systems query for `street_county` ids (seed: `/api/v1/counties/`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::infra::metrics::{ConsumerState, Metrics};
use crate::store;
use crate::store::auth::{TOKEN_HEADERS, hash_token, parse_token_header};

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    /// `/healthz` fails once messages have waited this long with no window completed.
    pub stall_limit: Duration,
}

/// Bound on every database call of a probe or scrape, so a hung database makes them answer
/// "not ready" rather than hang the orchestrator's probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/counties/", get(counties))
        .route("/api/v1/counties", get(counties))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Liveness: the process answers, and intake is not stuck (messages waiting in the intake
/// queue with no window completed for `intake.stall_limit_ms`, outside a database outage). A
/// stuck worker is one a restart can cure, so the orchestrator is told.
async fn healthz(State(s): State<HttpState>) -> Response {
    if s.metrics.stalled(s.stall_limit) {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "stalled: messages wait in the intake queue and none was processed within intake.stall_limit_ms\n",
        )
            .into_response()
    } else {
        "ok".into_response()
    }
}

async fn database_ok(pool: &PgPool) -> bool {
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, store::ping(pool)).await,
        Ok(Ok(_))
    )
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let state = s.metrics.state();
    let reason = if state != ConsumerState::Consuming {
        Some(format!("consumer is {state:?}"))
    } else if !database_ok(&s.pool).await {
        Some("database unreachable".to_owned())
    } else {
        None
    };
    match reason {
        None => (StatusCode::OK, Json(json!({"status": "ready"}))).into_response(),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "reason": reason})),
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let query = store::outbox_backlog(&s.pool);
    if let Ok(Ok((backlog, oldest))) = tokio::time::timeout(PROBE_TIMEOUT, query).await {
        s.metrics.set_outbox(backlog, oldest);
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Token")],
        Json(json!({"error": {
            "code": "unauthorized",
            "message": "a valid API token is required in the Authorization header as `Token <api_token>`"
        }})),
    )
        .into_response()
}

/// The counties of the caller's network.
async fn counties(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let token = TOKEN_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .and_then(parse_token_header);
    let Some(token) = token else {
        return unauthorized();
    };
    let unavailable = |e: sqlx::Error| {
        tracing::warn!(error = %e, "counties query failed");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": {"code": "unavailable", "message": "try again later"}})),
        )
            .into_response()
    };
    let caller = match store::caller_of(&s.pool, hash_token(token)).await {
        Ok(Some(caller)) => caller,
        Ok(None) => return unauthorized(),
        Err(e) => return unavailable(e),
    };
    match store::counties(&s.pool, &caller).await {
        Ok(counties) => Json(counties).into_response(),
        Err(e) => unavailable(e),
    }
}
