//! The cluster's keys in Redis, all under one prefix that names the data layout's version
//! (`{wasmpool}:v3:`), and the check that a Redis holds no other version's keys.
//!
//! The prefix's `{wasmpool}` is a hash tag: on a Redis Cluster every key of the layout
//! hashes to the one slot of `wasmpool`, so each script's keys (those it names and those it
//! builds from the prefix) live on one node, which [`connect`](super::connect) finds.
//!
//! ```text
//! {wasmpool}:layout               STRING "v3": the layout the keys follow (set NX on first use)
//! {wasmpool}:v3:tasks             STREAM one entry per chunk of an untenanted pool {j job,
//!                                        c chunk, a attempt, r client, n retries, t result
//!                                        TTL (ms), p chunk (postcard)}; group "hosts"
//! {wasmpool}:v3:tasks:<tenant>    STREAM the same, for the pools of one tenant
//!                                        (`ClusterBuilder::tenant`); group "hosts"
//! {wasmpool}:v3:redo              STREAM the chunks of untenanted pools redelivered by the
//!                                        reaper (fields as a task's), read before the task
//!                                        stream; group "hosts"
//! {wasmpool}:v3:redo:<tenant>     STREAM the same, for one tenant's pools
//! {wasmpool}:v3:redoing           SET    the redelivery streams that may hold entries no
//!                                        host has claimed yet: added to by the reaper (and
//!                                        a host giving a chunk back), taken out by the claim
//!                                        that drains one; what a claim asks instead of
//!                                        every stream's length
//! {wasmpool}:v3:tenants           SET    the tenants that have a stream: what
//!                                        `--all-tenants` hosts and the reaper read
//! {wasmpool}:v3:tenant:<tenant>   STRING a lease on the tenant's streams, renewed (for
//!                                        TENANT_LEASE) by each beat of its live pools and
//!                                        of hosts joined with `--tenant` it; once it has
//!                                        expired, the reaper removes the tenant's task and
//!                                        redelivery streams when both are empty with
//!                                        nothing pending, and the tenant from `tenants`
//! {wasmpool}:v3:weights           HASH   tenant -> its weight (absent: 1), by which
//!                                        `--all-tenants` hosts share their claims
//! {wasmpool}:v3:job:<job>         HASH   a:<chunk> attempt (absent = 0), d:<chunk> committed
//!                                        (attempt), lost, or `x` cancelled; g:<chunk>
//!                                        the attempt a host declared dead gave back;
//!                                        s:<chunk> its entry's id, set as it is added
//!                                        (SUBMIT: never added twice); expires (the
//!                                        result TTL)
//! {wasmpool}:v3:results:<client>  LIST   committed chunks for one submitting pool; expires
//! {wasmpool}:v3:module:<sha256>   STRING the component's bytes (SET NX); expires, refreshed
//! {wasmpool}:v3:hosts             ZSET   host -> lease expiry (ms, Redis server time)
//! {wasmpool}:v3:slots             HASH   host -> its slots
//! {wasmpool}:v3:dead              ZSET   host -> when the reaper last declared it dead (ms,
//!                                        Redis time: it took the host's chunks or gave back
//!                                        its objects); an object operation of a task on a
//!                                        host admitted before then is refused; kept a day
//! {wasmpool}:v3:reaping           STRING the reaper's turn: set (NX, 0.9 beat) by the pass
//!                                        that runs; every other process's pass in that beat
//!                                        ends at once
//! {wasmpool}:v3:swept             STRING set (NX, for the sweep period) by the pass that
//!                                        sweeps every tenant's streams
//! {wasmpool}:v3:stats             HASH   committed, dropped, redelivered, lost
//! {wasmpool}:v3:clients           STRING the last client number given out (INCR)
//! {wasmpool}:v3:objects           STRING the last shared object number given out
//! {wasmpool}:v3:o:<n>[:…]         a shared object: HASH of its kind and state, and by kind a
//!                                        LIST or HASH of its contents (see
//!                                        `objects/lua.rs`); expire when idle
//! {wasmpool}:v3:holds:<host>      SET    the objects a host's workers hold (locks,
//!                                        semaphores, barrier places); an object leaves it
//!                                        when the host's last holder of it lets go
//! {wasmpool}:v3:holders           SET    the hosts that hold any
//! ```

use redis::{Connection, ErrorKind, ServerErrorKind};

use super::redis_error;
use crate::error::{Error, Result};

/// The version of the data layout this wasmpool reads and writes.
pub(crate) const LAYOUT: &str = "v3";

/// The key that names the layout a Redis's wasmpool keys follow.
pub(crate) const LAYOUT_KEY: &str = "{wasmpool}:layout";

/// Where the layouts before v3 (keys `wasmpool:v2:*`, no hash tag) named theirs.
const OLD_LAYOUT_KEY: &str = "wasmpool:layout";

/// The hash tag of every key: on a Redis Cluster, the one slot they share.
pub(crate) const HASH_TAG: &str = "{wasmpool}";

/// How long a tenant's lease on its streams lasts unrenewed (see the table above): many
/// beats, so a submitter that loses Redis for a while keeps them; one that comes back
/// after it has gone registers its tenant again at its next beat.
pub(crate) const TENANT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

/// The consumer group of the task stream: every host reads through it.
pub(crate) const GROUP: &str = "hosts";

/// The longest tenant name, in bytes.
pub(crate) const MAX_TENANT_LEN: usize = 64;

/// Checks that `name` may name a tenant of a cluster: 1 to [`MAX_TENANT_LEN`] of
/// `A-Z a-z 0-9 _ -` (it becomes part of a Redis key, and of what a host is told to serve).
pub(crate) fn check_tenant(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_TENANT_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::State(format!(
            "{name:?} is not a tenant name: a tenant is named by 1 to {MAX_TENANT_LEN} of \
             A-Z a-z 0-9 _ -"
        )))
    }
}

/// The keys of one layout version.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: format!("{HASH_TAG}:{LAYOUT}:"),
        }
    }
}

impl Keys {
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The task stream of untenanted pools.
    pub fn tasks(&self) -> String {
        format!("{}tasks", self.prefix)
    }

    /// The task stream of `tenant`'s pools (a name [`check_tenant`] passed).
    pub fn tenant_tasks(&self, tenant: &str) -> String {
        format!("{}tasks:{tenant}", self.prefix)
    }

    /// The task stream of a pool of `tenant`, or of an untenanted one.
    pub fn stream(&self, tenant: Option<&str>) -> String {
        match tenant {
            Some(t) => self.tenant_tasks(t),
            None => self.tasks(),
        }
    }

    /// The redelivery stream of the task stream `stream` (one of [`tasks`](Keys::tasks),
    /// [`tenant_tasks`](Keys::tenant_tasks)): where the reaper puts a dead host's chunks, so
    /// that they are claimed before the chunks still waiting in the task stream. It is
    /// `…:redo` for `…:tasks` and `…:redo:T` for `…:tasks:T` (never a task stream's name: a
    /// tenant's name has no `:`). A redelivery stream's own is itself.
    pub fn redo_of(&self, stream: &str) -> String {
        let tasks = self.tasks();
        match stream.strip_prefix(tasks.as_str()) {
            Some("") => format!("{}redo", self.prefix),
            Some(rest) if rest.starts_with(':') => format!("{}redo{rest}", self.prefix),
            _ => stream.to_string(),
        }
    }

    /// The reaper's turn (see `scripts::REAP`).
    pub fn reaping(&self) -> String {
        format!("{}reaping", self.prefix)
    }

    /// Set by the reaper's pass that sweeps (see `scripts::REAP`).
    pub fn swept(&self) -> String {
        format!("{}swept", self.prefix)
    }

    /// The set of redelivery streams that may hold entries not yet claimed.
    pub fn redoing(&self) -> String {
        format!("{}redoing", self.prefix)
    }

    /// The set of tenants that have a task stream.
    pub fn tenants(&self) -> String {
        format!("{}tenants", self.prefix)
    }

    /// The lease on `tenant`'s streams.
    pub fn tenant_lease(&self, tenant: &str) -> String {
        format!("{}tenant:{tenant}", self.prefix)
    }

    /// The tenant whose task or redelivery stream `stream` is (`None`: the untenanted
    /// pools' streams, or not a stream of this layout).
    pub fn tenant_of<'a>(&self, stream: &'a str) -> Option<&'a str> {
        let rest = stream.strip_prefix(self.prefix.as_str())?;
        rest.strip_prefix("tasks:")
            .or_else(|| rest.strip_prefix("redo:"))
    }

    /// The tenants' weights.
    pub fn weights(&self) -> String {
        format!("{}weights", self.prefix)
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

    /// The hosts declared dead, and when (see the table above).
    pub fn dead(&self) -> String {
        format!("{}dead", self.prefix)
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
/// for this layout), and that the task stream, its redelivery stream and their consumer
/// group exist.
pub(crate) fn check_layout(con: &mut Connection, keys: &Keys, url: &str) -> Result<()> {
    // An older layout's keys: on a Redis Cluster that key may hash to another node, which
    // an older wasmpool (it ran on no cluster) cannot have used. A user whose ACL keeps it
    // to this layout's keys (`~{wasmpool}:*`) may not read it (`NOPERM`): the check is
    // skipped then, as that user can neither read nor write the older layout's keys, nor
    // so mix its work with theirs; this layout's own key is checked all the same.
    let old: redis::RedisResult<Option<String>> = redis::cmd("GET").arg(OLD_LAYOUT_KEY).query(con);
    match old {
        Ok(Some(v)) => return Err(other_version(url, OLD_LAYOUT_KEY, &format!("{v:?}"))),
        Ok(None) => {}
        Err(e) if e.code() == Some("MOVED") || e.code() == Some("ASK") => {}
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoPerm) => {
            tracing::debug!(
                "cluster: the user may not read `{OLD_LAYOUT_KEY}` ({e}): an older layout's \
                 keys are not looked for"
            );
        }
        Err(e) => return Err(redis_error(url, "reading the key layout", e)),
    }
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
            let found = other.map_or("not a layout name".to_string(), |v| format!("{v:?}"));
            return Err(other_version(url, LAYOUT_KEY, &found));
        }
    }
    ensure_stream(con, keys, &keys.tasks(), url)?;
    ensure_stream(con, keys, &keys.redo_of(&keys.tasks()), url)
}

/// The error for a Redis whose layout key `key` says `found`.
fn other_version(url: &str, key: &str, found: &str) -> Error {
    let url = super::shown_url(url);
    Error::Cluster(format!(
        "the Redis at {url} holds the keys of another version of wasmpool: `{key}` is \
         {found}, and this wasmpool reads and writes layout {LAYOUT} (keys \
         `{HASH_TAG}:{LAYOUT}:*`); use another Redis (or database), or run the same version \
         of wasmpool on every host"
    ))
}

/// Makes sure the task stream `stream` and its consumer group exist. The group starts at
/// the stream's first entry, so entries added before it (by a submitter that got there
/// first, after Redis lost its data) are claimed all the same.
///
/// A tenant's stream is made only while the tenant is registered (in `tenants`), in the
/// same atomic step: a host serving every tenant that still reads the streams of a
/// tenant the reaper has just removed does not make them again, left where nobody would
/// remove them. (Whoever registers a tenant adds it first.)
pub(crate) fn ensure_stream(
    con: &mut Connection,
    keys: &Keys,
    stream: &str,
    url: &str,
) -> Result<()> {
    let Some(tenant) = keys.tenant_of(stream) else {
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query(con);
        return match created {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(redis_error(url, "creating the task stream", e)),
        };
    };
    let _: i64 = redis::Script::new(ENSURE_TENANT_STREAM)
        .key(stream)
        .key(keys.tenants())
        .arg(GROUP)
        .arg(tenant)
        .invoke(con)
        .map_err(|e| redis_error(url, "creating the tenant's task stream", e))?;
    Ok(())
}

/// Makes a registered tenant's stream and its group (see [`ensure_stream`]).
///
/// KEYS: the stream, tenants. ARGV: group, tenant. Returns 1 when the stream has its
/// group, 0 when the tenant is not registered (nothing made).
const ENSURE_TENANT_STREAM: &str = r#"
if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then return 0 end
local r = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(r) == 'table' and r.err and string.sub(r.err, 1, 9) ~= 'BUSYGROUP' then
  return redis.error_reply(r.err)
end
return 1
"#;

/// Records `tenant` among the tenants with a stream (so `--all-tenants` hosts and the
/// reaper find it) and makes sure its task and redelivery streams and their group exist.
/// Its lease is taken first (for [`TENANT_LEASE`]; the caller's beat renews it), so the
/// reaper does not remove what this makes before the caller uses it.
pub(crate) fn register_tenant(
    con: &mut Connection,
    keys: &Keys,
    tenant: &str,
    url: &str,
) -> Result<()> {
    let _: () = redis::cmd("SET")
        .arg(keys.tenant_lease(tenant))
        .arg(1)
        .arg("PX")
        .arg(TENANT_LEASE.as_millis() as u64)
        .query(con)
        .map_err(|e| redis_error(url, "taking the tenant's lease", e))?;
    let _: i64 = redis::cmd("SADD")
        .arg(keys.tenants())
        .arg(tenant)
        .query(con)
        .map_err(|e| redis_error(url, "recording the tenant", e))?;
    ensure_stream(con, keys, &keys.tenant_tasks(tenant), url)?;
    ensure_stream(con, keys, &keys.redo_of(&keys.tenant_tasks(tenant)), url)
}

/// The tenants with a task stream, sorted.
pub(crate) fn known_tenants(con: &mut Connection, keys: &Keys, url: &str) -> Result<Vec<String>> {
    let mut tenants: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.tenants())
        .query(con)
        .map_err(|e| redis_error(url, "listing the tenants", e))?;
    // Only names this version would write: anything else is not a stream of ours.
    tenants.retain(|t| check_tenant(t).is_ok());
    tenants.sort();
    Ok(tenants)
}

/// The tenants' weights that were set (a weight out of range is left out: 1).
pub(crate) fn tenant_weights(
    con: &mut Connection,
    keys: &Keys,
    url: &str,
) -> Result<std::collections::HashMap<String, u32>> {
    let mut weights: std::collections::HashMap<String, u32> = redis::cmd("HGETALL")
        .arg(keys.weights())
        .query(con)
        .map_err(|e| redis_error(url, "reading the tenants' weights", e))?;
    weights.retain(|_, w| (1..=crate::Tenant::MAX_WEIGHT).contains(w));
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_names_are_short_and_plain() {
        for ok in ["a", "team-7", "A_b-C", &"x".repeat(MAX_TENANT_LEN)] {
            assert!(check_tenant(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "a:b", "ü", "a*", &"x".repeat(MAX_TENANT_LEN + 1)] {
            let e = check_tenant(bad).unwrap_err().to_string();
            assert!(e.contains("not a tenant name"), "{e}");
        }
        let keys = Keys::default();
        assert_eq!(keys.stream(None), "{wasmpool}:v3:tasks");
        assert_eq!(keys.stream(Some("b")), "{wasmpool}:v3:tasks:b");
        assert_eq!(keys.redo_of("{wasmpool}:v3:tasks"), "{wasmpool}:v3:redo");
        assert_eq!(
            keys.redo_of("{wasmpool}:v3:tasks:b"),
            "{wasmpool}:v3:redo:b"
        );
        assert_eq!(keys.redo_of("{wasmpool}:v3:redo:b"), "{wasmpool}:v3:redo:b");
        // A tenant named `redo` has its own streams.
        assert_eq!(
            keys.redo_of(&keys.tenant_tasks("redo")),
            "{wasmpool}:v3:redo:redo"
        );
        assert_ne!(keys.tenant_tasks("redo"), keys.redo_of(&keys.tasks()));
        assert_eq!(keys.tenant_of("{wasmpool}:v3:tasks:b"), Some("b"));
        assert_eq!(keys.tenant_of("{wasmpool}:v3:redo:b"), Some("b"));
        assert_eq!(keys.tenant_of(&keys.tasks()), None);
        assert_eq!(keys.tenant_of(&keys.redo_of(&keys.tasks())), None);
        assert_eq!(keys.tenant_of(&keys.tenant_tasks("redo")), Some("redo"));
    }
}
