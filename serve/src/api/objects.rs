//! `POST /v1/objects`, `GET /v1/objects`, `GET|DELETE /v1/objects/{ref}` and
//! `POST /v1/objects/{ref}/{op}`: a tenant's shared objects, by id or name (see
//! [`crate::objects`]).

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use wasmpool::ObjectError;

use super::{Caller, check_rate, new_id, read_body};
use crate::app::App;
use crate::objects::{self, CreateError, OpArgs, OpError, RefError, Spec};
use crate::problem::{ApiError, parse_json};
use crate::tenants::Tenant;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateObject {
    kind: String,
    name: Option<String>,
    /// Queues: the most items held (0 or absent: unbounded).
    maxsize: Option<u64>,
    /// Pipes: both ends send and receive (default true).
    duplex: Option<bool>,
    /// Semaphores: the initial value (default 1).
    value: Option<u64>,
    /// Barriers: the parties (at least 1).
    parties: Option<u32>,
}

/// The spec a creation asks for; a parameter the kind does not take is 422 naming it.
fn spec_of(req: &CreateObject) -> Result<Spec, ApiError> {
    let refuse = |field: &str| {
        Err(ApiError::invalid(
            "invalid_field",
            field,
            format!("a {} takes no `{field}`", req.kind),
        ))
    };
    let takes = |field: &str, given: bool, allowed: bool| -> Result<(), ApiError> {
        if given && !allowed {
            return refuse(field);
        }
        Ok(())
    };
    let queue = matches!(req.kind.as_str(), "queue" | "joinable_queue");
    let semaphore = matches!(req.kind.as_str(), "semaphore" | "bounded_semaphore");
    takes("maxsize", req.maxsize.is_some(), queue)?;
    takes("duplex", req.duplex.is_some(), req.kind == "pipe")?;
    takes("value", req.value.is_some(), semaphore)?;
    takes("parties", req.parties.is_some(), req.kind == "barrier")?;
    let maxsize = usize::try_from(req.maxsize.unwrap_or(0)).unwrap_or(usize::MAX);
    Ok(match req.kind.as_str() {
        "queue" => Spec::Queue { maxsize },
        "joinable_queue" => Spec::JoinableQueue { maxsize },
        "pipe" => Spec::Pipe {
            duplex: req.duplex.unwrap_or(true),
        },
        "lock" => Spec::Lock,
        "rlock" => Spec::RLock,
        "semaphore" => Spec::Semaphore {
            value: req.value.unwrap_or(1),
        },
        "bounded_semaphore" => Spec::BoundedSemaphore {
            value: req.value.unwrap_or(1),
        },
        "event" => Spec::Event,
        "barrier" => match req.parties {
            Some(p) if p > 0 => Spec::Barrier { parties: p },
            _ => {
                return Err(ApiError::invalid(
                    "invalid_field",
                    "parties",
                    "a barrier needs `parties`, at least 1",
                ));
            }
        },
        "condition" => Spec::Condition,
        "dict" => Spec::Dict,
        "list" => Spec::List,
        other => {
            return Err(ApiError::invalid(
                "invalid_field",
                "kind",
                format!(
                    "unknown kind `{other}`; the kinds are {}",
                    objects::KINDS.join(", ")
                ),
            ));
        }
    })
}

pub async fn create(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_rate(&app, &tenant)?;
    let body = read_body(&app, &headers, body, app.http.max_body_bytes).await?;
    let req: CreateObject = parse_json(&body)?;
    let spec = spec_of(&req)?;
    if let Some(name) = &req.name
        && !objects::valid_name(name)
    {
        return Err(ApiError::invalid(
            "invalid_field",
            "name",
            "a name is 1 to 64 of A-Z, a-z, 0-9, `_` and `-`, and not 32 hex digits (an id)",
        ));
    }
    let max = tenant.quotas().max_objects;
    let id = new_id()?;
    let name = tenant.name().to_string();
    let made = app.clone();
    // On a cluster, a round trip to its Redis.
    // The view is made here: the entry's handle is dropped on the blocking thread.
    let view = tokio::task::spawn_blocking(move || {
        made.exec
            .objects()
            .create(&name, id, req.name, spec, max)
            .map(|entry| entry.view())
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        CreateError::Quota(_) => ApiError::too_many(
            "object_quota",
            format!("{e}; delete one to make another"),
            1,
        ),
        CreateError::NameTaken(_) => {
            ApiError::new(StatusCode::CONFLICT, "name_taken", e.to_string()).field("name")
        }
        CreateError::Unavailable(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "objects_unavailable",
            e.to_string(),
        ),
    })?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

pub async fn list(State(app): State<Arc<App>>, Caller(tenant): Caller) -> Response {
    let q = tenant.quotas();
    let objects: Vec<Value> = app.exec.objects().views(tenant.name());
    Json(json!({"objects": objects, "max_objects": q.max_objects})).into_response()
}

fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "object_not_found",
        "no object of that id or name for this tenant",
    )
}

pub async fn show(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    let view = app
        .exec
        .objects()
        .show(tenant.name(), &reference)
        .ok_or_else(not_found)?;
    Ok(Json(view).into_response())
}

pub async fn delete(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(reference): Path<String>,
) -> Result<Response, ApiError> {
    // On a cluster, a round trip to its Redis. Running tasks that were given the object
    // hold it until they end.
    let deleted =
        tokio::task::spawn_blocking(move || app.exec.objects().delete(tenant.name(), &reference))
            .await
            .map_err(ApiError::internal)?;
    if !deleted {
        return Err(not_found());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Ends the count of a call in progress when dropped (also when the request is dropped).
struct CallGuard {
    app: Arc<App>,
    tenant: String,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        self.app.exec.objects().end_call(&self.tenant);
    }
}

pub async fn operate(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path((reference, op)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let spec = app
        .exec
        .objects()
        .spec(tenant.name(), &reference)
        .ok_or_else(not_found)?;
    if !spec.ops().contains(&op.as_str()) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_operation",
            format!(
                "a {} has no operation `{op}`; its operations are {}",
                spec.kind(),
                spec.ops().join(", ")
            ),
        ));
    }
    let body = read_body(&app, &headers, body, app.http.max_body_bytes).await?;
    let args: Map<String, Value> = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        parse_json(&body)?
    };
    let args = OpArgs::new(args, app.http.max_wait);
    if !app
        .exec
        .objects()
        .begin_call(tenant.name(), tenant.quotas().object_calls)
    {
        return Err(ApiError::too_many(
            "too_many_object_calls",
            format!(
                "{} operations on this tenant's objects are in progress, its quota",
                tenant.quotas().object_calls
            ),
            1,
        ));
    }
    let guard = CallGuard {
        app: app.clone(),
        tenant: tenant.name().to_string(),
    };
    let owner = tenant.id;
    let registry = app.clone();
    // Looked up again on the blocking thread, which holds it (and may free it) while the
    // operation runs; deleted meanwhile, it is gone.
    let result = tokio::task::spawn_blocking(move || {
        let entry = registry.exec.objects().get(tenant.name(), &reference)?;
        let r = objects::call(owner, &entry, &op, &args);
        drop(guard);
        Some(r)
    })
    .await
    .map_err(ApiError::internal)?;
    match result {
        None => Err(not_found()),
        Some(Ok(value)) => Ok(Json(json!({ "value": value })).into_response()),
        Some(Err(e)) => Err(op_problem(e)),
    }
}

/// The problem an operation's failure is answered with.
fn op_problem(e: OpError) -> ApiError {
    let conflict = |code, e: &ObjectError| ApiError::new(StatusCode::CONFLICT, code, e.to_string());
    match e {
        OpError::Field { field, detail } => ApiError::invalid("invalid_field", &field, detail),
        OpError::Object(e) => match &e {
            ObjectError::Timeout => conflict("timeout", &e),
            ObjectError::Empty => conflict("empty", &e),
            ObjectError::Full => conflict("full", &e),
            ObjectError::Closed(_) => conflict("closed", &e),
            ObjectError::Broken => conflict("broken_barrier", &e),
            ObjectError::NotOwner(_) => conflict("not_owner", &e),
            ObjectError::Missing(_) => conflict("missing", &e),
            ObjectError::TooLarge(_) => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "value_too_large",
                e.to_string(),
            ),
            ObjectError::Stale(_) => ApiError::new(StatusCode::GONE, "object_gone", e.to_string()),
            // The cluster's Redis is down: not the caller's fault, and worth trying again
            // (as a new object then is: the same 503 and code).
            ObjectError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "objects_unavailable",
                e.to_string(),
            ),
            ObjectError::Invalid(_) | ObjectError::Encode(_) | ObjectError::Decode(_) => {
                ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_operation",
                    e.to_string(),
                )
            }
        },
    }
}

/// Checks the objects named by a task's arguments (`field` `args`) or by a map's items
/// (`items`, each one argument or with `star` an array of them): 404 for a name this tenant
/// has no object of (whether another tenant has one or not), 422 for a raw handle.
pub fn check_refs(
    app: &App,
    tenant: &Tenant,
    field: &str,
    items: &[Value],
    star: bool,
    one_task: bool,
) -> Result<(), ApiError> {
    let registry = app.exec.objects();
    let checked = if one_task {
        registry.check(tenant.name(), std::iter::once(items))
    } else {
        registry.check(
            tenant.name(),
            items.iter().map(|item| match (star, item) {
                (true, Value::Array(args)) => args.as_slice(),
                _ => std::slice::from_ref(item),
            }),
        )
    };
    let Err((item, e)) = checked else {
        return Ok(());
    };
    let at = if one_task {
        format!("{field}[{}]", e.index())
    } else if star {
        format!("{field}[{item}][{}]", e.index())
    } else {
        format!("{field}[{item}]")
    };
    Err(match e {
        RefError::NotFound { reference, .. } => ApiError::new(
            StatusCode::NOT_FOUND,
            "object_not_found",
            format!("{at}: `@{reference}` names no object of this tenant"),
        )
        .field(at),
        RefError::Forged { .. } => ApiError::invalid(
            "forged_handle",
            &at,
            format!("{at} holds an object handle; pass an object by name, as \"@NAME\" or \"@ID\""),
        ),
    })
}
