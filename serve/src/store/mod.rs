//! The service's state in one SQLite file: modules, tasks, results, usage, maps, events and
//! idempotency keys. A task accepted with 202 is in the file before the answer goes out; its
//! result, its usage row and the hourly sums are written in one transaction, so the usage a
//! tenant is shown is exactly the sum over its results. One file per part of the state:
//! `schema`, `modules`, `tasks`, `maps`, `usage`, `events`; here the connection,
//! the sweeper of expired rows and the health checks.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, params};

use crate::error::ServeError;

mod events;
mod maps;
mod modules;
mod schema;
mod tasks;
mod usage;

pub use tasks::{Finished, Inserted, NewTask, RunSpec, TaskError, TaskLimits, TaskView};
pub use usage::{Cpu, UsageRow, UsageSums};

use schema::{SCHEMA, migrate};

/// How long events and the hourly usage sums are kept, in milliseconds.
const EVENTS_KEPT_MS: i64 = 24 * 3600 * 1000;
const HOURLY_KEPT_MS: i64 = 90 * 24 * 3600 * 1000;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The SQLite store. One connection, behind a lock: every operation is short.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Store, ServeError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ServeError::io(format!("creating {}", dir.display()), e))?;
        let conn = Connection::open(dir.join("state.sqlite3"))?;
        // WAL: a commit survives a kill of the process; NORMAL syncs at checkpoints.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes what has expired: results, their usage rows and tasks past their tenant's
    /// TTL, maps with no item left, idempotency keys whose task is gone, old events and
    /// hourly sums. Returns how many tasks went.
    pub fn sweep(&self) -> Result<usize, ServeError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        tx.execute("DELETE FROM results WHERE expires_ms <= ?1", params![now])?;
        tx.execute("DELETE FROM usage WHERE expires_ms <= ?1", params![now])?;
        let tasks = tx.execute(
            "DELETE FROM tasks WHERE state = 'done' AND expires_ms <= ?1",
            params![now],
        )?;
        if tasks > 0 {
            tx.execute(
                "DELETE FROM maps WHERE NOT EXISTS (SELECT 1 FROM tasks WHERE tasks.map_id = maps.id)",
                [],
            )?;
            tx.execute(
                "DELETE FROM idempotency WHERE NOT EXISTS \
                 (SELECT 1 FROM tasks WHERE tasks.id = idempotency.id)",
                [],
            )?;
        }
        tx.execute(
            "DELETE FROM events WHERE at_ms < ?1",
            params![now - EVENTS_KEPT_MS],
        )?;
        tx.execute(
            "DELETE FROM usage_hourly WHERE hour < ?1",
            params![now - HOURLY_KEPT_MS],
        )?;
        tx.commit()?;
        Ok(tasks)
    }

    /// How many tasks are in each state, for `/metrics`.
    pub fn state_counts(&self) -> Result<Vec<(String, u64)>, ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, to_u64(r.get(1)?))))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Whether the store answers (for `/readyz`).
    pub fn ping(&self) -> bool {
        self.lock()
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .is_ok()
    }
}
