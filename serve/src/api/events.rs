//! `GET /v1/events`: server-sent events of this tenant's task state changes, from the
//! store's events table, so a client resumes with `Last-Event-ID` (or `?after=ID`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::Caller;
use crate::app::App;
use crate::problem::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    after: Option<i64>,
}

pub async fn stream(
    State(app): State<Arc<App>>,
    Caller(tenant): Caller,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_query", e.body_text()))?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<i64>().ok());
    let mut after = last.or(q.after).unwrap_or(0);
    let (tx, rx) = mpsc::channel::<Event>(64);
    let name = tenant.name().to_string();
    tokio::spawn(async move {
        let mut changes = app.changes.subscribe();
        loop {
            let rows = match app.store.events(&name, after, 256) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::error!("events: {e}");
                    return;
                }
            };
            if rows.is_empty() {
                let wait = async {
                    loop {
                        match changes.recv().await {
                            Ok(c) if c.tenant == name => return true,
                            Ok(_) => {}
                            Err(RecvError::Lagged(_)) => return true,
                            Err(RecvError::Closed) => return false,
                        }
                    }
                };
                if let Ok(false) = tokio::time::timeout(Duration::from_secs(5), wait).await {
                    return;
                }
                if tx.is_closed() {
                    return;
                }
                continue;
            }
            for row in rows {
                after = row.id;
                let data = serde_json::to_string(&row).unwrap_or_default();
                let event = Event::default()
                    .id(row.id.to_string())
                    .event(row.state.clone())
                    .data(data);
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
