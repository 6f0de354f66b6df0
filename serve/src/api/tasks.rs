//! `POST /v1/tasks`, `GET /v1/tasks/{id}`, `POST /v1/tasks/{id}/cancel`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast::error::RecvError;

use super::{Caller, blocking, check_queue, check_rate, new_id, read_body};
use crate::app::App;
use crate::dispatch::Work;
use crate::metrics::inc;
use crate::problem::{ApiError, parse_json};
use crate::store::{Inserted, NewTask, TaskLimits, TaskView};
use crate::tenants::{Tenant, hex};

/// The limits a submission may ask for; each is checked against the tenant's ceiling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsRequest {
    /// Memory, MiB.
    pub memory_mib: Option<u64>,
    /// Time, seconds.
    pub timeout_s: Option<f64>,
    /// Output, MiB.
    pub output_mib: Option<u64>,
    /// Fuel.
    pub fuel: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitTask {
    module: String,
    task: String,
    #[serde(default)]
    args: Vec<Value>,
    limits: Option<LimitsRequest>,
    retries: Option<u32>,
}

/// The most retries a submission may ask for.
pub const MAX_RETRIES: u32 = 10;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait: Option<f64>,
}

/// Resolves what a submission asks for against `tenant`'s ceilings: what it leaves out is
/// the ceiling (memory 256 MiB at most), what is over one is 422 naming the field.
pub fn resolve_limits(
    tenant: &Tenant,
    asked: Option<LimitsRequest>,
) -> Result<TaskLimits, ApiError> {
    let q = tenant.quotas();
    let asked = asked.unwrap_or_default();
    let over = |field: &str, detail: String| ApiError::invalid("over_quota", field, detail);
    let memory_mib = match asked.memory_mib {
        Some(0) => return Err(over("limits.memory_mib", "must be at least 1".into())),
        Some(m) if m > q.max_memory_mib => {
            return Err(over(
                "limits.memory_mib",
                format!(
                    "limits.memory_mib {m} is over this tenant's ceiling of {} MiB",
                    q.max_memory_mib
                ),
            ));
        }
        Some(m) => m,
        None => q.max_memory_mib.min(256),
    };
    let timeout_s = match asked.timeout_s {
        Some(t) if !(t.is_finite() && t > 0.0) => {
            return Err(over(
                "limits.timeout_s",
                "must be a number of seconds above 0".into(),
            ));
        }
        Some(t) if t > q.max_timeout_s => {
            return Err(over(
                "limits.timeout_s",
                format!(
                    "limits.timeout_s {t} is over this tenant's ceiling of {} s",
                    q.max_timeout_s
                ),
            ));
        }
        Some(t) => t,
        None => q.max_timeout_s,
    };
    let output_mib = match asked.output_mib {
        Some(0) => return Err(over("limits.output_mib", "must be at least 1".into())),
        Some(m) if m > q.max_output_mib => {
            return Err(over(
                "limits.output_mib",
                format!(
                    "limits.output_mib {m} is over this tenant's ceiling of {} MiB",
                    q.max_output_mib
                ),
            ));
        }
        Some(m) => m,
        None => q.max_output_mib,
    };
    let fuel = match (asked.fuel, q.max_fuel) {
        (Some(0), _) => return Err(over("limits.fuel", "must be at least 1".into())),
        (Some(f), Some(max)) if f > max => {
            return Err(over(
                "limits.fuel",
                format!("limits.fuel {f} is over this tenant's ceiling of {max}"),
            ));
        }
        (Some(f), _) => Some(f),
        (None, max) => max,
    };
    Ok(TaskLimits {
        memory_mib,
        timeout_s,
        output_mib,
        fuel,
    })
}

/// Checks that `tenant` uploaded `module` (404 otherwise, as for any other tenant's) and
/// that it has `task` (422).
pub async fn check_task(
    app: &Arc<App>,
    tenant: &Tenant,
    module: &str,
    task: &str,
) -> Result<(), ApiError> {
    if !app.store.has_module(tenant.name(), module)? {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "module_not_found",
            format!("no module {module} was uploaded by this tenant"),
        )
        .field("module"));
    }
    let a = app.clone();
    let m = module.to_string();
    let tasks = blocking(move || Ok(a.exec.module(&m).and_then(|m| m.tasks()))).await?;
    let tasks = tasks.map_err(ApiError::internal)?;
    if !tasks.iter().any(|t| t == task) {
        return Err(ApiError::invalid(
            "unknown_task",
            "task",
            format!(
                "module {module} has no task `{task}`; its tasks are: {}",
                tasks.join(", ")
            ),
        ));
    }
    Ok(())
}

fn check_retries(retries: Option<u32>) -> Result<u32, ApiError> {
    match retries {
        Some(r) if r > MAX_RETRIES => Err(ApiError::invalid(
            "invalid_field",
            "retries",
            format!("retries {r} is over the limit of {MAX_RETRIES}"),
        )),
        r => Ok(r.unwrap_or(0)),
    }
}

/// The wait a `?wait=` asks for, capped at the service's longest.
pub fn wait_of(
    app: &App,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Option<Duration>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()).field("wait")
    })?;
    match q.wait {
        None => Ok(None),
        Some(w) if !(w.is_finite() && w >= 0.0) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_query",
            "wait must be a number of seconds, at least 0",
        )
        .field("wait")),
        Some(w) => Ok(Some(Duration::from_secs_f64(
            w.min(app.http.max_wait.as_secs_f64()),
        ))),
    }
}

pub async fn submit(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    query: Result<Query<WaitQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let wait = wait_of(&app, query)?;
    check_rate(&app, &tenant)?;
    let body = read_body(&app, &headers, body, app.http.max_body_bytes).await?;
    let req: SubmitTask = parse_json(&body)?;
    let limits = resolve_limits(&tenant, req.limits)?;
    let retries = check_retries(req.retries)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if !k.is_empty() && k.len() <= 256 => Some(k.to_string()),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_idempotency_key",
                    "Idempotency-Key must be 1 to 256 visible ASCII characters",
                ));
            }
        },
    };
    check_task(&app, &tenant, &req.module, &req.task).await?;
    super::objects::check_refs(&app, &tenant, "args", &req.args, false, true)?;
    check_queue(&app, &tenant, 1)?;
    let body_sha = hex(&Sha256::digest(&body));
    let task = NewTask {
        id: new_id()?,
        module: req.module,
        task: req.task,
        args: Value::Array(req.args).to_string(),
        limits,
        retries,
    };
    let inserted = app.store.insert_task(
        tenant.name(),
        &task,
        key.as_deref().map(|k| (k, body_sha.as_str())),
    )?;
    let id = match inserted {
        Inserted::New(id) => {
            inc(&app.metrics.submitted);
            app.dispatch.push(tenant.name(), Work::Task(id.clone()));
            id
        }
        Inserted::Existing(id) => id,
        Inserted::Conflict => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_conflict",
                "this Idempotency-Key was used with a different body",
            ));
        }
    };
    answer(&app, &tenant, &id, wait).await
}

/// 200 with the task once done (waiting up to `wait` for it), else 202 with its id.
async fn answer(
    app: &Arc<App>,
    tenant: &Tenant,
    id: &str,
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    if let Some(wait) = wait
        && let Some(view) = wait_done(app, tenant, id, wait).await?
    {
        return Ok((StatusCode::OK, Json(view)).into_response());
    }
    let state = app
        .store
        .task_state(tenant.name(), id)?
        .map_or_else(|| "done".to_string(), |(s, _)| s);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "state": state})),
    )
        .into_response())
}

/// Task `id` once it is done, waiting up to `wait`; `None` if it is not done by then.
pub async fn wait_done(
    app: &Arc<App>,
    tenant: &Tenant,
    id: &str,
    wait: Duration,
) -> Result<Option<TaskView>, ApiError> {
    let mut changes = app.changes.subscribe();
    let deadline = tokio::time::Instant::from_std(Instant::now() + wait);
    loop {
        if let Some(view) = app.store.task(tenant.name(), id)?
            && view.state == "done"
        {
            return Ok(Some(view));
        }
        // Until a change of this task (or a lag, after which the store is looked at again).
        loop {
            match tokio::time::timeout_at(deadline, changes.recv()).await {
                Err(_) | Ok(Err(RecvError::Closed)) => return Ok(None),
                Ok(Err(RecvError::Lagged(_))) => break,
                Ok(Ok(c)) if c.task == id => break,
                Ok(Ok(_)) => {}
            }
        }
    }
}

pub async fn show(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    query: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let wait = wait_of(&app, query)?;
    if let Some(wait) = wait
        && let Some(view) = wait_done(&app, &tenant, &id, wait).await?
    {
        return Ok(Json(view).into_response());
    }
    match app.store.task(tenant.name(), &id)? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::not_found("task")),
    }
}

pub async fn cancel(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let Some((state, None)) = app.store.task_state(tenant.name(), &id)? else {
        return Err(ApiError::not_found("task"));
    };
    let cancelled = state != "done" && app.cancel(&tenant, &id)?;
    let view = app.store.task(tenant.name(), &id)?;
    let state = view.as_ref().map_or("done", |v| v.state.as_str());
    Ok(Json(json!({"id": id, "cancelled": cancelled, "state": state})).into_response())
}
