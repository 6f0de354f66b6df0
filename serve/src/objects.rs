//! Shared objects per tenant: the table behind `/v1/objects`, what a task's `"@NAME"`
//! arguments resolve to, and the operations the API does on the objects.
//!
//! Every object lives in the service's one [`wasmpool::Runtime`], in memory: a restart of
//! the service loses them (a task that still names one fails with `object_not_found`).
//! With `serve --cluster` they live in the cluster's Redis instead, where the hosts' tasks
//! reach them ([`ClusterManager`]); the table of names is still this process's. Either
//! way a deleted object lives on while tasks given it run ([`Holders`]), counted against
//! its tenant's quota, and is freed (removed from Redis) when the last one ends. A
//! tenant reaches only the objects of its own table, by id or name; a task reaches only the
//! objects its arguments name, resolved against its tenant's table when it starts. A raw
//! handle written into arguments (what a task may answer when it returns an object) is
//! refused: the only way to pass an object is to name it.
//!
//! Operations done over HTTP act as one owner per tenant ([`wasmpool::Manager::acting_as`]):
//! a recursive lock or a condition acquired by one request is the tenant's, and released by
//! another request of the same tenant (or when nothing holds the object any more).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use wasmpool::cluster::ClusterManager;

use serde::{Serialize, Serializer};
use serde_json::{Map, Value, json};
use wasmpool::lines::{Json, Object};
use wasmpool::{Connection, Manager, ObjectError};

/// The kinds of object a tenant may create, with what each is made with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `queue`, holding at most `maxsize` items (0: unbounded).
    Queue { maxsize: usize },
    /// `joinable_queue`: a queue with `task_done` and `join`.
    JoinableQueue { maxsize: usize },
    /// `pipe`: two ends; with `duplex` false end 0 only receives and end 1 only sends.
    Pipe { duplex: bool },
    /// `lock`: anyone may release it.
    Lock,
    /// `rlock`: recursive, released by its owner only.
    RLock,
    /// `semaphore` of initial `value`.
    Semaphore { value: u64 },
    /// `bounded_semaphore`: refuses a release above its initial `value`.
    BoundedSemaphore { value: u64 },
    /// `event`.
    Event,
    /// `barrier` for `parties`.
    Barrier { parties: u32 },
    /// `condition`, with its own recursive lock.
    Condition,
    /// `dict`.
    Dict,
    /// `list`.
    List,
}

/// The kinds' names, as `POST /v1/objects` takes them.
pub const KINDS: &[&str] = &[
    "queue",
    "joinable_queue",
    "pipe",
    "lock",
    "rlock",
    "semaphore",
    "bounded_semaphore",
    "event",
    "barrier",
    "condition",
    "dict",
    "list",
];

/// The object `spec` asks for, made by manager `m` (a local [`Manager`] or a
/// [`ClusterManager`], whose makers are fallible: pass `?`).
macro_rules! make_object {
    ($spec:expr, $m:expr $(, $try:tt)?) => {
        match *$spec {
            Spec::Queue { maxsize } => Object::Queue($m.bounded_queue(maxsize)$($try)?),
            Spec::JoinableQueue { maxsize } => Object::Queue($m.joinable_queue(maxsize)$($try)?),
            Spec::Pipe { duplex } => {
                let (a, b) = $m.pipe(duplex)$($try)?;
                Object::Pipe(a, b)
            }
            Spec::Lock => Object::Lock($m.lock()$($try)?),
            Spec::RLock => Object::RLock($m.rlock()$($try)?),
            Spec::Semaphore { value } => Object::Semaphore($m.semaphore(value)$($try)?),
            Spec::BoundedSemaphore { value } => {
                Object::Semaphore($m.bounded_semaphore(value)$($try)?)
            }
            Spec::Event => Object::Event($m.event()$($try)?),
            Spec::Barrier { parties } => Object::Barrier($m.barrier(parties)$($try)?),
            Spec::Condition => Object::Condition($m.condition()$($try)?),
            Spec::Dict => Object::Dict($m.dict()$($try)?),
            Spec::List => Object::List($m.list()$($try)?),
        }
    };
}

impl Spec {
    /// The kind's name.
    pub fn kind(&self) -> &'static str {
        match self {
            Spec::Queue { .. } => "queue",
            Spec::JoinableQueue { .. } => "joinable_queue",
            Spec::Pipe { .. } => "pipe",
            Spec::Lock => "lock",
            Spec::RLock => "rlock",
            Spec::Semaphore { .. } => "semaphore",
            Spec::BoundedSemaphore { .. } => "bounded_semaphore",
            Spec::Event => "event",
            Spec::Barrier { .. } => "barrier",
            Spec::Condition => "condition",
            Spec::Dict => "dict",
            Spec::List => "list",
        }
    }

    /// What it was made with, as the API shows it.
    fn params(&self) -> Value {
        match *self {
            Spec::Queue { maxsize } | Spec::JoinableQueue { maxsize } => {
                json!({"maxsize": maxsize})
            }
            Spec::Pipe { duplex } => json!({"duplex": duplex}),
            Spec::Semaphore { value } | Spec::BoundedSemaphore { value } => {
                json!({"value": value})
            }
            Spec::Barrier { parties } => json!({"parties": parties}),
            _ => json!({}),
        }
    }

    fn create(&self, m: &Manager) -> Object {
        make_object!(self, m)
    }

    /// As [`create`](Self::create), in a cluster's Redis.
    fn create_on(&self, m: &ClusterManager) -> wasmpool::Result<Object> {
        Ok(make_object!(self, m, ?))
    }

    /// The operations `POST /v1/objects/{id}/{op}` takes for this kind.
    pub fn ops(&self) -> &'static [&'static str] {
        match self {
            Spec::Queue { .. } => &["put", "get", "qsize", "empty", "full", "maxsize", "close"],
            Spec::JoinableQueue { .. } => &[
                "put",
                "get",
                "qsize",
                "empty",
                "full",
                "maxsize",
                "close",
                "task_done",
                "join",
            ],
            Spec::Pipe { .. } => &["send", "recv", "poll", "close"],
            Spec::Lock | Spec::RLock => &["acquire", "release", "locked"],
            Spec::Semaphore { .. } | Spec::BoundedSemaphore { .. } => {
                &["acquire", "release", "value"]
            }
            Spec::Event => &["set", "clear", "is_set", "wait"],
            Spec::Barrier { .. } => &["wait", "abort", "reset", "n_waiting", "parties", "broken"],
            Spec::Condition => &["acquire", "release", "wait", "notify", "notify_all"],
            Spec::Dict => &[
                "get",
                "set",
                "delete",
                "contains",
                "keys",
                "values",
                "items",
                "len",
                "update",
                "setdefault",
                "pop",
                "popitem",
                "increment",
                "compare_and_swap",
                "clear",
            ],
            Spec::List => &[
                "append", "extend", "get", "set", "len", "pop", "insert", "remove", "index",
                "items", "slice", "clear",
            ],
        }
    }
}

/// One object of a tenant's table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Its id (128 random bits, hex).
    pub id: String,
    /// Its name, if it was given one.
    pub name: Option<String>,
    /// What it is.
    pub spec: Spec,
    /// When it was made, ms since the epoch.
    pub created_ms: i64,
    /// The object, shared by the table and every task and request given it.
    pub holders: Arc<Holders>,
}

/// What an object's holders share: the table's entry and each task or request given the
/// object holds one. Once the object is deleted from its table, the last holder to let go
/// frees it: an object of a cluster's Redis is removed from there (a local one is freed
/// with its last handle anyway).
#[derive(Debug)]
pub struct Holders {
    /// The handles (a local object lives while they do).
    object: Object,
    /// Taken out of its tenant's table.
    deleted: AtomicBool,
    /// On a cluster: where it lives.
    cluster: Option<ClusterManager>,
    /// Its id, for what is logged.
    id: String,
}

impl Drop for Holders {
    fn drop(&mut self) {
        if !self.deleted.load(Ordering::Acquire) {
            return;
        }
        if let Some(m) = &self.cluster
            && let Err(e) = m.destroy(self.object.handle())
        {
            eprintln!(
                "wasmpool serve: object {} was deleted, but removing it from Redis failed \
                 ({e}); it expires there once idle for its TTL",
                self.id
            );
        }
    }
}

impl Entry {
    /// The object's handles.
    pub fn object(&self) -> &Object {
        &self.holders.object
    }

    /// The object as the API shows it.
    pub fn view(&self) -> Value {
        let mut v = json!({
            "id": self.id,
            "kind": self.spec.kind(),
            "name": self.name,
            "created_ms": self.created_ms,
        });
        if let (Value::Object(v), Value::Object(p)) = (&mut v, self.spec.params()) {
            v.extend(p);
        }
        v
    }
}

/// Why an object could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// The tenant holds as many objects as its quota allows.
    #[error("this tenant holds {0} objects, its quota")]
    Quota(u32),
    /// Another object of the tenant has that name.
    #[error("this tenant already has an object named `{0}`")]
    NameTaken(String),
    /// The cluster's Redis, where the objects live, could not make it.
    #[error("the cluster's Redis could not make the object: {0}")]
    Unavailable(String),
}

/// What a task's argument named that is not (or no longer) the tenant's.
#[derive(Debug, thiserror::Error)]
pub enum RefError {
    /// `"@NAME"` names no object of the tenant.
    #[error(
        "argument {index}: `@{reference}` names no object of this tenant (deleted, never \
         made, or lost in a restart of the service)"
    )]
    NotFound {
        /// The argument's position.
        index: usize,
        /// The reference, without its `@`.
        reference: String,
    },
    /// A raw object handle in the arguments.
    #[error(
        "argument {index} holds an object handle; objects are passed by name, as \"@NAME\" or \
         \"@ID\""
    )]
    Forged {
        /// The argument's position.
        index: usize,
    },
}

impl RefError {
    /// The argument's position.
    pub fn index(&self) -> usize {
        match self {
            RefError::NotFound { index, .. } | RefError::Forged { index } => *index,
        }
    }
}

/// An argument once resolved: a JSON value, an object, or one end of a pipe. It
/// serializes as what it holds (an object as its handle, for the task).
#[derive(Debug)]
pub enum Resolved {
    /// A plain value.
    Value(Value),
    /// A whole object (a pipe as the pair of its ends), held while this lives.
    Object(Arc<Holders>),
    /// One end of a pipe, the pipe held while this lives.
    End {
        /// The end.
        end: Connection<Json>,
        /// The pipe's hold.
        _held: Arc<Holders>,
    },
}

impl Serialize for Resolved {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Resolved::Value(v) => v.serialize(s),
            Resolved::Object(held) => held.object.serialize(s),
            Resolved::End { end, .. } => end.serialize(s),
        }
    }
}

#[derive(Debug, Default)]
struct TenantObjects {
    entries: Vec<Entry>,
    /// The objects deleted from `entries` that tasks still hold.
    deleted: Vec<Weak<Holders>>,
    /// Operations of this tenant in progress.
    calls: usize,
}

impl TenantObjects {
    /// The objects this tenant holds: those of its table and those deleted from it that
    /// running tasks (or requests) still hold.
    fn held(&mut self) -> usize {
        self.deleted.retain(|h| h.strong_count() > 0);
        self.entries.len() + self.deleted.len()
    }

    fn find(&self, reference: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.id == reference || e.name.as_deref() == Some(reference))
    }
}

/// Where the objects live.
#[derive(Debug)]
enum Home {
    /// In the service's runtime.
    Local(Manager),
    /// In a cluster's Redis, connected at the first object made.
    Cluster {
        url: String,
        manager: Mutex<Option<ClusterManager>>,
    },
}

/// Every tenant's objects.
#[derive(Debug)]
pub struct Registry {
    home: Home,
    tenants: Mutex<HashMap<String, TenantObjects>>,
}

/// Whether `name` may name an object: 1 to 64 of `A-Z a-z 0-9 _ -`, and not shaped like an
/// id (32 lowercase hex digits), so a reference is never ambiguous.
pub fn valid_name(name: &str) -> bool {
    let ok_chars = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let id_like = name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok_chars && !id_like
}

/// Whether `v` holds, at any depth, what a task would decode as an object handle:
/// `["wasmpool:KIND", id, token]`.
pub fn holds_handle(v: &Value) -> bool {
    match v {
        Value::Array(items) => {
            let shaped = items.len() == 3
                && items[0]
                    .as_str()
                    .is_some_and(|t| t.starts_with("wasmpool:"))
                && items[1].is_u64()
                && items[2].is_u64();
            shaped || items.iter().any(holds_handle)
        }
        Value::Object(map) => map.values().any(holds_handle),
        _ => false,
    }
}

impl Registry {
    /// The objects made by `manager` (the service's runtime's).
    pub fn new(manager: Manager) -> Registry {
        Registry {
            home: Home::Local(manager),
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// The objects made in the Redis of the cluster at `url` (connected when the first is
    /// made, and again after a failure).
    pub fn on_cluster(url: &str) -> Registry {
        Registry {
            home: Home::Cluster {
                url: url.to_string(),
                manager: Mutex::new(None),
            },
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// Makes the object of `spec` where the objects live. On a cluster this is a round trip
    /// to its Redis (and a connection, the first time).
    fn make(&self, spec: Spec) -> Result<Object, CreateError> {
        match &self.home {
            Home::Local(m) => Ok(spec.create(m)),
            Home::Cluster { url, manager } => {
                let unavailable = |e: wasmpool::Error| CreateError::Unavailable(e.to_string());
                let m = {
                    let mut slot = manager.lock().unwrap_or_else(|p| p.into_inner());
                    match &*slot {
                        Some(m) => m.clone(),
                        None => {
                            let m = ClusterManager::connect(url).map_err(unavailable)?;
                            *slot = Some(m.clone());
                            m
                        }
                    }
                };
                spec.create_on(&m).map_err(unavailable)
            }
        }
    }

    /// The holders of `object`, made now for its table entry.
    fn holders(&self, id: &str, object: Object) -> Arc<Holders> {
        let cluster = match &self.home {
            Home::Local(_) => None,
            Home::Cluster { manager, .. } => {
                manager.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        };
        Arc::new(Holders {
            object,
            deleted: AtomicBool::new(false),
            cluster,
            id: id.to_string(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantObjects>> {
        self.tenants.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes an object of `spec` for `tenant`, within its quota of `max` objects. On a
    /// cluster this is a round trip to its Redis: call it from a blocking thread.
    pub fn create(
        &self,
        tenant: &str,
        id: String,
        name: Option<String>,
        spec: Spec,
        max: u32,
    ) -> Result<Entry, CreateError> {
        let admit = |objects: &mut TenantObjects| {
            if objects.held() >= max as usize {
                return Err(CreateError::Quota(max));
            }
            if let Some(n) = &name
                && objects.find(n).is_some()
            {
                return Err(CreateError::NameTaken(n.clone()));
            }
            Ok(())
        };
        // Checked before the object is made (so a refusal costs nothing), and again when
        // it is kept: the table is not locked while Redis makes it.
        admit(self.lock().entry(tenant.to_string()).or_default())?;
        let object = self.make(spec)?;
        let entry = Entry {
            holders: self.holders(&id, object),
            id,
            name: name.clone(),
            spec,
            created_ms: crate::store::now_ms(),
        };
        let mut all = self.lock();
        let objects = all.entry(tenant.to_string()).or_default();
        if let Err(e) = admit(objects) {
            drop(all);
            // Nobody else holds it: dropped, it is freed.
            entry.holders.deleted.store(true, Ordering::Release);
            return Err(e);
        }
        objects.entries.push(entry.clone());
        Ok(entry)
    }

    /// `tenant`'s objects as the API shows them, in the order they were made. (Views, not
    /// entries: a clone of an entry deleted meanwhile could be the last holder, and free
    /// it, a round trip to Redis, on the caller's thread.)
    pub fn views(&self, tenant: &str) -> Vec<Value> {
        self.lock()
            .get(tenant)
            .map(|t| t.entries.iter().map(Entry::view).collect())
            .unwrap_or_default()
    }

    /// `tenant`'s object of id or name `reference`, held by the answer: drop it where a
    /// round trip to Redis may be made (see [`Holders`]).
    pub fn get(&self, tenant: &str, reference: &str) -> Option<Entry> {
        self.lock().get(tenant)?.find(reference).cloned()
    }

    /// `tenant`'s object `reference` as `GET /v1/objects/{ref}` shows it: its view and
    /// its operations.
    pub fn show(&self, tenant: &str, reference: &str) -> Option<Value> {
        let all = self.lock();
        let entry = all.get(tenant)?.find(reference)?;
        let mut view = entry.view();
        view["ops"] = json!(entry.spec.ops());
        Some(view)
    }

    /// What `tenant`'s object `reference` is.
    pub fn spec(&self, tenant: &str, reference: &str) -> Option<Spec> {
        Some(self.lock().get(tenant)?.find(reference)?.spec)
    }

    /// How many objects `tenant` holds, counting those deleted that tasks still hold.
    pub fn count(&self, tenant: &str) -> usize {
        self.lock().get_mut(tenant).map_or(0, TenantObjects::held)
    }

    /// Takes `tenant`'s object `reference` out of its table; answers whether there was
    /// one. The object lives on while running tasks hold it (counted against the tenant's
    /// quota) and is freed when the last one ends, or now when none does: on a cluster a
    /// round trip to its Redis, so call this from a blocking thread.
    pub fn delete(&self, tenant: &str, reference: &str) -> bool {
        let entry = {
            let mut all = self.lock();
            let Some(objects) = all.get_mut(tenant) else {
                return false;
            };
            let Some(at) = objects
                .entries
                .iter()
                .position(|e| e.id == reference || e.name.as_deref() == Some(reference))
            else {
                return false;
            };
            let entry = objects.entries.remove(at);
            entry.holders.deleted.store(true, Ordering::Release);
            objects.deleted.push(Arc::downgrade(&entry.holders));
            entry
        };
        // Outside the table's lock: if this was the last holder, the object is freed now.
        drop(entry);
        true
    }

    /// Counts one more operation of `tenant` in progress, unless it has `max` already.
    pub fn begin_call(&self, tenant: &str, max: u32) -> bool {
        let mut all = self.lock();
        let objects = all.entry(tenant.to_string()).or_default();
        if objects.calls >= max as usize {
            return false;
        }
        objects.calls += 1;
        true
    }

    /// An operation of `tenant` is over.
    pub fn end_call(&self, tenant: &str) {
        if let Some(t) = self.lock().get_mut(tenant) {
            t.calls = t.calls.saturating_sub(1);
        }
    }

    /// Resolves a task's positional arguments for `tenant`: each top-level string
    /// `"@NAME"` (a name or an id) is that object, `"@NAME.0"` / `"@NAME.1"` an end of that
    /// pipe, `"@@…"` the string `"@…"`; anything else is itself, but for a raw handle.
    pub fn resolve(&self, tenant: &str, args: &[Value]) -> Result<Vec<Resolved>, RefError> {
        let all = self.lock();
        let objects = all.get(tenant);
        let mut out = Vec::with_capacity(args.len());
        for (index, arg) in args.iter().enumerate() {
            let Some(text) = arg.as_str() else {
                if holds_handle(arg) {
                    return Err(RefError::Forged { index });
                }
                out.push(Resolved::Value(arg.clone()));
                continue;
            };
            if text.starts_with("@@") {
                out.push(Resolved::Value(Value::String(text[1..].to_string())));
                continue;
            }
            let Some(reference) = text.strip_prefix('@') else {
                out.push(Resolved::Value(arg.clone()));
                continue;
            };
            let not_found = || RefError::NotFound {
                index,
                reference: reference.to_string(),
            };
            let objects = objects.ok_or_else(not_found)?;
            if let Some(e) = objects.find(reference) {
                out.push(Resolved::Object(e.holders.clone()));
                continue;
            }
            let (pipe, end) = reference.rsplit_once('.').ok_or_else(not_found)?;
            let pipe = objects.find(pipe);
            match (pipe.map(|e| (e.object(), &e.holders)), end) {
                (Some((Object::Pipe(a, _), h)), "0") => out.push(Resolved::End {
                    end: a.clone(),
                    _held: h.clone(),
                }),
                (Some((Object::Pipe(_, b), h)), "1") => out.push(Resolved::End {
                    end: b.clone(),
                    _held: h.clone(),
                }),
                _ => return Err(not_found()),
            }
        }
        Ok(out)
    }

    /// Checks what [`resolve`](Self::resolve) would say of each of `items` (each a task's
    /// positional arguments), without cloning anything: the first item that names no object
    /// of `tenant` or holds a raw handle, by its index.
    pub fn check<'a>(
        &self,
        tenant: &str,
        items: impl IntoIterator<Item = &'a [Value]>,
    ) -> Result<(), (usize, RefError)> {
        let all = self.lock();
        let objects = all.get(tenant);
        for (item, args) in items.into_iter().enumerate() {
            for (index, arg) in args.iter().enumerate() {
                let Some(text) = arg.as_str() else {
                    if holds_handle(arg) {
                        return Err((item, RefError::Forged { index }));
                    }
                    continue;
                };
                let Some(reference) = text.strip_prefix('@').filter(|r| !r.starts_with('@')) else {
                    continue;
                };
                let found = objects.is_some_and(|o| {
                    o.find(reference).is_some()
                        || reference.rsplit_once('.').is_some_and(|(pipe, end)| {
                            matches!(
                                (o.find(pipe).map(Entry::object), end),
                                (Some(Object::Pipe(..)), "0" | "1")
                            )
                        })
                });
                if !found {
                    return Err((
                        item,
                        RefError::NotFound {
                            index,
                            reference: reference.to_string(),
                        },
                    ));
                }
            }
        }
        Ok(())
    }

    /// Resolves one map item: with `star` its array's items are the arguments, else the item
    /// itself is the one argument.
    pub fn resolve_item(
        &self,
        tenant: &str,
        item: &Value,
        star: bool,
    ) -> Result<Vec<Resolved>, RefError> {
        match (star, item) {
            (true, Value::Array(args)) => self.resolve(tenant, args),
            _ => self.resolve(tenant, std::slice::from_ref(item)),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// A field of the operation's body is missing, unknown or of the wrong type.
    #[error("{detail}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong with it.
        detail: String,
    },
    /// The object refused the operation (or timed out).
    #[error(transparent)]
    Object(#[from] ObjectError),
}

fn field(field: &str, detail: impl Into<String>) -> OpError {
    OpError::Field {
        field: field.to_string(),
        detail: detail.into(),
    }
}

/// The body of one operation: its fields, each checked as it is taken.
#[derive(Debug)]
pub struct OpArgs {
    map: Map<String, Value>,
    max_wait: Duration,
}

impl OpArgs {
    /// The body `map`, its `timeout` capped at `max_wait` (and `max_wait` when absent).
    pub fn new(map: Map<String, Value>, max_wait: Duration) -> OpArgs {
        OpArgs { map, max_wait }
    }

    /// Refuses any field but `allowed`.
    fn only(&self, allowed: &[&str]) -> Result<(), OpError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(k) if allowed.is_empty() => Err(field(
                k,
                format!("unknown field `{k}`: this operation takes no fields"),
            )),
            Some(k) => Err(field(
                k,
                format!(
                    "unknown field `{k}`; this operation takes {}",
                    allowed.join(", ")
                ),
            )),
        }
    }

    fn value(&self, name: &str) -> Result<Json, OpError> {
        self.map
            .get(name)
            .cloned()
            .map(Json)
            .ok_or_else(|| field(name, format!("missing field `{name}`")))
    }

    fn int(&self, name: &str) -> Result<Option<i64>, OpError> {
        match self.map.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_i64()
                .map(Some)
                .ok_or_else(|| field(name, format!("`{name}` must be an integer"))),
        }
    }

    fn timeout(&self) -> Result<Duration, OpError> {
        match self.map.get("timeout") {
            None | Some(Value::Null) => Ok(self.max_wait),
            Some(v) => match v.as_f64() {
                Some(t) if t.is_finite() && t >= 0.0 => {
                    Ok(Duration::from_secs_f64(t.min(self.max_wait.as_secs_f64())))
                }
                _ => Err(field(
                    "timeout",
                    "`timeout` must be a number of seconds, at least 0",
                )),
            },
        }
    }

    fn end(&self) -> Result<u8, OpError> {
        match self.map.get("end").and_then(Value::as_u64) {
            Some(0) => Ok(0),
            Some(1) => Ok(1),
            _ => Err(field("end", "`end` must be 0 or 1 (the pipe end to use)")),
        }
    }
}

fn out<T: Serialize>(v: T) -> Result<Value, OpError> {
    serde_json::to_value(v).map_err(|e| OpError::Object(ObjectError::Encode(e.to_string())))
}

fn done(r: Result<(), ObjectError>) -> Result<Value, OpError> {
    r?;
    Ok(Value::Null)
}

/// Does operation `op` on `entry` with `args`, blocking this thread up to the operation's
/// timeout, acting as `owner`; answers the operation's value (`null` for none). `op` must
/// be one of the kind's [`Spec::ops`].
pub fn call(owner: u64, entry: &Entry, op: &str, args: &OpArgs) -> Result<Value, OpError> {
    Manager::acting_as(owner, || call_as_owner(entry, op, args))
}

/// The operations of a lock and of a recursive lock: the same names on two types.
macro_rules! lock_ops {
    ($l:expr, $op:expr, $a:expr, $unknown:expr) => {
        match $op {
            "acquire" => {
                $a.only(&["timeout"])?;
                out($l.acquire_timeout(Some($a.timeout()?))?)
            }
            "release" => {
                $a.only(&[])?;
                done($l.release())
            }
            "locked" => {
                $a.only(&[])?;
                out($l.locked()?)
            }
            _ => Err($unknown()),
        }
    };
}

fn call_as_owner(entry: &Entry, op: &str, a: &OpArgs) -> Result<Value, OpError> {
    let unknown = || {
        field(
            "op",
            format!("a {} has no operation `{op}`", entry.spec.kind()),
        )
    };
    match entry.object() {
        Object::Queue(q) => match op {
            "put" => {
                a.only(&["value", "timeout"])?;
                done(q.put_timeout(&a.value("value")?, Some(a.timeout()?)))
            }
            "get" => {
                a.only(&["timeout"])?;
                Ok(q.get_timeout(Some(a.timeout()?))?.0)
            }
            "qsize" => {
                a.only(&[])?;
                out(q.qsize()?)
            }
            "empty" => {
                a.only(&[])?;
                out(q.empty()?)
            }
            "full" => {
                a.only(&[])?;
                out(q.full()?)
            }
            "maxsize" => {
                a.only(&[])?;
                out(q.maxsize()?)
            }
            "close" => {
                a.only(&[])?;
                done(q.close())
            }
            "task_done" if matches!(entry.spec, Spec::JoinableQueue { .. }) => {
                a.only(&[])?;
                done(q.task_done())
            }
            "join" if matches!(entry.spec, Spec::JoinableQueue { .. }) => {
                a.only(&["timeout"])?;
                done(q.join_timeout(Some(a.timeout()?)))
            }
            _ => Err(unknown()),
        },
        Object::Pipe(e0, e1) => {
            let c = if a.end()? == 0 { e0 } else { e1 };
            match op {
                "send" => {
                    a.only(&["end", "value"])?;
                    done(c.send(&a.value("value")?))
                }
                "recv" => {
                    a.only(&["end", "timeout"])?;
                    Ok(c.recv_timeout(Some(a.timeout()?))?.0)
                }
                "poll" => {
                    a.only(&["end", "timeout"])?;
                    out(c.poll(Some(a.timeout()?))?)
                }
                "close" => {
                    a.only(&["end"])?;
                    done(c.close())
                }
                _ => Err(unknown()),
            }
        }
        Object::Lock(l) => lock_ops!(l, op, a, unknown),
        Object::RLock(l) => lock_ops!(l, op, a, unknown),
        Object::Semaphore(s) => match op {
            "acquire" => {
                a.only(&["timeout"])?;
                out(s.acquire_timeout(Some(a.timeout()?))?)
            }
            "release" => {
                a.only(&[])?;
                done(s.release())
            }
            "value" => {
                a.only(&[])?;
                out(s.value()?)
            }
            _ => Err(unknown()),
        },
        Object::Event(e) => match op {
            "set" => {
                a.only(&[])?;
                done(e.set())
            }
            "clear" => {
                a.only(&[])?;
                done(e.clear())
            }
            "is_set" => {
                a.only(&[])?;
                out(e.is_set()?)
            }
            "wait" => {
                a.only(&["timeout"])?;
                out(e.wait_timeout(Some(a.timeout()?))?)
            }
            _ => Err(unknown()),
        },
        Object::Barrier(b) => match op {
            "wait" => {
                a.only(&["timeout"])?;
                out(b.wait_timeout(Some(a.timeout()?))?)
            }
            "abort" => {
                a.only(&[])?;
                done(b.abort())
            }
            "reset" => {
                a.only(&[])?;
                done(b.reset())
            }
            "n_waiting" => {
                a.only(&[])?;
                out(b.n_waiting()?)
            }
            "parties" => {
                a.only(&[])?;
                out(b.parties()?)
            }
            "broken" => {
                a.only(&[])?;
                out(b.broken()?)
            }
            _ => Err(unknown()),
        },
        Object::Condition(c) => match op {
            "acquire" => {
                a.only(&["timeout"])?;
                out(c.acquire_timeout(Some(a.timeout()?))?)
            }
            "release" => {
                a.only(&[])?;
                done(c.release())
            }
            "wait" => {
                a.only(&["timeout"])?;
                out(c.wait_timeout(Some(a.timeout()?))?)
            }
            "notify" => {
                a.only(&["n"])?;
                let n = a.int("n")?.unwrap_or(1);
                let n = u32::try_from(n).map_err(|_| field("n", "`n` must be 0 to 2^32 - 1"))?;
                done(c.notify(n))
            }
            "notify_all" => {
                a.only(&[])?;
                done(c.notify_all())
            }
            _ => Err(unknown()),
        },
        Object::Dict(d) => match op {
            "get" => {
                a.only(&["key", "default"])?;
                let key = a.value("key")?;
                Ok(match d.get(&key)? {
                    Some(Json(v)) => v,
                    None => a.map.get("default").cloned().unwrap_or(Value::Null),
                })
            }
            "set" => {
                a.only(&["key", "value"])?;
                done(d.set(&a.value("key")?, &a.value("value")?))
            }
            "delete" => {
                a.only(&["key"])?;
                done(d.delete(&a.value("key")?))
            }
            "contains" => {
                a.only(&["key"])?;
                out(d.contains(&a.value("key")?)?)
            }
            "keys" => {
                a.only(&[])?;
                out(d.keys()?)
            }
            "values" => {
                a.only(&[])?;
                out(d.values()?)
            }
            "items" => {
                a.only(&[])?;
                out(d.items()?)
            }
            "len" => {
                a.only(&[])?;
                out(d.len()?)
            }
            "update" => {
                a.only(&["items"])?;
                let items = match a.map.get("items") {
                    Some(Value::Object(m)) => m
                        .iter()
                        .map(|(k, v)| (Json(Value::String(k.clone())), Json(v.clone())))
                        .collect::<Vec<_>>(),
                    Some(Value::Array(pairs)) => pairs
                        .iter()
                        .map(|p| match p.as_array().map(Vec::as_slice) {
                            Some([k, v]) => Ok((Json(k.clone()), Json(v.clone()))),
                            _ => Err(field(
                                "items",
                                "each of `items` must be a [key, value] pair",
                            )),
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                    _ => {
                        return Err(field(
                            "items",
                            "`items` must be an object or an array of [key, value] pairs",
                        ));
                    }
                };
                done(d.update(items.iter().map(|(k, v)| (k, v))))
            }
            "setdefault" => {
                a.only(&["key", "default"])?;
                let default = a.map.get("default").cloned().unwrap_or(Value::Null);
                Ok(d.setdefault(&a.value("key")?, &Json(default))?.0)
            }
            "pop" => {
                a.only(&["key"])?;
                Ok(d.pop(&a.value("key")?)?.map_or(Value::Null, |Json(v)| v))
            }
            "popitem" => {
                a.only(&[])?;
                out(d.popitem()?)
            }
            "increment" => {
                a.only(&["key", "delta"])?;
                let delta = a.int("delta")?.unwrap_or(1);
                out(d.increment(&a.value("key")?, delta)?)
            }
            "compare_and_swap" => {
                a.only(&["key", "expected", "new"])?;
                let expected = match a.map.get("expected") {
                    None | Some(Value::Null) => None,
                    Some(v) => Some(Json(v.clone())),
                };
                out(d.compare_and_swap(&a.value("key")?, expected.as_ref(), &a.value("new")?)?)
            }
            "clear" => {
                a.only(&[])?;
                done(d.clear())
            }
            _ => Err(unknown()),
        },
        Object::List(l) => match op {
            "append" => {
                a.only(&["value"])?;
                done(l.append(&a.value("value")?))
            }
            "extend" => {
                a.only(&["values"])?;
                let Some(Value::Array(values)) = a.map.get("values") else {
                    return Err(field("values", "`values` must be an array"));
                };
                let values: Vec<Json> = values.iter().cloned().map(Json).collect();
                done(l.extend(values.iter()))
            }
            "get" => {
                a.only(&["index"])?;
                let i = a
                    .int("index")?
                    .ok_or_else(|| field("index", "missing field `index`"))?;
                Ok(l.get(i)?.0)
            }
            "set" => {
                a.only(&["index", "value"])?;
                let i = a
                    .int("index")?
                    .ok_or_else(|| field("index", "missing field `index`"))?;
                done(l.set(i, &a.value("value")?))
            }
            "len" => {
                a.only(&[])?;
                out(l.len()?)
            }
            "pop" => {
                a.only(&["index"])?;
                Ok(l.pop(a.int("index")?)?.0)
            }
            "insert" => {
                a.only(&["index", "value"])?;
                let i = a
                    .int("index")?
                    .ok_or_else(|| field("index", "missing field `index`"))?;
                done(l.insert(i, &a.value("value")?))
            }
            "remove" => {
                a.only(&["value"])?;
                done(l.remove(&a.value("value")?))
            }
            "index" => {
                a.only(&["value"])?;
                out(l.index(&a.value("value")?)?)
            }
            "items" => {
                a.only(&[])?;
                out(l.items()?)
            }
            "slice" => {
                a.only(&["start", "stop"])?;
                out(l.slice(a.int("start")?, a.int("stop")?)?)
            }
            "clear" => {
                a.only(&[])?;
                done(l.clear())
            }
            _ => Err(unknown()),
        },
    }
}
