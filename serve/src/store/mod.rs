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

/// The write-ahead log's length, in pages, past which a commit checkpoints it itself: a
/// ceiling only. The log is checkpointed in the background ([`Store::checkpoint`], every
/// second), because a checkpoint in a commit (SQLite's default, every 1,000 pages) syncs the
/// file and copies the log under the store's lock: a few milliseconds that the request
/// which happened to commit then waited, every hundred or so requests.
const WAL_CEILING_PAGES: i64 = 16_384;

/// How long the store's connection waits, at most, for a lock the checkpointer holds.
const BUSY_FOR: std::time::Duration = std::time::Duration::from_secs(5);
/// How long it sleeps between tries.
const BUSY_STEP: std::time::Duration = std::time::Duration::from_micros(200);

/// The connection's busy handler: tries again every [`BUSY_STEP`] for up to [`BUSY_FOR`].
/// SQLite's own (`busy_timeout`) backs off to sleeps of tens of milliseconds, so a commit
/// that met the background checkpoint's brief lock waited ~50 ms for it.
fn wait_briefly(tries: i32) -> bool {
    let limit = BUSY_FOR.as_micros() / BUSY_STEP.as_micros();
    if u128::try_from(tries).unwrap_or(u128::MAX) >= limit {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// The SQLite store. One connection, behind a lock: every operation is short. A second one
/// only checkpoints the write-ahead log, off the requests' path.
#[derive(Debug)]
pub struct Store {
    conn: Mutex<Connection>,
    checkpointer: Mutex<Connection>,
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
        conn.busy_handler(Some(wait_briefly))?;
        conn.pragma_update(None, "wal_autocheckpoint", WAL_CEILING_PAGES)?;
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        let checkpointer = Connection::open(dir.join("state.sqlite3"))?;
        checkpointer.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(Store {
            conn: Mutex::new(conn),
            checkpointer: Mutex::new(checkpointer),
        })
    }

    /// Copies what the write-ahead log holds into the database file, as far as readers
    /// allow (a passive checkpoint: it waits for no one, and commits go on meanwhile).
    /// Returns the log's length and how much of it is in the file now, in pages.
    pub fn checkpoint(&self) -> Result<(i64, i64), ServeError> {
        let conn = self.checkpointer.lock().unwrap_or_else(|p| p.into_inner());
        Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get(1)?, r.get(2)?))
        })?)
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

#[cfg(test)]
mod tests {
    #[test]
    fn commits_leave_the_checkpoint_to_the_background_and_it_copies_the_whole_log() {
        let dir = std::env::temp_dir().join(format!("wasmpool-store-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = super::Store::open(&dir).unwrap();
        // Past SQLite's default of 1,000 pages: no commit checkpoints the log itself.
        for i in 0..1_200 {
            store
                .lock()
                .execute(
                    "INSERT INTO events (tenant, task_id, state, at_ms) VALUES ('t', ?2, 'x', ?1)",
                    rusqlite::params![i, "y".repeat(3000)],
                )
                .unwrap();
        }
        let (log, copied) = store.checkpoint().unwrap();
        let after = store.checkpoint().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            log > 1_000,
            "the log held {log} pages: a commit checkpointed it"
        );
        assert_eq!(
            copied, log,
            "a passive checkpoint with no reader copies the whole log"
        );
        assert_eq!(after.1, after.0);
    }
}
