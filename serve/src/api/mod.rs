//! The HTTP API: routes, the bearer-token extractor and body reading. One file per group
//! of endpoints.

mod events;
mod info;
mod maps;
mod modules;
mod objects;
mod tasks;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use tower_http::timeout::TimeoutLayer;

use crate::app::App;
use crate::metrics::inc;
use crate::problem::ApiError;
use crate::tenants::Tenant;

/// The service's routes over `app`; a whole request (but a streamed answer's body) must be
/// done within `request_timeout`.
pub fn router(app: Arc<App>, request_timeout: Duration) -> Router {
    Router::new()
        .route("/v1/modules", post(modules::upload).get(modules::list))
        .route("/v1/modules/{sha256}", get(modules::show))
        .route("/v1/tasks", post(tasks::submit))
        .route("/v1/tasks/{id}", get(tasks::show))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/maps", post(maps::submit))
        .route("/v1/maps/{id}", get(maps::show))
        .route("/v1/maps/{id}/results", get(maps::results))
        .route("/v1/maps/{id}/cancel", post(maps::cancel))
        .route("/v1/objects", post(objects::create).get(objects::list))
        .route(
            "/v1/objects/{reference}",
            get(objects::show).delete(objects::delete),
        )
        .route("/v1/objects/{reference}/{op}", post(objects::operate))
        .route("/v1/events", get(events::stream))
        .route("/v1/usage", get(info::usage))
        .route("/v1/quota", get(info::quota))
        .route("/healthz", get(info::healthz))
        .route("/readyz", get(info::readyz))
        .route("/metrics", get(info::metrics))
        .fallback(|| async { ApiError::not_found("endpoint") })
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .with_state(app)
}

/// The calling tenant, from `Authorization: Bearer TOKEN`.
#[derive(Debug, Clone)]
pub struct Caller(pub Tenant);

impl FromRequestParts<Arc<App>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &Arc<App>) -> Result<Self, ApiError> {
        let unauthorized = |detail: &str| {
            inc(&app.metrics.unauthorized);
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "an `Authorization: Bearer TOKEN` header is required",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty());
        let Some(token) = token else {
            return Err(unauthorized(
                "the Authorization header must be `Bearer TOKEN`",
            ));
        };
        match app.tenants.authenticate(token) {
            Some(t) => Ok(Caller(t)),
            None => Err(unauthorized("the token is not valid")),
        }
    }
}

/// Reads a whole body of at most `limit` bytes within the body timeout: 413 past the
/// limit (at once, when a `Content-Length` says so), 408 when it arrives too slowly.
pub async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match tokio::time::timeout(app.http.body_timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the body did not arrive within {} s",
                app.http.body_timeout.as_secs_f64()
            ),
        )),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let over = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            if over {
                Err(too_large())
            } else {
                Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_body",
                    format!("the body could not be read: {e}"),
                ))
            }
        }
    }
}

/// Refuses a submission past `tenant`'s rate (429 with `Retry-After`).
pub fn check_rate(app: &App, tenant: &Tenant) -> Result<(), ApiError> {
    app.rates
        .take(tenant.name(), tenant.quotas().rate)
        .map_err(|seconds| {
            inc(&app.metrics.throttled);
            ApiError::too_many(
                "rate_limited",
                format!(
                    "over the rate quota of {} submissions a second",
                    tenant.quotas().rate
                ),
                seconds,
            )
        })
}

/// Refuses `items` more work when `tenant`'s queue quota would be passed.
pub fn check_queue(app: &App, tenant: &Tenant, items: usize) -> Result<(), ApiError> {
    let (queued, running) = app.dispatch.pending(tenant.name());
    let quota = tenant.quotas().queued as usize;
    if queued + running + items > quota {
        inc(&app.metrics.throttled);
        return Err(ApiError::too_many(
            "queue_full",
            format!(
                "{} items accepted and not finished, and {items} more would pass the queue quota of {quota}",
                queued + running
            ),
            1,
        ));
    }
    Ok(())
}

/// A fresh random id (128 bits, hex).
pub fn new_id() -> Result<String, ApiError> {
    let mut raw = [0u8; 16];
    getrandom::fill(&mut raw).map_err(ApiError::internal)?;
    Ok(crate::tenants::hex(&raw))
}

/// Runs a store call on a blocking thread.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::error::ServeError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError::internal(e)),
    }
}
