//! Shared objects kept in Redis, so that tasks on every host of a cluster (and the program
//! that made them) share them: queues and pipes are lists, dicts hashes, a lock's owner and
//! fence fields of its hash, a semaphore's holders a hash; each operation is one Lua script
//! (`lua.rs`), atomic in Redis.
//!
//! A handle of a cluster object carries the cluster tag ([`CLUSTER_TAG`]) in the bits a
//! local handle keeps its runtime's, so every process tells them apart by the id alone: the
//! submitting program routes it to the Redis it was made in (its route number is in the
//! id), a host to the Redis it joined.
//!
//! A blocked operation does not poll Redis hard: the script that finds it must wait counts
//! it on the object's wait channel and the caller `BLPOP`s that channel's wake list, which the
//! change that may let it through pushes a token to; it asks again when woken, and at least
//! every [`POLL`] (so its deadline and its caller's death are noticed), and once more when its
//! deadline passes, for the timeout's answer (atomically: a barrier breaks, a condition's
//! waiter goes on to re-acquire its lock).

mod lane;
mod lua;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use redis::{Script, Value};
use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request, Response, too_large};

pub(crate) use self::lane::ClusterLane;
use super::keys::{Keys, check_layout};
use super::{connect, redis_error};
use crate::error::Result;

/// The runtime tag that marks a cluster object's handle (the largest; no runtime has it).
pub(crate) const CLUSTER_TAG: u32 = (1 << 24) - 1;

/// The bits of a cluster handle's id that hold its object number (the low bit: the pipe
/// end); above them, up to the tag, the route number in the process that made it.
const NUMBER_BITS: u32 = 28;

/// How many route numbers a process has (a program talking to this many Redis servers).
pub(crate) const MAX_ROUTES: u32 = 1 << (crate::runtime::TAG_SHIFT - NUMBER_BITS);

/// The longest a blocked operation waits on its wake list before it asks again.
const POLL: Duration = Duration::from_millis(500);

/// How long an object is kept after its last operation, by default (a day).
pub const DEFAULT_OBJECT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Whether `h` is the handle of a cluster object.
pub(crate) fn is_cluster(h: Handle) -> bool {
    crate::runtime::tag_of(h) == CLUSTER_TAG
}

/// The route number in a cluster handle.
pub(crate) fn route_of(h: Handle) -> u32 {
    ((h.id >> NUMBER_BITS) as u32) & (MAX_ROUTES - 1)
}

/// The Redis side of the shared objects of one cluster, for one process.
pub(crate) struct ClusterObjects {
    url: String,
    keys: Keys,
    /// This process's route number for the cluster (in the handles it makes).
    route: u32,
    /// The owner name of this process's threads, as holders of objects: `c:HOST:PID:TAG`.
    client: String,
    /// The largest message accepted.
    max_message: usize,
    op: Script,
    create: Script,
    release: Script,
    set_ttl: Script,
    /// Connections not in use.
    idle: Mutex<Vec<redis::Connection>>,
}

impl std::fmt::Debug for ClusterObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterObjects")
            .field("url", &self.url)
            .field("route", &self.route)
            .finish_non_exhaustive()
    }
}

/// What one run of the operation script answered.
enum Step {
    Done(Response),
    Failed(ObjectError),
    Wait {
        channel: String,
        state: String,
        no_deadline: bool,
    },
    TimedOut,
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
        Value::SimpleString(s) => s.clone(),
        Value::Int(i) => i.to_string(),
        _ => String::new(),
    }
}

fn bytes(v: Value) -> Vec<u8> {
    match v {
        Value::BulkString(b) => b,
        other => text(&other).into_bytes(),
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => text(other).parse().unwrap_or(0),
    }
}

fn array(v: Value) -> Vec<Value> {
    match v {
        Value::Array(a) => a,
        Value::Nil => Vec::new(),
        other => vec![other],
    }
}

fn malformed() -> ObjectError {
    ObjectError::Invalid("a malformed answer from the cluster's Redis".into())
}

/// Reads the operation script's answer.
fn parse_step(reply: Value) -> Step {
    let mut parts = array(reply).into_iter();
    let Some(status) = parts.next() else {
        return Step::Failed(malformed());
    };
    match text(&status).as_str() {
        "K" => {
            let form = parts.next().map(|f| text(&f)).unwrap_or_default();
            let first = parts.next();
            let response = match (form.as_str(), first) {
                ("u", _) => Response::Unit,
                ("v", Some(v)) => Response::Value(bytes(v)),
                ("m", v) => Response::Maybe(v.map(bytes)),
                ("V", v) => Response::Values(
                    v.map(array)
                        .unwrap_or_default()
                        .into_iter()
                        .map(bytes)
                        .collect(),
                ),
                ("e", v) => {
                    let flat = v.map(array).unwrap_or_default();
                    let mut it = flat.into_iter();
                    let mut entries = Vec::new();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        entries.push((bytes(k), bytes(v)));
                    }
                    Response::Entries(entries)
                }
                ("c", Some(v)) => Response::Count(u64::try_from(int(&v)).unwrap_or(0)),
                ("i", Some(v)) => Response::Int(int(&v)),
                ("f", Some(v)) => Response::Flag(int(&v) != 0),
                ("r", Some(v)) => Response::RunAction(u32::try_from(int(&v)).unwrap_or(0)),
                _ => return Step::Failed(malformed()),
            };
            Step::Done(response)
        }
        "E" => {
            let code = parts.next().map(|c| text(&c)).unwrap_or_default();
            let message = parts.next().map(|m| text(&m)).unwrap_or_default();
            Step::Failed(match code.as_str() {
                "closed" => ObjectError::Closed(message),
                "broken" => ObjectError::Broken,
                "notowner" => ObjectError::NotOwner(message),
                "missing" => ObjectError::Missing(message),
                "stale" => ObjectError::Stale(message),
                "toolarge" => ObjectError::TooLarge(message),
                _ => ObjectError::Invalid(message),
            })
        }
        "W" => {
            let channel = parts.next().map(|c| text(&c)).unwrap_or_default();
            let state = parts.next().map(|s| text(&s)).unwrap_or_default();
            let no_deadline = parts.next().is_some_and(|n| text(&n) == "1");
            Step::Wait {
                channel,
                state,
                no_deadline,
            }
        }
        "T" => Step::TimedOut,
        _ => Step::Failed(malformed()),
    }
}

/// What a timed-out operation answers, as a local object's waiter does.
fn timeout_answer(req: &Request) -> std::result::Result<Response, ObjectError> {
    match req {
        Request::QueueGet => Err(ObjectError::Empty),
        Request::QueuePut(_) => Err(ObjectError::Full),
        Request::Acquire | Request::EventWait | Request::ConnPoll => Ok(Response::Flag(false)),
        Request::BarrierWait | Request::BarrierWaitAction => Err(ObjectError::Broken),
        _ => Err(ObjectError::Timeout),
    }
}

fn int_arg(i: impl ToString) -> Vec<u8> {
    i.to_string().into_bytes()
}

fn opt_arg(i: Option<i64>) -> Vec<u8> {
    i.map(int_arg).unwrap_or_default()
}

/// The script's name of an operation, and its arguments.
fn op_of(req: &Request) -> Option<(&'static str, Vec<Vec<u8>>)> {
    use Request::*;
    Some(match req {
        QueuePut(v) => ("put", vec![v.clone()]),
        QueueGet => ("get", vec![]),
        QueueQsize => ("qsize", vec![]),
        QueueMaxsize => ("maxsize", vec![]),
        QueueClose => ("close", vec![]),
        QueueTaskDone => ("task_done", vec![]),
        QueueJoin => ("join", vec![]),
        ConnSend(v) => ("send", vec![v.clone()]),
        ConnRecv => ("recv", vec![]),
        ConnPoll => ("poll", vec![]),
        ConnClose => ("close", vec![]),
        Acquire => ("acquire", vec![]),
        Release => ("release", vec![]),
        Locked => ("locked", vec![]),
        SemaphoreValue => ("value", vec![]),
        EventSet => ("set", vec![]),
        EventClear => ("clear", vec![]),
        EventIsSet => ("is_set", vec![]),
        EventWait => ("wait", vec![]),
        BarrierWait => ("wait", vec![]),
        BarrierWaitAction => ("wait_action", vec![]),
        BarrierActionDone(ok) => ("action_done", vec![int_arg(u8::from(*ok))]),
        BarrierAbort => ("abort", vec![]),
        BarrierReset => ("reset", vec![]),
        BarrierNWaiting => ("n_waiting", vec![]),
        BarrierParties => ("parties", vec![]),
        BarrierBroken => ("broken", vec![]),
        ConditionWait => ("wait", vec![]),
        ConditionNotify(n) => ("notify", vec![int_arg(n)]),
        ConditionNotifyAll => ("notify_all", vec![]),
        DictGet(k) => ("get", vec![k.clone()]),
        DictSet((k, v)) => ("set", vec![k.clone(), v.clone()]),
        DictDelete(k) => ("delete", vec![k.clone()]),
        DictContains(k) => ("contains", vec![k.clone()]),
        DictKeys => ("keys", vec![]),
        DictValues => ("values", vec![]),
        DictItems => ("items", vec![]),
        DictLen => ("len", vec![]),
        DictUpdate(entries) => (
            "update",
            entries
                .iter()
                .flat_map(|(k, v)| [k.clone(), v.clone()])
                .collect(),
        ),
        DictSetdefault((k, v)) => ("setdefault", vec![k.clone(), v.clone()]),
        DictPop(k) => ("pop", vec![k.clone()]),
        DictPopitem => ("popitem", vec![]),
        DictClear => ("clear", vec![]),
        DictCompareAndSwap { key, expected, new } => (
            "cas",
            vec![
                key.clone(),
                int_arg(u8::from(expected.is_some())),
                expected.clone().unwrap_or_default(),
                new.clone(),
            ],
        ),
        DictIncrement(..) => return None,
        ListAppend(v) => ("append", vec![v.clone()]),
        ListExtend(items) => ("extend", items.clone()),
        ListGet(i) => ("get", vec![int_arg(i)]),
        ListSet(i, v) => ("set", vec![int_arg(i), v.clone()]),
        ListLen => ("len", vec![]),
        ListPop(i) => ("pop", vec![opt_arg(*i)]),
        ListIndex(v) => ("index", vec![v.clone()]),
        ListItems => ("items", vec![]),
        ListInsert(i, v) => ("insert", vec![int_arg(i), v.clone()]),
        ListRemove(v) => ("remove", vec![v.clone()]),
        ListClear => ("clear", vec![]),
        ListSlice(a, b) => ("slice", vec![opt_arg(*a), opt_arg(*b)]),
    })
}

/// What a new object is: its kind's name in Redis and its fields.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub kind: Kind,
    pub fields: Vec<(&'static str, String)>,
}

impl Spec {
    fn redis_kind(&self) -> &'static str {
        match self.kind {
            Kind::Queue => "queue",
            Kind::Connection => "pipe",
            Kind::Lock => "lock",
            Kind::RLock => "rlock",
            Kind::Semaphore => "semaphore",
            Kind::Event => "event",
            Kind::Barrier => "barrier",
            Kind::Condition => "condition",
            Kind::Dict => "dict",
            Kind::List => "list",
        }
    }
}

fn random_token() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the buffer it is given.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != 8 {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        return h.finish();
    }
    u64::from_le_bytes(buf)
}

impl ClusterObjects {
    /// Connects to the cluster's Redis at `url` (checking its keys are this version's); its
    /// handles carry route number `route`.
    pub fn connect(url: &str, route: u32, max_message: usize) -> Result<Self> {
        let keys = Keys::default();
        let mut con = connect(url)?;
        check_layout(&mut con, &keys, url)?;
        Ok(ClusterObjects {
            url: url.to_string(),
            keys,
            route,
            client: format!(
                "c:{}:{}:{}",
                super::host::hostname(),
                std::process::id(),
                super::tag()
            ),
            max_message,
            op: Script::new(lua::OBJECT_OP),
            create: Script::new(lua::CREATE),
            release: Script::new(lua::RELEASE),
            set_ttl: Script::new(lua::SET_TTL),
            idle: Mutex::new(vec![con]),
        })
    }

    /// The Redis URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs `f` on a connection (one not in use, or a new one); a connection that fails
    /// is dropped, and `f` runs once more on a new one.
    fn with_con<T>(
        &self,
        mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> std::result::Result<T, redis::RedisError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let fresh = pooled.is_none();
        let mut con = match pooled {
            Some(c) => c,
            None => self.new_con()?,
        };
        // Tried again on a new connection: one that went stale while pooled, or whose node
        // no longer serves the slot (a Redis Cluster's reshard or failover: the command did
        // not run, and a new connection goes to the node that serves it now). Not after a
        // timeout: a blocking operation may have taken effect.
        let result = match f(&mut con) {
            Err(e)
                if crate::cluster::reconnect::moved(&e)
                    || (!fresh && (e.is_io_error() || e.is_connection_dropped())) =>
            {
                con = self.new_con()?;
                f(&mut con)
            }
            other => other,
        };
        if result.is_ok() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < 64 {
                idle.push(con);
            }
        }
        result
    }

    fn new_con(&self) -> std::result::Result<redis::Connection, redis::RedisError> {
        connect(&self.url).map_err(|e| {
            redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                e.to_string(),
            ))
        })
    }

    /// A failed round trip to Redis as an object's error: [`ObjectError::Unavailable`] when
    /// Redis could not be reached (not the caller's fault; it may try again), else (Redis
    /// refused the script) [`ObjectError::Invalid`].
    fn unreachable(&self, e: redis::RedisError) -> ObjectError {
        let unavailable = super::unreachable(&e);
        let message = redis_error(&self.url, "a shared object's operation", e).to_string();
        if unavailable {
            ObjectError::Unavailable(message)
        } else {
            ObjectError::Invalid(message)
        }
    }

    /// The owner name of the calling thread of this (submitting) process.
    pub fn client_owner(&self) -> String {
        let thread = match crate::broker::Owner::host_thread() {
            crate::broker::Owner::Host(n) => n,
            crate::broker::Owner::Pid(p) => u64::from(p),
        };
        format!("{}/t{thread}/", self.client)
    }

    /// A lock's fence: how many times it has been acquired, plus how many times it was
    /// taken from a holder that died.
    pub fn fence(&self, target: Handle) -> std::result::Result<u64, ObjectError> {
        match self.step(&self.client_owner(), target, "fence", &[], "", false)? {
            Step::Done(Response::Count(n)) => Ok(n),
            Step::Failed(e) => Err(e),
            _ => Err(malformed()),
        }
    }

    /// Makes an object in Redis, kept until it has been idle for `ttl`; answers its
    /// handles (the second is a pipe's other end).
    pub fn create(&self, spec: &Spec, ttl: Duration) -> Result<[Handle; 2]> {
        let tokens = [random_token(), random_token()];
        let mut fields: Vec<(String, String)> = vec![
            ("k".into(), spec.redis_kind().into()),
            ("name".into(), spec.kind.name().into()),
            ("t0".into(), tokens[0].to_string()),
            ("t1".into(), tokens[1].to_string()),
        ];
        fields.extend(
            spec.fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone())),
        );
        let n: u64 = self
            .with_con(|c| {
                let mut inv = self.create.key(self.keys.objects_counter());
                inv.arg(self.keys.prefix())
                    .arg(ttl.max(Duration::from_secs(1)).as_millis() as u64);
                for (k, v) in &fields {
                    inv.arg(k).arg(v);
                }
                inv.invoke(c)
            })
            .map_err(|e| redis_error(&self.url, "making a shared object", e))?;
        let id = (u64::from(CLUSTER_TAG) << crate::runtime::TAG_SHIFT)
            | (u64::from(self.route) << NUMBER_BITS)
            | (n & ((1 << NUMBER_BITS) - 2));
        Ok([
            Handle {
                id,
                token: tokens[0],
            },
            Handle {
                id: id | 1,
                token: tokens[1],
            },
        ])
    }

    /// Sets how long the object `target` names is kept once idle, from now (at least a
    /// millisecond); answers whether there was such an object.
    pub fn set_ttl(&self, target: Handle, ttl: Duration) -> std::result::Result<bool, ObjectError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        self.expire(target, ms)
    }

    /// Removes the object `target` names from Redis; answers whether there was such an
    /// object.
    pub fn destroy(&self, target: Handle) -> std::result::Result<bool, ObjectError> {
        self.expire(target, 0)
    }

    /// Gives every key of the object `target` names `ms` to live once idle (0: none, it is
    /// removed now).
    fn expire(&self, target: Handle, ms: u64) -> std::result::Result<bool, ObjectError> {
        let base = self.base(target);
        let end = (target.id & 1).to_string();
        let token = target.token.to_string();
        let found: i64 = self
            .with_con(|c| {
                self.set_ttl
                    .key(&base)
                    .arg(&end)
                    .arg(&token)
                    .arg(ms)
                    .invoke(c)
            })
            .map_err(|e| self.unreachable(e))?;
        Ok(found == 1)
    }

    /// The Redis key of the object `target` names.
    fn base(&self, target: Handle) -> String {
        self.keys.object(target.id & ((1 << NUMBER_BITS) - 2))
    }

    /// Runs the operation script once.
    fn step(
        &self,
        owner: &str,
        target: Handle,
        op: &str,
        args: &[Vec<u8>],
        state: &str,
        last: bool,
    ) -> std::result::Result<Step, ObjectError> {
        let base = self.base(target);
        let end = (target.id & 1).to_string();
        let token = target.token.to_string();
        let reply: Value = self
            .with_con(|c| {
                let mut inv = self.op.key(&base);
                inv.arg(op)
                    .arg(&end)
                    .arg(&token)
                    .arg(owner)
                    .arg(state)
                    .arg(if last { "1" } else { "0" })
                    .arg(self.keys.prefix());
                for a in args {
                    inv.arg(a.as_slice());
                }
                inv.invoke(c)
            })
            .map_err(|e| self.unreachable(e))?;
        Ok(parse_step(reply))
    }

    /// Performs `req` on `target` for `owner` (`h:HOST/PID/SINCE` for a host's worker, whose
    /// operations Redis refuses once the host has been declared dead after SINCE; `c:…` for
    /// a thread of a submitting program), blocking at most `timeout`; `gone` says the caller
    /// went away (its answer is not wanted).
    pub fn invoke(
        &self,
        owner: &str,
        target: Handle,
        req: Request,
        timeout: Option<Duration>,
        gone: &dyn Fn() -> bool,
    ) -> std::result::Result<Response, ObjectError> {
        let len = req.payload_len();
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        if let Request::DictIncrement(key, delta) = req {
            return self.increment(owner, target, key, delta);
        }
        let Some((op, args)) = op_of(&req) else {
            return Err(ObjectError::Invalid(
                "not an operation of a shared object".into(),
            ));
        };
        let mut deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        // A zero timeout asks once, for the answer now or the timeout's.
        let (mut state, mut last) = (String::new(), timeout == Some(Duration::ZERO));
        loop {
            match self.step(owner, target, op, &args, &state, last)? {
                Step::Done(r) => return Ok(r),
                Step::Failed(e) => return Err(e),
                Step::TimedOut => return timeout_answer(&req),
                Step::Wait {
                    channel,
                    state: next,
                    no_deadline,
                } => {
                    state = next;
                    if no_deadline {
                        deadline = None;
                        last = false;
                    }
                    let left = match deadline {
                        Some(d) => d.saturating_duration_since(Instant::now()),
                        None => POLL,
                    };
                    if deadline.is_some() && left.is_zero() {
                        last = true;
                        continue;
                    }
                    if gone() {
                        return Err(ObjectError::Stale("the caller is gone".into()));
                    }
                    let wake = format!("{}:w{channel}", self.base(target));
                    let secs = left.min(POLL).as_secs_f64().max(0.001);
                    let _: Value = self
                        .with_con(|c| redis::cmd("BLPOP").arg(&wake).arg(secs).query(c))
                        .map_err(|e| self.unreachable(e))?;
                }
            }
        }
    }

    /// A dict's `increment`: read, add, and compare-and-swap, again until no one else
    /// changed the value in between (exact whatever the integer's size).
    fn increment(
        &self,
        owner: &str,
        target: Handle,
        key: Vec<u8>,
        delta: i64,
    ) -> std::result::Result<Response, ObjectError> {
        loop {
            let current =
                match self.step(owner, target, "get", std::slice::from_ref(&key), "", false)? {
                    Step::Done(Response::Maybe(v)) => v,
                    Step::Failed(e) => return Err(e),
                    _ => return Err(malformed()),
                };
            let (new, encoded) = crate::rules::add_to_int(current.as_deref(), delta)?;
            let args = vec![
                key.clone(),
                int_arg(u8::from(current.is_some())),
                current.unwrap_or_default(),
                encoded,
            ];
            match self.step(owner, target, "cas", &args, "", false)? {
                Step::Done(Response::Flag(true)) => return Ok(Response::Int(new)),
                Step::Done(Response::Flag(false)) => continue,
                Step::Failed(e) => return Err(e),
                _ => return Err(malformed()),
            }
        }
    }

    /// Gives back what owners named `owner_prefix…` of host `host` held (a worker of it
    /// that exited).
    pub fn release_owner(&self, host: &str, owner_prefix: &str) -> Result<()> {
        let _: i64 = self
            .with_con(|c| {
                self.release
                    .key(self.keys.hosts())
                    .key(self.keys.holders())
                    .arg(self.keys.prefix())
                    .arg(owner_prefix)
                    .arg(host)
                    .invoke(c)
            })
            .map_err(|e| redis_error(&self.url, "giving back a worker's locks", e))?;
        Ok(())
    }
}

/// Gives back what the hosts whose lease has expired held (run by the reaper).
pub(crate) fn release_dead_hosts(
    con: &mut redis::Connection,
    keys: &Keys,
) -> redis::RedisResult<i64> {
    Script::new(lua::RELEASE)
        .key(keys.hosts())
        .key(keys.holders())
        .arg(keys.prefix())
        .arg("")
        .arg("")
        .invoke(con)
}

/// The fields of a new object of each kind.
impl Spec {
    pub fn queue(maxsize: usize, joinable: bool) -> Spec {
        Spec {
            kind: Kind::Queue,
            fields: vec![
                ("max", maxsize.to_string()),
                ("j", u8::from(joinable).to_string()),
            ],
        }
    }

    pub fn pipe(duplex: bool) -> Spec {
        Spec {
            kind: Kind::Connection,
            fields: vec![("duplex", u8::from(duplex).to_string())],
        }
    }

    pub fn lock(recursive: bool) -> Spec {
        Spec {
            kind: if recursive { Kind::RLock } else { Kind::Lock },
            fields: vec![("o", String::new()), ("fence", "0".into())],
        }
    }

    pub fn semaphore(value: u64, bounded: bool) -> Spec {
        Spec {
            kind: Kind::Semaphore,
            fields: vec![
                ("v", value.to_string()),
                ("init", value.to_string()),
                ("b", u8::from(bounded).to_string()),
            ],
        }
    }

    pub fn event() -> Spec {
        Spec {
            kind: Kind::Event,
            fields: vec![("s", "0".into())],
        }
    }

    pub fn barrier(parties: u32) -> Spec {
        Spec {
            kind: Kind::Barrier,
            fields: vec![("p", parties.max(1).to_string()), ("g", "0".into())],
        }
    }

    pub fn condition() -> Spec {
        Spec {
            kind: Kind::Condition,
            fields: vec![("o", String::new())],
        }
    }

    pub fn dict() -> Spec {
        Spec {
            kind: Kind::Dict,
            fields: vec![],
        }
    }

    pub fn list() -> Spec {
        Spec {
            kind: Kind::List,
            fields: vec![],
        }
    }
}
