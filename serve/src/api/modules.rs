//! `POST /v1/modules` (a `.wasm` component as the body) and `GET /v1/modules`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{Caller, blocking, read_body};
use crate::app::App;
use crate::problem::ApiError;
use crate::tenants::hex;

pub async fn upload(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&app, &headers, body, app.http.max_module_bytes).await?;
    let sha = hex(&Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let a = app.clone();
    let s = sha.clone();
    // Validated and compiled before it is accepted: a bad module is refused here.
    let tasks = blocking(move || Ok(a.exec.add_module(&s, &bytes))).await?;
    let tasks = match tasks {
        Ok(tasks) => tasks,
        Err(e @ (wasmpool::Error::BadModule { .. } | wasmpool::Error::UnknownTask { .. })) => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_module",
                // The origin is the service's own path: not the tenant's business.
                match &e {
                    wasmpool::Error::BadModule { message, .. } => message.clone(),
                    other => other.to_string(),
                },
            ));
        }
        Err(e) => return Err(ApiError::internal(e)),
    };
    app.store.add_module(tenant.name(), &sha, size)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"sha256": sha, "size": size, "tasks": tasks})),
    )
        .into_response())
}

pub async fn list(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
) -> Result<Response, ApiError> {
    let modules: Vec<_> = app
        .store
        .modules(tenant.name())?
        .into_iter()
        .map(|(sha256, size)| json!({"sha256": sha256, "size": size}))
        .collect();
    Ok(Json(json!({ "modules": modules })).into_response())
}

/// `GET /v1/modules/{sha256}`: a module this tenant uploaded, with its tasks (404 for any
/// other): a client asks before it uploads the same bytes again.
pub async fn show(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    let Some(size) = app
        .store
        .modules(tenant.name())?
        .into_iter()
        .find_map(|(s, size)| (s == sha).then_some(size))
    else {
        return Err(ApiError::not_found("module"));
    };
    let a = app.clone();
    let s = sha.clone();
    let tasks = blocking(move || Ok(a.exec.module(&s).and_then(|m| m.tasks()))).await?;
    let tasks = tasks.map_err(ApiError::internal)?;
    Ok(Json(json!({"sha256": sha, "size": size, "tasks": tasks})).into_response())
}
