//! What tasks used: per task rows and hourly sums.

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Store, to_i64, to_u64};
use crate::error::ServeError;

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
    /// The largest linear memory its instance had while it ran, in bytes (see
    /// `wasmpool::AsyncResult::peak_memory`): a reused instance's memory never shrinks, so
    /// what earlier tasks on that worker left counts. A map item's is its chunk's (the
    /// items run in one call). 0 for a task that never ran, and in rows stored before it
    /// was measured.
    pub peak_memory_bytes: u64,
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
    /// The largest of the tasks' peak memories, in bytes: a maximum, not a sum.
    pub peak_memory_bytes: u64,
    /// Bytes in.
    pub bytes_in: u64,
    /// Bytes out.
    pub bytes_out: u64,
}

impl Store {
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
            "SELECT task_id, finished_ms, ok, wall_ms, fuel, bytes_in, bytes_out, cpu_us, peak_memory_bytes FROM usage \
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
                    peak_memory_bytes: to_u64(r.get(8)?),
                    bytes_in: to_u64(r.get(5)?),
                    bytes_out: to_u64(r.get(6)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let mut stmt = conn.prepare(
            "SELECT hour, tasks, failed, wall_ms, fuel, bytes_in, bytes_out, cpu_us, peak_memory_bytes FROM usage_hourly \
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
                    peak_memory_bytes: to_u64(r.get(8)?),
                    bytes_in: to_u64(r.get(5)?),
                    bytes_out: to_u64(r.get(6)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, hours))
    }
}
