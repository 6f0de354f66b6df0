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
//!   stream (`wasmpool:v2:tasks:<tenant>`, recorded in the set `wasmpool:v2:tenants`);
//!   untenanted pools keep the one stream `wasmpool:v2:tasks`. A host joined with
//!   `--tenant T` ([`HostBuilder::tenant`]) claims only from T's stream; one joined with
//!   `--all-tenants` ([`HostBuilder::all_tenants`]) from the untenanted stream and every
//!   tenant's in turn, so one tenant's backlog does not starve another; one joined with
//!   neither serves untenanted pools only, as before tenants. A tenant's pool that no live
//!   host serves waits for one, as an untenanted pool waits when no host has joined.
//! - A host renews a lease every 500 ms (Redis server time, `TIME`, in a script); it stops
//!   claiming when it cannot, and only a process whose own Redis calls have all succeeded
//!   for a whole lease judges other hosts dead (so one cut off from Redis, or just back,
//!   declares nobody dead).
//! - Every live host and every submitter runs the reaper: the entries of a host whose
//!   lease has expired, on every task stream (each tenant's too), are added with their
//!   attempt one higher to the task stream's redelivery stream (`wasmpool:v2:redo`,
//!   `wasmpool:v2:redo:<tenant>`) within about 2.5 s (lease 2 s, entries idle at least 2 s,
//!   reaper every 500 ms), or, for work that may not run twice (retries 0, as locally),
//!   failed with [`Error::WorkerLost`]. Hosts read the redelivery streams before the task
//!   streams (one claim script while the set `wasmpool:v2:redoing` names one of theirs
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
//!   (`wasmpool:v2:dead`), and the operations of the tasks it ran then are refused in the
//!   operation script if it comes back (a `SIGSTOP`, a partition), so its late release
//!   cannot free a lock another task now holds; it runs new work in new workers. The
//!   chunks it ran in the fenced workers are given back by the commit script (redelivered,
//!   or failed as lost), never committed with a refusal as their result.
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
/// A host serving every tenant (`wasmpool worker --all-tenants`) shares its claims by
/// weight while several tenants have work waiting: a tenant of weight 3 gets about three
/// chunks for each one of a tenant of weight 1, as a local pool shares its workers. Hosts
/// read the weights again every second. A host serving named tenants takes them in turn.
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

/// A Redis error, with what we were doing and where.
pub(crate) fn redis_error(url: &str, doing: &str, e: redis::RedisError) -> Error {
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() {
        Error::Cluster(format!("{doing}: cannot reach Redis at {url}: {e}"))
    } else {
        Error::Cluster(format!("{doing}: Redis at {url} refused it: {e}"))
    }
}

/// Opens a connection to `url` with the cluster's timeouts: a clear error, never a hang,
/// when nothing answers there.
pub(crate) fn connect(url: &str) -> crate::Result<redis::Connection> {
    let client = redis::Client::open(url).map_err(|e| {
        Error::Cluster(format!(
            "`{url}` is not a Redis URL (redis://HOST:PORT): {e}"
        ))
    })?;
    let con = client
        .get_connection_with_timeout(CONNECT_TIMEOUT)
        .map_err(|e| redis_error(url, "connecting", e))?;
    con.set_read_timeout(Some(COMMAND_TIMEOUT))
        .and_then(|()| con.set_write_timeout(Some(COMMAND_TIMEOUT)))
        .map_err(|e| redis_error(url, "connecting", e))?;
    Ok(con)
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
