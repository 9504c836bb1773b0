//! The HTTP surface: liveness, readiness, Prometheus metrics, the counties endpoint that
//! upstream systems query for `street_county` ids (seed: `/api/v1/counties/`), and the status
//! of a message key (`/api/v1/intakes/{key}`), both scoped to the caller's network.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;

use crate::admin::status;
use crate::infra::metrics::{ConsumerState, Metrics};
use crate::store;
use crate::store::auth::{Caller, TOKEN_HEADERS, hash_token, parse_token_header};

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
        .route("/api/v1/intakes/{key}", get(intake_status))
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

/// Why the database cannot take intakes now, if it cannot: unreachable, or read-only (a
/// standby, or the address still on the old primary after a failover).
async fn database_problem(pool: &PgPool) -> Option<&'static str> {
    match tokio::time::timeout(PROBE_TIMEOUT, store::probe(pool)).await {
        Ok(Ok(store::Health::Writable)) => None,
        Ok(Ok(store::Health::ReadOnly)) => Some("database read-only"),
        Ok(Err(_)) | Err(_) => Some("database unreachable"),
    }
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let state = s.metrics.state();
    let reason = if state != ConsumerState::Consuming {
        Some(format!("consumer is {state:?}"))
    } else {
        database_problem(&s.pool).await.map(str::to_owned)
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

/// The token of an `Authorization` (or the seed's `Authorize`) header: `Token <api_token>`.
fn token_of(headers: &HeaderMap) -> Option<&str> {
    TOKEN_HEADERS
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .and_then(parse_token_header)
}

/// The answer when the database fails or does not answer in time; the cause is logged.
fn unavailable(what: &str, cause: &dyn std::fmt::Display) -> Response {
    tracing::warn!(error = %cause, "{what} query failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": "unavailable", "message": "try again later"}})),
    )
        .into_response()
}

/// Bound on each database call of an API request, so a hung database answers 503 rather than
/// holding the connection.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs a database call within [`QUERY_TIMEOUT`]; a timeout or an error is the 503 answer.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, Response> {
    match tokio::time::timeout(QUERY_TIMEOUT, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(unavailable(what, &e)),
        Err(elapsed) => Err(unavailable(what, &elapsed)),
    }
}

/// The caller behind the request's token, or the 401 (or 503) answer.
async fn authenticate(s: &HttpState, headers: &HeaderMap, what: &str) -> Result<Caller, Response> {
    let Some(token) = token_of(headers) else {
        return Err(unauthorized());
    };
    bounded(what, store::caller_of(&s.pool, hash_token(token)))
        .await?
        .ok_or_else(unauthorized)
}

/// The counties of the caller's network.
async fn counties(State(s): State<HttpState>, headers: HeaderMap) -> Response {
    let caller = match authenticate(&s, &headers, "counties").await {
        Ok(caller) => caller,
        Err(answer) => return answer,
    };
    match bounded("counties", store::counties(&s.pool, &caller)).await {
        Ok(counties) => Json(counties).into_response(),
        Err(answer) => answer,
    }
}

/// The one answer for a key without an outcome in the caller's network, whatever the reason
/// (not received yet, still queued, another network's, a key that cannot exist): identical
/// bytes, so that the answer tells nothing about other networks.
fn no_outcome() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error": {
            "code": "not_found",
            "message": "no outcome is recorded for this message key in your network"
        }})),
    )
        .into_response()
}

/// What became of message key `key` in the caller's network (`admin::status`).
async fn intake_status(
    State(s): State<HttpState>,
    headers: HeaderMap,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let caller = match authenticate(&s, &headers, "intake status").await {
        Ok(caller) => caller,
        Err(answer) => return answer,
    };
    // A path that does not decode (not UTF-8) names a key that cannot exist.
    let Ok(Path(key)) = key else {
        return no_outcome();
    };
    match bounded("intake status", status::for_caller(&s.pool, &caller, &key)).await {
        Ok(Some(found)) => Json(found).into_response(),
        Ok(None) => no_outcome(),
        Err(answer) => answer,
    }
}
