//! Tasks and map items: accepted, started, finished (result, usage row and hourly sums in
//! one transaction), recovered after a restart, read back.

use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::events::event;
use super::usage::{Cpu, UsageRow};
use super::{Store, now_ms, to_i64, to_u64};
use crate::error::ServeError;

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
    /// Its result, when it succeeded: the JSON text stored, served as it is (a map's
    /// entries in the order the task wrote them, as `wasmpool run` prints them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Box<serde_json::value::RawValue>>,
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

/// How a task ended, to store.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Its id.
    pub id: String,
    /// The result as JSON text, or the error.
    pub outcome: Result<String, TaskError>,
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

impl Store {
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

    /// Task `id` as its tenant sees it, if it is that tenant's and still kept.
    pub fn task(&self, tenant: &str, id: &str) -> Result<Option<TaskView>, ServeError> {
        let conn = self.lock();
        let view = conn
            .query_row(
                "SELECT t.id, t.state, t.module, t.task, t.attempt, t.created_ms, t.started_ms, \
                 t.finished_ms, r.ok, r.value, r.error_code, r.error, \
                 u.finished_ms, u.wall_ms, u.fuel, u.bytes_in, u.bytes_out, u.cpu_us, \
                 r.stdout, r.stderr, u.peak_memory_bytes \
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
                            peak_memory_bytes: to_u64(r.get(20)?),
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
                            (Some(true), Some(v)) => {
                                serde_json::value::RawValue::from_string(v).ok()
                            }
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
            Ok(v) => (true, Some(v.as_str()), None, None),
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
            "INSERT INTO usage (task_id, tenant, finished_ms, ok, wall_ms, fuel, bytes_in, bytes_out, expires_ms, cpu_us, peak_memory_bytes) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
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
                to_i64(u.cpu.cpu_us),
                to_i64(u.peak_memory_bytes)
            ],
        )?;
        let hour = now - now.rem_euclid(3_600_000);
        // Sums, but for the peak memory: the hour's largest (a sum of peaks means nothing).
        tx.execute(
            "INSERT INTO usage_hourly (tenant, hour, tasks, failed, wall_ms, fuel, bytes_in, bytes_out, cpu_us, peak_memory_bytes) \
             VALUES (?1, ?2, 1, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
             ON CONFLICT (tenant, hour) DO UPDATE SET tasks = tasks + 1, failed = failed + ?3, \
             wall_ms = wall_ms + ?4, fuel = fuel + ?5, bytes_in = bytes_in + ?6, bytes_out = bytes_out + ?7, \
             cpu_us = cpu_us + ?8, peak_memory_bytes = MAX(peak_memory_bytes, ?9)",
            params![
                tenant,
                hour,
                i64::from(!ok),
                to_i64(u.wall_ms),
                to_i64(u.fuel.unwrap_or(0)),
                to_i64(u.bytes_in),
                to_i64(u.bytes_out),
                to_i64(u.cpu.cpu_us),
                to_i64(u.peak_memory_bytes)
            ],
        )?;
        event(tx, tenant, &done.id, map_id.as_deref(), "done", now)?;
        Ok(true)
    }
}

pub(super) fn insert_task_row(
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
