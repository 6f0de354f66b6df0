//! Maps: their items stored together, their records read back in input or completion order.

use rusqlite::{OptionalExtension, params};
use serde::Serialize;

use super::tasks::{NewTask, insert_task_row};
use super::{Store, now_ms, to_i64, to_u64};
use crate::error::ServeError;

/// A map read back for its tenant.
#[derive(Debug, Clone, Serialize)]
pub struct MapView {
    /// Its id.
    pub id: String,
    /// The module's SHA-256.
    pub module: String,
    /// The task.
    pub task: String,
    /// Items sent to a worker at a time.
    pub chunksize: u64,
    /// Whether results stream in input order by default.
    pub ordered: bool,
    /// Whether each item is an argument array.
    pub star: bool,
    /// How many items.
    pub total: u64,
    /// How many have finished (and are still kept).
    pub done: u64,
    /// Of them, failed.
    pub failed: u64,
}

impl Store {
    /// Stores a map and its items as queued, in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_map(
        &self,
        tenant: &str,
        map_id: &str,
        chunksize: u64,
        ordered: bool,
        star: bool,
        items: &[NewTask],
    ) -> Result<(), ServeError> {
        let Some(first) = items.first() else {
            return Ok(());
        };
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute(
            "INSERT INTO maps (id, tenant, module, task, chunksize, ordered, star, total, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                map_id,
                tenant,
                first.module,
                first.task,
                to_i64(chunksize),
                ordered,
                star,
                to_i64(items.len() as u64),
                now
            ],
        )?;
        for (i, item) in items.iter().enumerate() {
            insert_task_row(&tx, tenant, item, star, Some((map_id, i as u64)), now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The items of `tenant`'s map `map` still queued: (id, task, args).
    pub fn queued_items(
        &self,
        tenant: &str,
        map: &str,
    ) -> Result<Vec<(String, String, String)>, ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT id, task, args FROM tasks \
             WHERE map_id = ?1 AND tenant = ?2 AND state = 'queued' ORDER BY idx",
        )?;
        let rows = stmt
            .query_map(params![map, tenant], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// The chunk size of map `map_id`.
    pub fn map_chunksize(&self, map_id: &str) -> Result<u64, ServeError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT chunksize FROM maps WHERE id = ?1",
                params![map_id],
                |r| r.get::<_, i64>(0),
            )
            .optional()?
            .map_or(1, to_u64))
    }

    /// Map `id` as its tenant sees it.
    pub fn map(&self, tenant: &str, id: &str) -> Result<Option<MapView>, ServeError> {
        let conn = self.lock();
        let Some(mut view) = conn
            .query_row(
                "SELECT id, module, task, chunksize, ordered, star, total FROM maps \
                 WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                |r| {
                    Ok(MapView {
                        id: r.get(0)?,
                        module: r.get(1)?,
                        task: r.get(2)?,
                        chunksize: to_u64(r.get(3)?),
                        ordered: r.get(4)?,
                        star: r.get(5)?,
                        total: to_u64(r.get(6)?),
                        done: 0,
                        failed: 0,
                    })
                },
            )
            .optional()?
        else {
            return Ok(None);
        };
        let (done, failed): (i64, i64) = conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(1 - ok), 0) FROM results WHERE map_id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        view.done = to_u64(done);
        view.failed = to_u64(failed);
        Ok(Some(view))
    }

    /// A map's record lines from item `from` on, in input order, up to the first item not
    /// finished yet (at most `limit`).
    pub fn map_lines_in_order(
        &self,
        map_id: &str,
        from: u64,
        limit: u64,
    ) -> Result<Vec<(u64, String)>, ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT idx, line FROM results WHERE map_id = ?1 AND idx >= ?2 ORDER BY idx LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![map_id, to_i64(from), to_i64(limit)], |r| {
            Ok((to_u64(r.get(0)?), r.get::<_, Option<String>>(1)?))
        })?;
        let mut out = Vec::new();
        for (expected, row) in (from..).zip(rows) {
            let (idx, line) = row?;
            if idx != expected {
                break;
            }
            out.push((idx, line.unwrap_or_default()));
        }
        Ok(out)
    }

    /// A map's record lines stored after result `after` (a sequence number), as they
    /// completed: (sequence, line).
    pub fn map_lines_completed(
        &self,
        map_id: &str,
        after: i64,
        limit: u64,
    ) -> Result<Vec<(i64, String)>, ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, line FROM results WHERE map_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![map_id, after, to_i64(limit)], |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<String>>(1)?.unwrap_or_default(),
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
