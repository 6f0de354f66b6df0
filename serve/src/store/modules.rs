//! The modules each tenant uploaded.

use rusqlite::{OptionalExtension, params};

use super::{Store, now_ms, to_i64, to_u64};
use crate::error::ServeError;

impl Store {
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
}
