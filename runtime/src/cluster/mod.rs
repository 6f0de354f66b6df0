//! A cluster: one pool's work run on many hosts through Redis.
//!
//! A submitting program builds a [`ClusterPool`] (`Pool::builder(&module).cluster(url)`) and
//! uses it as a local [`Pool`](crate::Pool): `map`, `starmap`, `imap`, `apply_async` and
//! their results are the same types, and a task's error is the same error. Hosts join with
//! `wasmpool worker --join redis://HOST:PORT --slots N` (or [`Host::join`] in a program):
//! each claims chunks from Redis and runs them in a local pool of N worker processes.
//!
//! How it works, in Redis (keys in `keys.rs`, scripts in `scripts.rs`):
//! - Modules travel by SHA-256: the submitter stores the component once (`SET NX`), each
//!   host fetches it and compiles it into its own cache.
//! - A map chunk (or one `apply_async` call) is one entry of a stream read through a
//!   consumer group; a host claims entries with `XREADGROUP`.
//! - Tenants: a pool built with [`ClusterBuilder::tenant`] submits to its tenant's own
//!   stream (`{wasmpool}:v3:tasks:<tenant>`, recorded in the set `{wasmpool}:v3:tenants`);
//!   untenanted pools keep the one stream `{wasmpool}:v3:tasks`. A host joined with
//!   `--tenant T` ([`HostBuilder::tenant`]) claims only from T's stream; one joined with
//!   `--all-tenants` ([`HostBuilder::all_tenants`]) from the untenanted stream and every
//!   tenant's, their workers' time shared by weight, so one tenant's backlog does not
//!   starve another; one joined with
//!   neither serves untenanted pools only, as before tenants. A tenant's pool that no live
//!   host serves waits for one, as an untenanted pool waits when no host has joined.
//! - A host renews a lease every 500 ms (Redis server time, `TIME`, in a script); it stops
//!   claiming when it cannot, and only a process whose own Redis calls have all succeeded
//!   for a whole lease judges other hosts dead (so one cut off from Redis, or just back,
//!   declares nobody dead).
//! - Every live host and every submitter runs the reaper: the entries of a host whose
//!   lease has expired, on every task stream (each tenant's too), are added with their
//!   attempt one higher to the task stream's redelivery stream (`{wasmpool}:v3:redo`,
//!   `{wasmpool}:v3:redo:<tenant>`) within about 2.5 s (lease 2 s, entries idle at least 2 s,
//!   reaper every 500 ms), or, for work that may not run twice (retries 0, as locally),
//!   failed with [`Error::WorkerLost`]. Hosts read the redelivery streams before the task
//!   streams (one claim script while the set `{wasmpool}:v3:redoing` names one of theirs
//!   with entries to claim, never more than the host's room; a plain `XREADGROUP`
//!   otherwise), so a redelivered chunk runs ahead of a backlog.
//! - A host commits a chunk's results with a script fenced by the attempt: a result whose
//!   attempt is not the chunk's current one (a host presumed dead, and back) is dropped
//!   and counted ([`ClusterStats::dropped`]), so no chunk is committed twice.
//! - A chunk carries its pool's worker setup (initializer, `maxtasksperchild`, where the
//!   host writes output); a host runs it in a local pool per module, metering and setup.
//!   Its results carry back fuel, worker time, peak memory and, when asked, its output.
//! - A cancel deletes the job's entries not yet claimed and sets its chunks' fences to
//!   `x`: the reaper does not redeliver them, the commit refuses their
//!   results (uncounted), and a host polls the fences of the chunks it runs every 50 ms
//!   and cancels those in its local pool.
//! - Results wait in a list per submitter, and both it and a job's record expire (the
//!   result TTL, default one hour).
//! - Shared objects made by a [`ClusterManager`] (`pool.manager()`) live in Redis, one Lua
//!   script per operation (`objects/`); tasks on every host and the submitting program use
//!   them through the same typed handles as local objects. A dead worker's or host's locks
//!   are released with their fence advanced, its semaphore permits returned, and the
//!   barriers it waited at broken; a host so declared dead is recorded
//!   (`{wasmpool}:v3:dead`), and the operations of the tasks it ran then are refused in the
//!   operation script if it comes back (a `SIGSTOP`, a partition), so its late release
//!   cannot free a lock another task now holds; it runs new work in new workers. The
//!   chunks it ran in the fenced workers are given back by the commit script (redelivered,
//!   or failed as lost), never committed with a refusal as their result.
//! - On a Redis Cluster, every key shares the hash tag `{wasmpool}`, so one slot, one node;
//!   [`connect`] goes to that node whichever one the URL names.
//!
//! Why a type of its own rather than a `Pool` with a remote worker set: the local pool's
//! scheduler is built around worker processes it starts, pipelines to and watches; the
//! cluster's dispatch is Redis's consumer group, and its failure handling is leases and
//! fences. Both produce the same [`Job`](crate::AsyncResult)s, so the caller sees one API.

mod allowed_dirs;
mod client;
mod host;
mod keys;
mod liveness;
mod manager;
mod objects;
mod reconnect;
mod scripts;
mod wire;

use std::time::Duration;

pub use self::client::{ClusterBuilder, ClusterPool, ClusterStats};
pub use self::host::{Host, HostBuilder, HostStats};
pub use self::manager::{ClusterManager, ClusterManagerBuilder};
pub use self::objects::DEFAULT_OBJECT_TTL;

/// Checks that `name` may name a tenant on a cluster ([`ClusterBuilder::tenant`],
/// `wasmpool worker --tenant`): 1 to 64 of `A-Z a-z 0-9 _ -`, as it becomes part of Redis
/// keys. An [`Error::State`](crate::Error::State) names what is wrong.
///
/// ```
/// assert!(wasmpool::cluster::check_tenant_name("team-a_1").is_ok());
/// assert!(wasmpool::cluster::check_tenant_name("a b").is_err());
/// ```
pub fn check_tenant_name(name: &str) -> crate::Result<()> {
    keys::check_tenant(name)
}

/// Sets the weight of tenant `name` on the cluster at `url` (from 1 to
/// [`Tenant::MAX_WEIGHT`](crate::Tenant::MAX_WEIGHT); a tenant never given one weighs 1).
/// A host serving every tenant (`wasmpool worker --all-tenants`) shares its workers' time
/// by weight while several tenants have work waiting: a tenant of weight 3 gets about three
/// times the worker time of a tenant of weight 1, whatever their chunks cost, as a local
/// pool shares its workers. Hosts read the weights again every second. A host serving named
/// tenants weighs them the same: equal time each.
///
/// ```no_run
/// wasmpool::cluster::set_tenant_weight("redis://127.0.0.1:6379", "team-a", 3)?;
/// # Ok::<(), wasmpool::Error>(())
/// ```
pub fn set_tenant_weight(url: &str, name: &str, weight: u32) -> crate::Result<()> {
    keys::check_tenant(name)?;
    if !(1..=crate::Tenant::MAX_WEIGHT).contains(&weight) {
        return Err(Error::State(format!(
            "a tenant's weight is from 1 to {}, not {weight}",
            crate::Tenant::MAX_WEIGHT
        )));
    }
    let keys = keys::Keys::default();
    let mut con = connect(url)?;
    keys::check_layout(&mut con, &keys, url)?;
    let _: i64 = redis::cmd("HSET")
        .arg(keys.weights())
        .arg(name)
        .arg(weight)
        .query(&mut con)
        .map_err(|e| redis_error(url, "setting the tenant's weight", e))?;
    Ok(())
}
pub(crate) use self::objects::{
    CLUSTER_TAG, ClusterLane, ClusterObjects, MAX_ROUTES, is_cluster as is_cluster_handle,
    release_dead_hosts, route_of,
};
pub(crate) use self::wire::{HostOutput, WorkerSetup};
use crate::error::Error;

/// How long a host's lease lasts after each renewal (Redis server time).
pub const LEASE: Duration = Duration::from_millis(2000);

/// How often a host renews its lease, and how often the reaper runs.
pub(crate) const BEAT: Duration = Duration::from_millis(500);

/// How long a claimed entry must have been idle before the reaper takes it from a host whose
/// lease has expired.
pub(crate) const MIN_IDLE: Duration = Duration::from_millis(2000);

/// A cancelled chunk's fence (`d:<chunk>` of its job's record): hosts stop it, the reaper
/// does not redeliver it, the commit refuses its result without counting it as dropped.
pub(crate) const CANCELLED: &str = "x";

/// How long connecting to Redis may take before it is an error.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one Redis command may take (blocking reads excepted: they ask for less).
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether `e` says Redis could not be reached (or cannot serve now: loading its data, a
/// Redis Cluster down or failing over), rather than that it refused the command: worth
/// trying again once it is back.
pub(crate) fn unreachable(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// A Redis URL as errors and logs show it: its password, if it has one, masked
/// (`redis://user:***@host:port`), so an error message or a log line never carries it.
///
/// ```
/// assert_eq!(
///     wasmpool::cluster::shown_url("redis://pool:s3cret@10.0.0.5:6379/0"),
///     "redis://pool:***@10.0.0.5:6379/0"
/// );
/// assert_eq!(wasmpool::cluster::shown_url("redis://:s3cret@h:1"), "redis://:***@h:1");
/// assert_eq!(wasmpool::cluster::shown_url("redis://h:1"), "redis://h:1");
/// ```
pub fn shown_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority = rest.find('/').map_or(rest, |i| &rest[..i]);
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let Some(colon) = authority[..at].find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..scheme_end],
        &authority[..colon],
        &rest[at..]
    )
}

/// A Redis error, with what we were doing and where.
pub(crate) fn redis_error(url: &str, doing: &str, e: redis::RedisError) -> Error {
    let url = shown_url(url);
    if unreachable(&e) {
        Error::Cluster(format!("{doing}: cannot reach Redis at {url}: {e}"))
    } else {
        Error::Cluster(format!("{doing}: Redis at {url} refused it: {e}"))
    }
}

/// Opens a connection to `url` with the cluster's timeouts: a clear error, never a hang,
/// when nothing answers there.
///
/// When `url` is a node of a Redis Cluster, the connection is to the node that serves the
/// slot of every key of the layout (they share the hash tag [`keys::HASH_TAG`]), which may
/// be another: its address is what the cluster's slot table says, with the URL's
/// credentials. After a failover or a slot's move, commands there fail (`MOVED`) and the
/// caller connects again, as after any lost connection.
pub(crate) fn connect(url: &str) -> crate::Result<redis::Connection> {
    connect_or_lost(url).map_err(|(e, _)| e)
}

/// As [`connect`], its error told apart: `true` when Redis could not be reached (see
/// [`unreachable`]), worth trying again; `false` when the URL is bad or Redis refused.
pub(crate) fn connect_or_lost(url: &str) -> Result<redis::Connection, (Error, bool)> {
    let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| {
        let e = Error::Cluster(format!(
            "`{}` is not a Redis URL (redis://HOST:PORT): {e}",
            shown_url(url)
        ));
        (e, false)
    })?;
    let mut con = open(info.clone(), url)?;
    let (url_host, url_port) = match info.addr() {
        redis::ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
        redis::ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
        _ => return Ok(con),
    };
    let Some((host, port)) = home_node(&mut con) else {
        return Ok(con);
    };
    // A node that does not know its own address says "" (or "?"): the URL's host, then.
    let host = if host.is_empty() || host == "?" {
        url_host.clone()
    } else {
        host
    };
    if (host.as_str(), port) == (url_host.as_str(), url_port) {
        return Ok(con);
    }
    // An error names the node it could not reach (a failed master, during a failover), not
    // only the URL's, which answered.
    let at = format!("{url} (the node that serves its slot, {host}:{port})");
    let addr = match info.addr() {
        redis::ConnectionAddr::TcpTls {
            insecure,
            tls_params,
            ..
        } => redis::ConnectionAddr::TcpTls {
            host,
            port,
            insecure: *insecure,
            tls_params: tls_params.clone(),
        },
        _ => redis::ConnectionAddr::Tcp(host, port),
    };
    open(info.set_addr(addr), &at)
}

fn open(info: redis::ConnectionInfo, url: &str) -> Result<redis::Connection, (Error, bool)> {
    let client = redis::Client::open(info).map_err(|e| {
        let e = Error::Cluster(format!(
            "`{}` is not a Redis URL (redis://HOST:PORT): {e}",
            shown_url(url)
        ));
        (e, false)
    })?;
    let lost = |e: redis::RedisError| {
        let lost = unreachable(&e);
        (redis_error(url, "connecting", e), lost)
    };
    let con = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(lost)?;
    con.set_read_timeout(Some(COMMAND_TIMEOUT))
        .and_then(|()| con.set_write_timeout(Some(COMMAND_TIMEOUT)))
        .map_err(lost)?;
    Ok(con)
}

/// On a node of a Redis Cluster, the address of the master that serves the layout's slot;
/// `None` on a Redis that is not a cluster's (or does not say).
fn home_node(con: &mut redis::Connection) -> Option<(String, u16)> {
    // One round trip: the slot is computed here, as Redis computes it.
    let table: redis::Value = redis::cmd("CLUSTER").arg("SLOTS").query(con).ok()?;
    slot_master(&table, key_slot(keys::HASH_TAG))
}

/// The hash slot of `key` in a Redis Cluster: CRC16 (XMODEM) of its hash tag (what is
/// between its first `{` and the next `}`, if not empty) or of the whole key, modulo 16384.
fn key_slot(key: &str) -> i64 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    i64::from(crc16(hashed) & 0x3fff)
}

/// CRC16-CCITT in its XMODEM form (polynomial 0x1021, initial 0), as Redis Cluster uses.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The master of `slot` in a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id], …], …]`.
fn slot_master(table: &redis::Value, slot: i64) -> Option<(String, u16)> {
    use redis::Value;
    let Value::Array(ranges) = table else {
        return None;
    };
    ranges.iter().find_map(|range| {
        let Value::Array(fields) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (fields.first(), fields.get(1), fields.get(2))
        else {
            return None;
        };
        if !(*start..=*end).contains(&slot) {
            return None;
        }
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8(b.clone()).ok()?,
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        Some((host, u16::try_from(*port).ok()?))
    })
}

/// The SHA-256 of `bytes`, in hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A tag that tells apart ids made with the same number or pid (a restarted container, a
/// Redis that lost its counters).
pub(crate) fn tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    format!("{:08x}", nanos ^ std::process::id().rotate_left(16))
}

#[cfg(test)]
mod tests {
    use redis::Value;

    use super::{crc16, key_slot, slot_master};

    /// Redis Cluster's own examples: CRC16's check value, the slot of `foo`, and hash tags.
    #[test]
    fn a_keys_slot_is_computed_as_redis_computes_it() {
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(key_slot("foo"), 12182);
        assert_eq!(key_slot("somekey"), 11058);
        assert_eq!(key_slot("{user1000}.following"), key_slot("user1000"));
        // An empty first tag: the whole key is hashed.
        assert_eq!(
            key_slot("foo{}{bar}"),
            i64::from(crc16(b"foo{}{bar}") & 0x3fff)
        );
        assert_eq!(key_slot("{wasmpool}:v3:tasks"), key_slot("wasmpool"));
    }

    fn node(host: &str, port: i64) -> Value {
        Value::Array(vec![
            Value::BulkString(host.as_bytes().to_vec()),
            Value::Int(port),
            Value::BulkString(b"id".to_vec()),
        ])
    }

    #[test]
    fn the_master_of_a_slot_is_read_from_the_slot_table() {
        let table = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("10.0.0.1", 7000),
            ]),
            Value::Array(vec![
                Value::Int(5461),
                Value::Int(16383),
                node("10.0.0.2", 7001),
                node("10.0.0.3", 7002),
            ]),
        ]);
        assert_eq!(slot_master(&table, 0), Some(("10.0.0.1".into(), 7000)));
        assert_eq!(slot_master(&table, 5460), Some(("10.0.0.1".into(), 7000)));
        // The master, not its replica.
        assert_eq!(slot_master(&table, 5461), Some(("10.0.0.2".into(), 7001)));
        assert_eq!(slot_master(&table, 16384), None);
        assert_eq!(slot_master(&Value::Nil, 3), None);
        let bad = Value::Array(vec![Value::Array(vec![Value::Int(0)])]);
        assert_eq!(slot_master(&bad, 0), None);
    }
}
