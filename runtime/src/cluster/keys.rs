//! The cluster's keys in Redis, all under one prefix that names the data layout's version
//! (`wasmpool:v1:`), and the check that a Redis holds no other version's keys.
//!
//! ```text
//! wasmpool:layout                 STRING "v1": the layout the keys follow (set NX on first use)
//! wasmpool:v1:tasks               STREAM one entry per chunk {j job, c chunk, a attempt,
//!                                        r client, n retries, p chunk (postcard)}; group "hosts"
//! wasmpool:v1:job:<job>           HASH   a:<chunk> attempt (absent = 0), d:<chunk> committed;
//!                                        expires (the result TTL)
//! wasmpool:v1:results:<client>    LIST   committed chunks for one submitting pool; expires
//! wasmpool:v1:module:<sha256>     STRING the component's bytes (SET NX); expires, refreshed
//! wasmpool:v1:hosts               ZSET   host -> lease expiry (ms, Redis server time)
//! wasmpool:v1:slots               HASH   host -> its slots
//! wasmpool:v1:stats               HASH   committed, dropped, redelivered, lost
//! wasmpool:v1:clients             STRING the last client number given out (INCR)
//! wasmpool:v1:objects             STRING the last shared object number given out
//! wasmpool:v1:o:<n>[:…]           a shared object: HASH of its kind and state, and by kind a
//!                                        LIST or HASH of its contents (see
//!                                        `objects/lua.rs`); expire when idle
//! wasmpool:v1:holds:<host>        SET    the objects a host's workers hold (locks,
//!                                        semaphores, barrier places)
//! wasmpool:v1:holders             SET    the hosts that hold any
//! ```

use redis::Connection;

use super::redis_error;
use crate::error::{Error, Result};

/// The version of the data layout this wasmpool reads and writes.
pub(crate) const LAYOUT: &str = "v1";

/// The key that names the layout a Redis's wasmpool keys follow.
pub(crate) const LAYOUT_KEY: &str = "wasmpool:layout";

/// The consumer group of the task stream: every host reads through it.
pub(crate) const GROUP: &str = "hosts";

/// The keys of one layout version.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: format!("wasmpool:{LAYOUT}:"),
        }
    }
}

impl Keys {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn tasks(&self) -> String {
        format!("{}tasks", self.prefix)
    }

    pub fn job(&self, job: &str) -> String {
        format!("{}job:{job}", self.prefix)
    }

    pub fn results(&self, client: &str) -> String {
        format!("{}results:{client}", self.prefix)
    }

    pub fn module(&self, sha: &str) -> String {
        format!("{}module:{sha}", self.prefix)
    }

    pub fn hosts(&self) -> String {
        format!("{}hosts", self.prefix)
    }

    pub fn slots(&self) -> String {
        format!("{}slots", self.prefix)
    }

    pub fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }

    pub fn clients(&self) -> String {
        format!("{}clients", self.prefix)
    }

    pub fn objects_counter(&self) -> String {
        format!("{}objects", self.prefix)
    }

    pub fn object(&self, n: u64) -> String {
        format!("{}o:{n}", self.prefix)
    }

    pub fn holders(&self) -> String {
        format!("{}holders", self.prefix)
    }
}

/// Checks that the Redis behind `con` holds this layout's keys, or none yet (then claims it
/// for this layout), and that the task stream and its consumer group exist.
pub(crate) fn check_layout(con: &mut Connection, keys: &Keys, url: &str) -> Result<()> {
    let _: Option<String> = redis::cmd("SET")
        .arg(LAYOUT_KEY)
        .arg(LAYOUT)
        .arg("NX")
        .query(con)
        .map_err(|e| redis_error(url, "claiming the key layout", e))?;
    let found: Option<String> = redis::cmd("GET")
        .arg(LAYOUT_KEY)
        .query(con)
        .map_err(|e| redis_error(url, "reading the key layout", e))?;
    match found.as_deref() {
        Some(LAYOUT) => {}
        other => {
            return Err(Error::Cluster(format!(
                "the Redis at {url} holds the keys of another version of wasmpool: `{LAYOUT_KEY}` \
                 is {}, and this wasmpool reads and writes layout {LAYOUT} (keys \
                 `wasmpool:{LAYOUT}:*`); use another Redis (or database), or run the same \
                 version of wasmpool on every host",
                other.map_or("not a layout name".to_string(), |v| format!("{v:?}"))
            )));
        }
    }
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(keys.tasks())
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query(con);
    match created {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_error(url, "creating the task stream", e)),
    }
}
