//! The state changes of a tenant's tasks, for `/v1/events`.

use rusqlite::params;
use serde::Serialize;

use super::{Store, to_i64};
use crate::error::ServeError;

/// A state change of a task, for `/v1/events`.
#[derive(Debug, Clone, Serialize)]
pub struct EventRow {
    /// Its id, for `Last-Event-ID`.
    pub id: i64,
    /// The task.
    pub task: String,
    /// Its map, if an item.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub map: Option<String>,
    /// The new state.
    pub state: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
}

impl Store {
    /// A tenant's events after `after`, at most `limit`.
    pub fn events(
        &self,
        tenant: &str,
        after: i64,
        limit: u64,
    ) -> Result<Vec<EventRow>, ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT id, task_id, map_id, state, at_ms FROM events WHERE tenant = ?1 AND id > ?2 \
             ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![tenant, after, to_i64(limit)], |r| {
            Ok(EventRow {
                id: r.get(0)?,
                task: r.get(1)?,
                map: r.get(2)?,
                state: r.get(3)?,
                at_ms: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

pub(super) fn event(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    task: &str,
    map: Option<&str>,
    state: &str,
    now: i64,
) -> Result<(), ServeError> {
    tx.execute(
        "INSERT INTO events (tenant, task_id, map_id, state, at_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![tenant, task, map, state, now],
    )?;
    Ok(())
}
