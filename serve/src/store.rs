//! The service's state in one SQLite file: modules, tasks, results, usage, maps, events and
//! idempotency keys. A task accepted with 202 is in the file before the answer goes out; its
//! result, its usage row and the hourly sums are written in one transaction, so the usage a
//! tenant is shown is exactly the sum over its results.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::error::ServeError;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS modules (
    tenant TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL, created_ms INTEGER NOT NULL,
    PRIMARY KEY (tenant, sha256));
CREATE TABLE IF NOT EXISTS tasks (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, module TEXT NOT NULL, task TEXT NOT NULL,
    args TEXT NOT NULL, star INTEGER NOT NULL DEFAULT 0, limits TEXT NOT NULL,
    retries INTEGER NOT NULL, state TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
    created_ms INTEGER NOT NULL, started_ms INTEGER, finished_ms INTEGER,
    map_id TEXT, idx INTEGER, expires_ms INTEGER);
CREATE INDEX IF NOT EXISTS tasks_state ON tasks (state, seq);
CREATE INDEX IF NOT EXISTS tasks_map ON tasks (map_id, idx);
CREATE INDEX IF NOT EXISTS tasks_expiry ON tasks (expires_ms);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE, tenant TEXT NOT NULL, map_id TEXT, idx INTEGER,
    ok INTEGER NOT NULL, value TEXT, error_code TEXT, error TEXT, line TEXT,
    expires_ms INTEGER NOT NULL, stdout TEXT, stderr TEXT);
CREATE INDEX IF NOT EXISTS results_map ON results (map_id, idx);
CREATE INDEX IF NOT EXISTS results_expiry ON results (expires_ms);
CREATE TABLE IF NOT EXISTS usage (
    task_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, finished_ms INTEGER NOT NULL,
    ok INTEGER NOT NULL, wall_ms INTEGER NOT NULL, fuel INTEGER,
    bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
    cpu_us INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS usage_tenant ON usage (tenant, finished_ms);
CREATE TABLE IF NOT EXISTS usage_hourly (
    tenant TEXT NOT NULL, hour INTEGER NOT NULL, tasks INTEGER NOT NULL, failed INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL, fuel INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, cpu_us INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, hour));
CREATE TABLE IF NOT EXISTS maps (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, module TEXT NOT NULL, task TEXT NOT NULL,
    chunksize INTEGER NOT NULL, ordered INTEGER NOT NULL, star INTEGER NOT NULL,
    total INTEGER NOT NULL, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS idempotency (
    tenant TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL, id TEXT NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (tenant, key));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, task_id TEXT NOT NULL,
    map_id TEXT, state TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS events_tenant ON events (tenant, id);
";

/// Columns added since the first schema, added to a state file made before them:
/// (table, column, declaration).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("results", "stdout", "TEXT"),
    ("results", "stderr", "TEXT"),
    ("usage", "cpu_us", "INTEGER NOT NULL DEFAULT 0"),
    ("usage_hourly", "cpu_us", "INTEGER NOT NULL DEFAULT 0"),
];

/// Adds the [`ADDED_COLUMNS`] a table lacks.
fn migrate(conn: &Connection) -> Result<(), ServeError> {
    for (table, column, decl) in ADDED_COLUMNS {
        let mut stmt = conn.prepare(&format!("PRAGMA table_info({table})"))?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))?
            .collect::<Result<Vec<_>, _>>()?;
        if !names.iter().any(|n| n == column) {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))?;
        }
    }
    Ok(())
}

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

/// The limits one task runs under, resolved against its tenant's ceilings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct TaskLimits {
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Time, seconds.
    pub timeout_s: f64,
    /// Output, MiB.
    pub output_mib: u64,
    /// Fuel, when metered.
    pub fuel: Option<u64>,
}

/// A task (or map item) to store as accepted.
#[derive(Debug, Clone)]
pub struct NewTask {
    /// Its id.
    pub id: String,
    /// The module's SHA-256.
    pub module: String,
    /// The task's name.
    pub task: String,
    /// A single task's arguments (a JSON array), or a map item's input.
    pub args: String,
    /// The limits it runs under.
    pub limits: TaskLimits,
    /// How many times it is run again when its worker dies.
    pub retries: u32,
}

/// What storing a submission did.
#[derive(Debug, PartialEq)]
pub enum Inserted {
    /// Stored, under this id.
    New(String),
    /// The idempotency key was seen with the same body: the first submission's id.
    Existing(String),
    /// The idempotency key was seen with another body.
    Conflict,
}

/// A task read back for its tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    /// Its id.
    pub id: String,
    /// `queued`, `running` or `done`.
    pub state: String,
    /// The module's SHA-256.
    pub module: String,
    /// The task's name.
    pub task: String,
    /// How many times it was started.
    pub attempt: u32,
    /// When it was accepted (ms since the epoch).
    pub created_ms: i64,
    /// When its last attempt started.
    pub started_ms: Option<i64>,
    /// When it finished.
    pub finished_ms: Option<i64>,
    /// Its result, when it succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Its error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    /// What it wrote to stdout (UTF-8, invalid bytes replaced), once finished; at most
    /// its output limit together with `stderr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout: Option<String>,
    /// What it wrote to stderr, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<String>,
    /// What it used, once finished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageRow>,
}

/// Why a task failed, with a stable code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskError {
    /// A stable code (`task_failed`, `trap`, `limit_exceeded`, `worker_lost`, `cancelled`, …).
    pub code: String,
    /// The message.
    pub message: String,
}

/// What one finished task used.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The task's id.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// When it finished.
    pub finished_ms: i64,
    /// Whether it succeeded.
    pub ok: bool,
    /// Wall-clock milliseconds from its start to its result.
    pub wall_ms: u64,
    /// Fuel used, when metered.
    pub fuel: Option<u64>,
    /// Worker time.
    #[serde(flatten)]
    pub cpu: Cpu,
    /// Bytes of its arguments (JSON).
    pub bytes_in: u64,
    /// Bytes of its result or error (JSON) and of its output.
    pub bytes_out: u64,
}

/// The time a worker spent running a task, from its call's start to its answer (what fair
/// queuing charges; it includes time the task blocked in host calls such as sleep), in
/// microseconds (exact, and what sums add) and milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// Microseconds.
    pub cpu_us: u64,
    /// The same in milliseconds.
    pub cpu_ms: f64,
}

impl Cpu {
    /// `us` microseconds.
    pub fn from_micros(us: u64) -> Cpu {
        Cpu {
            cpu_us: us,
            cpu_ms: us as f64 / 1000.0,
        }
    }
}

/// One hour's sums of a tenant's usage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageSums {
    /// The hour's start (ms since the epoch); absent in the totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hour_ms: Option<i64>,
    /// Tasks finished.
    pub tasks: u64,
    /// Of them, failed.
    pub failed: u64,
    /// Wall-clock milliseconds.
    pub wall_ms: u64,
    /// Fuel (metered tasks only).
    pub fuel: u64,
    /// Worker time.
    #[serde(flatten)]
    pub cpu: Cpu,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

/// How a task ended, to store.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its id.
    pub id: String,
    /// The JSON result, or the error.
    pub outcome: Result<serde_json::Value, TaskError>,
    /// A map item's record line (with its newline).
    pub line: Option<String>,
    /// A task's stdout and stderr (not a map item's).
    pub output: Option<(String, String)>,
    /// What it used.
    pub usage: UsageRow,
}

/// A queued unit of work found at start-up or accepted: a task, or a map item.
#[derive(Debug, Clone)]
pub struct QueuedRow {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// Its map, if an item.
    pub map_id: Option<String>,
}

/// Everything a worker needs to run a task.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// Its id.
    pub id: String,
    /// Its tenant.
    pub tenant: String,
    /// The module's SHA-256.
    pub module: String,
    /// The task's name.
    pub task: String,
    /// Arguments (single) or input (map item), JSON text.
    pub args: String,
    /// Whether a map item's input is an argument array.
    pub star: bool,
    /// Its limits.
    pub limits: TaskLimits,
    /// Its retries.
    pub retries: u32,
    /// The attempt this run is.
    pub attempt: u32,
    /// Its map, if an item.
    pub map_id: Option<String>,
}

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

    /// Records that `tenant` uploaded module `sha256`.
    pub fn add_module(&self, tenant: &str, sha256: &str, size: u64) -> Result<(), ServeError> {
        self.lock().execute(
            "INSERT OR IGNORE INTO modules (tenant, sha256, size, created_ms) VALUES (?1, ?2, ?3, ?4)",
            params![tenant, sha256, to_i64(size), now_ms()],
        )?;
        Ok(())
    }

    /// Whether `tenant` uploaded module `sha256`.
    pub fn has_module(&self, tenant: &str, sha256: &str) -> Result<bool, ServeError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT 1 FROM modules WHERE tenant = ?1 AND sha256 = ?2",
                params![tenant, sha256],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The modules `tenant` uploaded: (sha256, size).
    pub fn modules(&self, tenant: &str) -> Result<Vec<(String, u64)>, ServeError> {
        let conn = self.lock();
        let mut stmt =
            conn.prepare("SELECT sha256, size FROM modules WHERE tenant = ?1 ORDER BY created_ms")?;
        let rows = stmt.query_map(params![tenant], |r| {
            Ok((r.get::<_, String>(0)?, to_u64(r.get(1)?)))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stores a task as queued, unless its idempotency key (with the SHA-256 of its body)
    /// was seen before.
    pub fn insert_task(
        &self,
        tenant: &str,
        task: &NewTask,
        idempotency: Option<(&str, &str)>,
    ) -> Result<Inserted, ServeError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        if let Some((key, body)) = idempotency {
            let seen: Option<(String, String)> = tx
                .query_row(
                    "SELECT body_sha256, id FROM idempotency WHERE tenant = ?1 AND key = ?2",
                    params![tenant, key],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()?;
            match seen {
                Some((b, id)) if b == body => return Ok(Inserted::Existing(id)),
                Some(_) => return Ok(Inserted::Conflict),
                None => {
                    tx.execute(
                        "INSERT INTO idempotency (tenant, key, body_sha256, id, created_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5)",
                        params![tenant, key, body, task.id, now],
                    )?;
                }
            }
        }
        insert_task_row(&tx, tenant, task, false, None, now)?;
        tx.commit()?;
        Ok(Inserted::New(task.id.clone()))
    }

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

    /// Marks tasks as running (their next attempt) and returns what is needed to run each.
    pub fn start(&self, ids: &[String]) -> Result<Vec<RunSpec>, ServeError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        let mut specs = Vec::with_capacity(ids.len());
        for id in ids {
            let changed = tx.execute(
                "UPDATE tasks SET state = 'running', attempt = attempt + 1, started_ms = ?2 \
                 WHERE id = ?1 AND state = 'queued'",
                params![id, now],
            )?;
            if changed == 0 {
                // Cancelled meanwhile.
                continue;
            }
            let spec = tx.query_row(
                "SELECT id, tenant, module, task, args, star, limits, retries, attempt, map_id \
                 FROM tasks WHERE id = ?1",
                params![id],
                |r| {
                    let limits: String = r.get(6)?;
                    Ok(RunSpec {
                        id: r.get(0)?,
                        tenant: r.get(1)?,
                        module: r.get(2)?,
                        task: r.get(3)?,
                        args: r.get(4)?,
                        star: r.get(5)?,
                        limits: serde_json::from_str(&limits).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                6,
                                rusqlite::types::Type::Text,
                                Box::new(e),
                            )
                        })?,
                        retries: r.get(7)?,
                        attempt: r.get(8)?,
                        map_id: r.get(9)?,
                    })
                },
            )?;
            event(
                &tx,
                &spec.tenant,
                id,
                spec.map_id.as_deref(),
                "running",
                now,
            )?;
            specs.push(spec);
        }
        tx.commit()?;
        Ok(specs)
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

    /// Stores how a task ended: its result, its usage row and the hour's sums, its state,
    /// and the event, in one transaction. A task already done (cancelled meanwhile) keeps
    /// what it had; returns whether this was stored.
    pub fn finish(&self, tenant: &str, ttl_s: u64, done: &Finished) -> Result<bool, ServeError> {
        Ok(self.finish_many(tenant, ttl_s, std::slice::from_ref(done))?[0])
    }

    /// As [`finish`](Store::finish) for several tasks of one tenant, in one transaction
    /// (a map's items as they finish); whether each was stored.
    pub fn finish_many(
        &self,
        tenant: &str,
        ttl_s: u64,
        done: &[Finished],
    ) -> Result<Vec<bool>, ServeError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let now = now_ms();
        let mut stored = Vec::with_capacity(done.len());
        for d in done {
            stored.push(finish_in(&tx, tenant, ttl_s, d, now)?);
        }
        tx.commit()?;
        Ok(stored)
    }
}

fn finish_in(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    ttl_s: u64,
    done: &Finished,
    now: i64,
) -> Result<bool, ServeError> {
    {
        let expires = now.saturating_add(to_i64(ttl_s).saturating_mul(1000));
        let row: Option<(Option<String>, Option<i64>)> = tx
            .query_row(
                "SELECT map_id, idx FROM tasks WHERE id = ?1 AND tenant = ?2 AND state != 'done'",
                params![done.id, tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let Some((map_id, idx)) = row else {
            return Ok(false);
        };
        tx.execute(
            "UPDATE tasks SET state = 'done', finished_ms = ?2, expires_ms = ?3 WHERE id = ?1",
            params![done.id, now, expires],
        )?;
        let (ok, value, code, message) = match &done.outcome {
            Ok(v) => (true, Some(v.to_string()), None, None),
            Err(e) => (false, None, Some(e.code.as_str()), Some(e.message.as_str())),
        };
        let (stdout, stderr) = match &done.output {
            Some((out, err)) => (Some(out.as_str()), Some(err.as_str())),
            None => (None, None),
        };
        tx.execute(
            "INSERT INTO results (task_id, tenant, map_id, idx, ok, value, error_code, error, line, expires_ms, stdout, stderr) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![done.id, tenant, map_id, idx, ok, value, code, message, done.line, expires, stdout, stderr],
        )?;
        let u = &done.usage;
        tx.execute(
            "INSERT INTO usage (task_id, tenant, finished_ms, ok, wall_ms, fuel, bytes_in, bytes_out, expires_ms, cpu_us) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                done.id,
                tenant,
                now,
                ok,
                to_i64(u.wall_ms),
                u.fuel.map(to_i64),
                to_i64(u.bytes_in),
                to_i64(u.bytes_out),
                expires,
                to_i64(u.cpu.cpu_us)
            ],
        )?;
        let hour = now - now.rem_euclid(3_600_000);
        tx.execute(
            "INSERT INTO usage_hourly (tenant, hour, tasks, failed, wall_ms, fuel, bytes_in, bytes_out, cpu_us) \
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8) \
             ON CONFLICT (tenant, hour) DO UPDATE SET tasks = tasks + 1, failed = failed + ?3, \
             wall_ms = wall_ms + ?4, fuel = fuel + ?5, bytes_in = bytes_in + ?6, bytes_out = bytes_out + ?7, \
             cpu_us = cpu_us + ?8",
            params![
                tenant,
                hour,
                i64::from(!ok),
                to_i64(u.wall_ms),
                to_i64(u.fuel.unwrap_or(0)),
                to_i64(u.bytes_in),
                to_i64(u.bytes_out),
                to_i64(u.cpu.cpu_us)
            ],
        )?;
        event(tx, tenant, &done.id, map_id.as_deref(), "done", now)?;
        Ok(true)
    }
}

impl Store {
    /// At start-up: tasks found `running` (the service stopped under them) are queued again
    /// if they have attempts left (`attempt <= retries`); the others are returned, to fail.
    /// Then every queued task, in the order accepted.
    pub fn recover(&self) -> Result<(Vec<RunSpec>, Vec<QueuedRow>), ServeError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE tasks SET state = 'queued' WHERE state = 'running' AND attempt <= retries",
            [],
        )?;
        let mut stmt = conn.prepare(
            "SELECT id, tenant, module, task, args, star, limits, retries, attempt, map_id \
             FROM tasks WHERE state = 'running' ORDER BY seq",
        )?;
        let lost = stmt
            .query_map([], |r| {
                let limits: String = r.get(6)?;
                Ok(RunSpec {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    module: r.get(2)?,
                    task: r.get(3)?,
                    args: r.get(4)?,
                    star: r.get(5)?,
                    limits: serde_json::from_str(&limits).unwrap_or(TaskLimits {
                        memory_mib: 0,
                        timeout_s: 0.0,
                        output_mib: 0,
                        fuel: None,
                    }),
                    retries: r.get(7)?,
                    attempt: r.get(8)?,
                    map_id: r.get(9)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        drop(stmt);
        let mut stmt = conn
            .prepare("SELECT id, tenant, map_id FROM tasks WHERE state = 'queued' ORDER BY seq")?;
        let queued = stmt
            .query_map([], |r| {
                Ok(QueuedRow {
                    id: r.get(0)?,
                    tenant: r.get(1)?,
                    map_id: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((lost, queued))
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

    /// Task `id` as its tenant sees it, if it is that tenant's and still kept.
    pub fn task(&self, tenant: &str, id: &str) -> Result<Option<TaskView>, ServeError> {
        let conn = self.lock();
        let view = conn
            .query_row(
                "SELECT t.id, t.state, t.module, t.task, t.attempt, t.created_ms, t.started_ms, \
                 t.finished_ms, r.ok, r.value, r.error_code, r.error, \
                 u.finished_ms, u.wall_ms, u.fuel, u.bytes_in, u.bytes_out, u.cpu_us, \
                 r.stdout, r.stderr \
                 FROM tasks t LEFT JOIN results r ON r.task_id = t.id \
                 LEFT JOIN usage u ON u.task_id = t.id \
                 WHERE t.id = ?1 AND t.tenant = ?2 AND t.map_id IS NULL",
                params![id, tenant],
                |r| {
                    let ok: Option<bool> = r.get(8)?;
                    let value: Option<String> = r.get(9)?;
                    let code: Option<String> = r.get(10)?;
                    let message: Option<String> = r.get(11)?;
                    let usage = match r.get::<_, Option<i64>>(12)? {
                        Some(finished_ms) => Some(UsageRow {
                            id: String::new(),
                            finished_ms,
                            ok: ok.unwrap_or(false),
                            wall_ms: to_u64(r.get(13)?),
                            fuel: r.get::<_, Option<i64>>(14)?.map(to_u64),
                            cpu: Cpu::from_micros(to_u64(r.get(17)?)),
                            bytes_in: to_u64(r.get(15)?),
                            bytes_out: to_u64(r.get(16)?),
                        }),
                        None => None,
                    };
                    Ok(TaskView {
                        id: r.get(0)?,
                        state: r.get(1)?,
                        module: r.get(2)?,
                        task: r.get(3)?,
                        attempt: r.get(4)?,
                        created_ms: r.get(5)?,
                        started_ms: r.get(6)?,
                        finished_ms: r.get(7)?,
                        result: match (ok, value) {
                            (Some(true), Some(v)) => serde_json::from_str(&v).ok(),
                            _ => None,
                        },
                        error: match (ok, code, message) {
                            (Some(false), Some(code), Some(message)) => {
                                Some(TaskError { code, message })
                            }
                            _ => None,
                        },
                        stdout: r.get(18)?,
                        stderr: r.get(19)?,
                        usage,
                    })
                },
            )
            .optional()?;
        Ok(view)
    }

    /// The state of task `id` if `tenant` owns it: (state, map id).
    pub fn task_state(
        &self,
        tenant: &str,
        id: &str,
    ) -> Result<Option<(String, Option<String>)>, ServeError> {
        Ok(self
            .lock()
            .query_row(
                "SELECT state, map_id FROM tasks WHERE id = ?1 AND tenant = ?2",
                params![id, tenant],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
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

    /// A tenant's usage: the rows of its kept tasks finished at or after `since` (newest
    /// first, at most `limit`), its hourly sums from `since`, and the totals of those sums.
    pub fn usage(
        &self,
        tenant: &str,
        since: i64,
        limit: u64,
    ) -> Result<(Vec<UsageRow>, Vec<UsageSums>), ServeError> {
        let conn = self.lock();
        let mut stmt = conn.prepare(
            "SELECT task_id, finished_ms, ok, wall_ms, fuel, bytes_in, bytes_out, cpu_us FROM usage \
             WHERE tenant = ?1 AND finished_ms >= ?2 ORDER BY finished_ms DESC LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![tenant, since, to_i64(limit)], |r| {
                Ok(UsageRow {
                    id: r.get(0)?,
                    finished_ms: r.get(1)?,
                    ok: r.get(2)?,
                    wall_ms: to_u64(r.get(3)?),
                    fuel: r.get::<_, Option<i64>>(4)?.map(to_u64),
                    cpu: Cpu::from_micros(to_u64(r.get(7)?)),
                    bytes_in: to_u64(r.get(5)?),
                    bytes_out: to_u64(r.get(6)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT hour, tasks, failed, wall_ms, fuel, bytes_in, bytes_out, cpu_us FROM usage_hourly \
             WHERE tenant = ?1 AND hour >= ?2 - 3599999 ORDER BY hour",
        )?;
        let hours = stmt
            .query_map(params![tenant, since], |r| {
                Ok(UsageSums {
                    hour_ms: Some(r.get(0)?),
                    tasks: to_u64(r.get(1)?),
                    failed: to_u64(r.get(2)?),
                    wall_ms: to_u64(r.get(3)?),
                    fuel: to_u64(r.get(4)?),
                    cpu: Cpu::from_micros(to_u64(r.get(7)?)),
                    bytes_in: to_u64(r.get(5)?),
                    bytes_out: to_u64(r.get(6)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, hours))
    }

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

fn insert_task_row(
    tx: &rusqlite::Transaction<'_>,
    tenant: &str,
    task: &NewTask,
    star: bool,
    map: Option<(&str, u64)>,
    now: i64,
) -> Result<(), ServeError> {
    let limits = serde_json::to_string(&task.limits).unwrap_or_default();
    tx.execute(
        "INSERT INTO tasks (id, tenant, module, task, args, star, limits, retries, state, created_ms, map_id, idx) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'queued', ?9, ?10, ?11)",
        params![
            task.id,
            tenant,
            task.module,
            task.task,
            task.args,
            star,
            limits,
            task.retries,
            now,
            map.map(|m| m.0),
            map.map(|m| to_i64(m.1))
        ],
    )?;
    event(tx, tenant, &task.id, map.map(|m| m.0), "queued", now)?;
    Ok(())
}

fn event(
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
