//! `GET /v1/usage`, `GET /v1/quota`, `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use super::Caller;
use crate::app::App;
use crate::problem::ApiError;
use crate::store::UsageSums;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only tasks finished at or after this (ms since the epoch).
    since: Option<i64>,
    /// At most this many task rows (default 1000, at most 100000).
    limit: Option<u64>,
}

/// A tenant's usage: its kept tasks' rows (newest first), its hourly sums, and the totals of
/// those sums. Each task's row and its hour's sums are written with its result, in one
/// transaction, so the totals are the sums over its results.
pub async fn usage(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(1000).min(100_000);
    let (tasks, hours) = app
        .store
        .usage(tenant.name(), q.since.unwrap_or(0), limit)?;
    let mut totals = UsageSums::default();
    for h in &hours {
        totals.tasks += h.tasks;
        totals.failed += h.failed;
        totals.wall_ms += h.wall_ms;
        totals.fuel += h.fuel;
        totals.cpu = crate::store::Cpu::from_micros(totals.cpu.cpu_us + h.cpu.cpu_us);
        // The largest, as each hour's is.
        totals.peak_memory_bytes = totals.peak_memory_bytes.max(h.peak_memory_bytes);
        totals.bytes_in += h.bytes_in;
        totals.bytes_out += h.bytes_out;
    }
    Ok(Json(json!({
        "tenant": tenant.name(),
        "tasks": tasks,
        "hours": hours,
        "totals": totals,
    }))
    .into_response())
}

pub async fn quota(State(app): State<Arc<App>>, Caller(tenant): Caller) -> Response {
    let (queued, running) = app.dispatch.pending(tenant.name());
    let q = tenant.quotas();
    Json(json!({
        "tenant": tenant.name(),
        "weight": tenant.entry.weight,
        "quotas": q,
        "queued": queued,
        "running": running,
        "objects": app.exec.objects().count(tenant.name()),
        "submissions_available": app.rates.available(tenant.name(), q.rate).floor(),
    }))
    .into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.store.ping() && !app.tenants.all().is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

pub async fn metrics(State(app): State<Arc<App>>) -> Result<Response, ApiError> {
    let states = app.store.state_counts()?;
    let text = app
        .metrics
        .render(&states, &app.dispatch.depths(), app.exec.pools());
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    Ok(response)
}
