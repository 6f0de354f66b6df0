//! `POST /v1/maps` (items as a JSON array or an NDJSON body), `GET /v1/maps/{id}` and
//! `GET /v1/maps/{id}/results` (NDJSON records as the items finish, in input order or as
//! completed; the records are `wasmpool map`'s, from [`wasmpool::lines`]).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::tasks::{LimitsRequest, MAX_RETRIES, check_task, resolve_limits};
use super::{Caller, check_queue, check_rate, new_id, read_body};
use crate::app::App;
use crate::dispatch::Work;
use crate::metrics::inc;
use crate::problem::{ApiError, parse_json};
use crate::store::NewTask;

/// The most items one map may have (besides the tenant's queue quota).
pub const MAX_MAP_ITEMS: usize = 1_000_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitMap {
    module: String,
    task: String,
    items: Vec<Value>,
    chunksize: Option<u64>,
    #[serde(default = "yes")]
    ordered: bool,
    #[serde(default)]
    star: bool,
    limits: Option<LimitsRequest>,
    retries: Option<u32>,
}

fn yes() -> bool {
    true
}

/// The parameters of an NDJSON map, in the query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapQuery {
    module: String,
    task: String,
    chunksize: Option<u64>,
    #[serde(default = "yes")]
    ordered: bool,
    #[serde(default)]
    star: bool,
    retries: Option<u32>,
    memory_mib: Option<u64>,
    timeout_s: Option<f64>,
    output_mib: Option<u64>,
    fuel: Option<u64>,
}

fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .is_some_and(|t| {
            matches!(
                t.as_str(),
                "application/x-ndjson" | "application/ndjson" | "application/jsonl"
            )
        })
}

pub async fn submit(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_rate(&app, &tenant)?;
    let body = read_body(&app, &headers, body, app.http.max_body_bytes).await?;
    let req = if is_ndjson(&headers) {
        let pairs = query.map(|Query(q)| q).unwrap_or_default();
        let text = serde_urlencoded_pairs(&pairs);
        let q: MapQuery = serde_json_from_query(&text)?;
        let mut items = Vec::new();
        for input in wasmpool::lines::Lines::new(&body[..]) {
            match input {
                Ok(v) => items.push(v),
                Err(wasmpool::lines::LinesError::BadLine { line, source }) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed_json",
                        format!("line {line} is not valid JSON: {source}"),
                    )
                    .field(format!("line {line}")));
                }
                Err(e) => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "bad_body",
                        e.to_string(),
                    ));
                }
            }
        }
        SubmitMap {
            module: q.module,
            task: q.task,
            items,
            chunksize: q.chunksize,
            ordered: q.ordered,
            star: q.star,
            limits: Some(LimitsRequest {
                memory_mib: q.memory_mib,
                timeout_s: q.timeout_s,
                output_mib: q.output_mib,
                fuel: q.fuel,
            }),
            retries: q.retries,
        }
    } else {
        parse_json(&body)?
    };
    if req.items.len() > MAX_MAP_ITEMS {
        return Err(ApiError::invalid(
            "too_many_items",
            "items",
            format!(
                "{} items; a map may have at most {MAX_MAP_ITEMS}",
                req.items.len()
            ),
        ));
    }
    if req.star
        && let Some(i) = req.items.iter().position(|v| !v.is_array())
    {
        return Err(ApiError::invalid(
            "invalid_field",
            &format!("items[{i}]"),
            "with star, each item must be an array of arguments",
        ));
    }
    let limits = resolve_limits(&tenant, req.limits)?;
    let retries = match req.retries {
        Some(r) if r > MAX_RETRIES => {
            return Err(ApiError::invalid(
                "invalid_field",
                "retries",
                format!("retries {r} is over the limit of {MAX_RETRIES}"),
            ));
        }
        r => r.unwrap_or(0),
    };
    let n = req.items.len();
    let chunksize = match req.chunksize {
        Some(0) => {
            return Err(ApiError::invalid(
                "invalid_field",
                "chunksize",
                "chunksize must be at least 1",
            ));
        }
        Some(c) if c > wasmpool::Pool::MAX_CHUNKSIZE as u64 => {
            return Err(ApiError::invalid(
                "invalid_field",
                "chunksize",
                format!(
                    "chunksize {c} is over the limit of {}",
                    wasmpool::Pool::MAX_CHUNKSIZE
                ),
            ));
        }
        Some(c) => c as usize,
        // Python's default: four chunks per worker.
        None => n.div_ceil(app.exec.workers() * 4).max(1),
    };
    check_task(&app, &tenant, &req.module, &req.task).await?;
    super::objects::check_refs(&app, &tenant, "items", &req.items, req.star, false)?;
    check_queue(&app, &tenant, n)?;
    let map_id = new_id()?;
    let mut items = Vec::with_capacity(n);
    for input in &req.items {
        items.push(NewTask {
            id: new_id()?,
            module: req.module.clone(),
            task: req.task.clone(),
            args: input.to_string(),
            limits,
            retries,
        });
    }
    app.store.insert_map(
        tenant.name(),
        &map_id,
        chunksize as u64,
        req.ordered,
        req.star,
        &items,
    )?;
    inc(&app.metrics.submitted);
    for chunk in items.chunks(chunksize) {
        app.dispatch.push(
            tenant.name(),
            Work::Items {
                map: map_id.clone(),
                ids: chunk.iter().map(|t| t.id.clone()).collect(),
            },
        );
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": map_id, "total": n, "chunksize": chunksize})),
    )
        .into_response())
}

/// The query's pairs as a JSON object of strings, numbers and booleans, so that the one
/// parser that names fields ([`parse_json`]) reads it too.
fn serde_urlencoded_pairs(pairs: &[(String, String)]) -> Value {
    let mut map = serde_json::Map::new();
    for (k, v) in pairs {
        let value = match (k.as_str(), v.as_str()) {
            ("module" | "task", _) => Value::String(v.clone()),
            (_, "true") => Value::Bool(true),
            (_, "false") => Value::Bool(false),
            _ => serde_json::from_str::<serde_json::Number>(v)
                .map(Value::Number)
                .unwrap_or_else(|_| Value::String(v.clone())),
        };
        map.insert(k.clone(), value);
    }
    Value::Object(map)
}

fn serde_json_from_query<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, ApiError> {
    parse_json(v.to_string().as_bytes()).map_err(|mut e| {
        e.detail = format!("in the query string: {}", e.detail);
        e
    })
}

pub async fn show(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    match app.store.map(tenant.name(), &id)? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::not_found("map")),
    }
}

/// `POST /v1/maps/{id}/cancel`: what of the map has not finished fails as `cancelled`
/// (queued items at once, running ones as their workers are stopped); finished items keep
/// their results. The results stream then ends with the cancelled items' records.
pub async fn cancel(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if app.store.map(tenant.name(), &id)?.is_none() {
        return Err(ApiError::not_found("map"));
    }
    let (a, t, m) = (app.clone(), tenant.clone(), id.clone());
    let (queued, running) = super::blocking(move || a.cancel_map(&t, &m)).await?;
    let view = app.store.map(tenant.name(), &id)?;
    Ok(Json(json!({
        "id": id,
        "cancelled_queued": queued,
        "running_chunks_stopped": running,
        "map": view,
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsQuery {
    /// `input` or `completed` (default: the map's `ordered`).
    order: Option<String>,
}

pub async fn results(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    Path(id): Path<String>,
    query: Result<Query<ResultsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let Some(map) = app.store.map(tenant.name(), &id)? else {
        return Err(ApiError::not_found("map"));
    };
    let ordered = match q.order.as_deref() {
        None => map.ordered,
        Some("input") => true,
        Some("completed") => false,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_query",
                format!("order must be `input` or `completed`, not `{other}`"),
            )
            .field("order"));
        }
    };
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let tenant_name = tenant.name().to_string();
    tokio::spawn(stream_records(app, tenant_name, id, map.total, ordered, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(response)
}

/// Sends a map's records down `tx` as they are stored, until every item's is sent, the
/// map is gone (expired) or the client has gone.
async fn stream_records(
    app: Arc<App>,
    tenant: String,
    map: String,
    total: u64,
    ordered: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut changes = app.changes.subscribe();
    let (mut next, mut after, mut sent) = (0u64, 0i64, 0u64);
    while sent < total {
        let batch = if ordered {
            app.store
                .map_lines_in_order(&map, next, 512)
                .map(|rows| rows.into_iter().map(|(i, l)| (i as i64, l)).collect())
        } else {
            app.store.map_lines_completed(&map, after, 512)
        };
        let rows: Vec<(i64, String)> = match batch {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!("streaming map {map}: {e}");
                return;
            }
        };
        if rows.is_empty() {
            if !matches!(app.store.map(&tenant, &map), Ok(Some(_))) {
                return;
            }
            // Until one of this map's items changes (a lag or a second: look again).
            let wait = async {
                loop {
                    match changes.recv().await {
                        Ok(c) if c.map.as_deref() == Some(map.as_str()) => return,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) | Err(RecvError::Closed) => return,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
            continue;
        }
        let mut chunk = Vec::new();
        for (key, line) in rows {
            if ordered {
                next = key as u64 + 1;
            } else {
                after = key;
            }
            chunk.extend_from_slice(line.as_bytes());
            sent += 1;
        }
        if tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
    }
}
