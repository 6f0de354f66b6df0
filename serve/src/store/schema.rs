//! The tables, and the columns added to a state file made before them.

use rusqlite::Connection;

use crate::error::ServeError;

pub(super) const SCHEMA: &str = "
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
    cpu_us INTEGER NOT NULL DEFAULT 0, peak_memory_bytes INTEGER NOT NULL DEFAULT 0);
CREATE INDEX IF NOT EXISTS usage_tenant ON usage (tenant, finished_ms);
CREATE TABLE IF NOT EXISTS usage_hourly (
    tenant TEXT NOT NULL, hour INTEGER NOT NULL, tasks INTEGER NOT NULL, failed INTEGER NOT NULL,
    wall_ms INTEGER NOT NULL, fuel INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
    bytes_out INTEGER NOT NULL, cpu_us INTEGER NOT NULL DEFAULT 0,
    peak_memory_bytes INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, hour));
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
pub(super) const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("results", "stdout", "TEXT"),
    ("results", "stderr", "TEXT"),
    ("usage", "cpu_us", "INTEGER NOT NULL DEFAULT 0"),
    ("usage_hourly", "cpu_us", "INTEGER NOT NULL DEFAULT 0"),
    ("usage", "peak_memory_bytes", "INTEGER NOT NULL DEFAULT 0"),
    (
        "usage_hourly",
        "peak_memory_bytes",
        "INTEGER NOT NULL DEFAULT 0",
    ),
];

/// Adds the [`ADDED_COLUMNS`] a table lacks.
pub(super) fn migrate(conn: &Connection) -> Result<(), ServeError> {
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn columns(conn: &Connection, table: &str) -> Vec<String> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .unwrap();
        stmt.query_map([], |r| r.get::<_, String>(1))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_state_file_made_before_the_added_columns_gets_them_and_keeps_its_rows() {
        let conn = Connection::open_in_memory().unwrap();
        // The tables as the first schema made them (without the added columns).
        conn.execute_batch(
            "CREATE TABLE results (task_id TEXT NOT NULL UNIQUE, ok INTEGER NOT NULL);
             CREATE TABLE usage (task_id TEXT PRIMARY KEY, wall_ms INTEGER NOT NULL);
             CREATE TABLE usage_hourly (tenant TEXT NOT NULL, wall_ms INTEGER NOT NULL);
             INSERT INTO usage VALUES ('t1', 7);",
        )
        .unwrap();
        migrate(&conn).unwrap();
        // Twice is once: a migrated file is left as it is.
        migrate(&conn).unwrap();
        for (table, column, _) in ADDED_COLUMNS {
            assert!(
                columns(&conn, table).iter().any(|c| c == column),
                "{table}.{column}"
            );
        }
        let (wall, cpu): (i64, i64) = conn
            .query_row("SELECT wall_ms, cpu_us FROM usage", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((wall, cpu), (7, 0));
        let peak: i64 = conn
            .query_row("SELECT peak_memory_bytes FROM usage", [], |r| r.get(0))
            .unwrap();
        assert_eq!(peak, 0, "a row stored before it was measured");
        // A fresh file has them from the schema itself.
        let fresh = Connection::open_in_memory().unwrap();
        fresh.execute_batch(SCHEMA).unwrap();
        migrate(&fresh).unwrap();
        assert!(columns(&fresh, "results").iter().any(|c| c == "stdout"));
    }

    #[test]
    fn a_state_dir_of_the_version_before_peak_memory_opens_and_reads_its_usage() {
        let dir = std::env::temp_dir().join(format!(
            "wasmpool-serve-schema-{}-{}",
            std::process::id(),
            super::super::now_ms()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        {
            // The usage tables as the version before made them, with a row in each.
            let old = Connection::open(dir.join("state.sqlite3")).unwrap();
            old.execute_batch(
                "CREATE TABLE usage (
                    task_id TEXT PRIMARY KEY, tenant TEXT NOT NULL, finished_ms INTEGER NOT NULL,
                    ok INTEGER NOT NULL, wall_ms INTEGER NOT NULL, fuel INTEGER,
                    bytes_in INTEGER NOT NULL, bytes_out INTEGER NOT NULL, expires_ms INTEGER NOT NULL,
                    cpu_us INTEGER NOT NULL DEFAULT 0);
                 CREATE TABLE usage_hourly (
                    tenant TEXT NOT NULL, hour INTEGER NOT NULL, tasks INTEGER NOT NULL, failed INTEGER NOT NULL,
                    wall_ms INTEGER NOT NULL, fuel INTEGER NOT NULL, bytes_in INTEGER NOT NULL,
                    bytes_out INTEGER NOT NULL, cpu_us INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, hour));
                 INSERT INTO usage VALUES ('t1', 'alice', 3600005, 1, 7, NULL, 5, 1, 9999999999999, 412);
                 INSERT INTO usage_hourly VALUES ('alice', 3600000, 1, 0, 7, 0, 5, 1, 412);",
            )
            .unwrap();
        }
        let store = super::super::Store::open(&dir).unwrap();
        let (rows, hours) = store.usage("alice", 0, 10).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].wall_ms, rows[0].cpu.cpu_us), (7, 412));
        assert_eq!(rows[0].peak_memory_bytes, 0);
        assert_eq!(hours.len(), 1);
        assert_eq!((hours[0].tasks, hours[0].peak_memory_bytes), (1, 0));
    }
}
