//! Named shared objects: the table that `"@NAME"` arguments are resolved against.

use std::str::FromStr;

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::{Json, LinesError};
use crate::{
    Barrier, Condition, Connection, Dict, Event, List, Lock, Manager, Queue, RLock, Semaphore,
};

/// One named object. Values are [`Json`] on this side; a task sees the object itself.
///
/// It serializes as the object's handle (a pipe as the pair of its ends, as Python's
/// `Pipe()` returns them), so it can be one of a task's arguments.
#[derive(Debug, Clone)]
pub enum Object {
    /// An unbounded queue.
    Queue(Queue<Json>),
    /// A dict.
    Dict(Dict<Json, Json>),
    /// A list.
    List(List<Json>),
    /// A duplex pipe: its end 0 and end 1.
    Pipe(Connection<Json>, Connection<Json>),
    /// A lock.
    Lock(Lock),
    /// A reentrant lock.
    RLock(RLock),
    /// An event.
    Event(Event),
    /// A condition variable.
    Condition(Condition),
    /// A semaphore.
    Semaphore(Semaphore),
    /// A barrier.
    Barrier(Barrier),
}

impl Object {
    /// The kind's name, as [`ObjectKind`] parses it (without a count): `"queue"`, `"pipe"` …
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Queue(_) => "queue",
            Object::Dict(_) => "dict",
            Object::List(_) => "list",
            Object::Pipe(..) => "pipe",
            Object::Lock(_) => "lock",
            Object::RLock(_) => "rlock",
            Object::Event(_) => "event",
            Object::Condition(_) => "condition",
            Object::Semaphore(_) => "semaphore",
            Object::Barrier(_) => "barrier",
        }
    }

    /// The handle (id and token) of the object; a pipe's is its end 0's.
    pub fn handle(&self) -> wasmpool_objects::wire::Handle {
        match self {
            Object::Queue(h) => h.handle(),
            Object::Dict(h) => h.handle(),
            Object::List(h) => h.handle(),
            Object::Pipe(h, _) => h.handle(),
            Object::Lock(h) => h.handle(),
            Object::RLock(h) => h.handle(),
            Object::Event(h) => h.handle(),
            Object::Condition(h) => h.handle(),
            Object::Semaphore(h) => h.handle(),
            Object::Barrier(h) => h.handle(),
        }
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Object::Queue(h) => h.serialize(s),
            Object::Dict(h) => h.serialize(s),
            Object::List(h) => h.serialize(s),
            Object::Lock(h) => h.serialize(s),
            Object::RLock(h) => h.serialize(s),
            Object::Event(h) => h.serialize(s),
            Object::Condition(h) => h.serialize(s),
            Object::Semaphore(h) => h.serialize(s),
            Object::Barrier(h) => h.serialize(s),
            // `"@NAME"`: both ends, as Python's `Pipe()` returns them.
            Object::Pipe(a, b) => (a, b).serialize(s),
        }
    }
}

/// The kind of an object to make, written as the CLI's `--object NAME=KIND` takes it:
/// `queue`, `dict`, `list`, `pipe`, `lock`, `rlock`, `event`, `condition`, `semaphore:N`
/// (its initial value) or `barrier:N` (its parties, N > 0).
///
/// ```
/// use wasmpool::lines::ObjectKind;
///
/// assert_eq!("semaphore:3".parse::<ObjectKind>().unwrap(), ObjectKind::Semaphore(3));
/// assert!("barrier:0".parse::<ObjectKind>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `queue`: an unbounded queue.
    Queue,
    /// `dict`.
    Dict,
    /// `list`.
    List,
    /// `pipe`: a duplex pipe.
    Pipe,
    /// `lock`.
    Lock,
    /// `rlock`.
    RLock,
    /// `event`.
    Event,
    /// `condition`.
    Condition,
    /// `semaphore:N`, of initial value N.
    Semaphore(u32),
    /// `barrier:N`, for N parties (N > 0).
    Barrier(u32),
}

impl FromStr for ObjectKind {
    type Err = LinesError;

    fn from_str(kind: &str) -> Result<Self, LinesError> {
        let (kind, n) = match kind.split_once(':') {
            Some((k, n)) => {
                let n: u32 = n.parse().map_err(|_| LinesError::BadCount {
                    count: n.to_string(),
                })?;
                (k, Some(n))
            }
            None => (kind, None),
        };
        Ok(match (kind, n) {
            ("queue", None) => ObjectKind::Queue,
            ("dict", None) => ObjectKind::Dict,
            ("list", None) => ObjectKind::List,
            ("pipe", None) => ObjectKind::Pipe,
            ("lock", None) => ObjectKind::Lock,
            ("rlock", None) => ObjectKind::RLock,
            ("event", None) => ObjectKind::Event,
            ("condition", None) => ObjectKind::Condition,
            ("semaphore", Some(n)) => ObjectKind::Semaphore(n),
            ("barrier", Some(n)) if n > 0 => ObjectKind::Barrier(n),
            _ => {
                return Err(LinesError::UnknownKind {
                    kind: kind.to_string(),
                });
            }
        })
    }
}

impl ObjectKind {
    /// Makes an object of this kind.
    pub fn create(self, manager: &Manager) -> Object {
        match self {
            ObjectKind::Queue => Object::Queue(manager.queue()),
            ObjectKind::Dict => Object::Dict(manager.dict()),
            ObjectKind::List => Object::List(manager.list()),
            ObjectKind::Pipe => {
                let (a, b) = manager.pipe(true);
                Object::Pipe(a, b)
            }
            ObjectKind::Lock => Object::Lock(manager.lock()),
            ObjectKind::RLock => Object::RLock(manager.rlock()),
            ObjectKind::Event => Object::Event(manager.event()),
            ObjectKind::Condition => Object::Condition(manager.condition()),
            ObjectKind::Semaphore(n) => Object::Semaphore(manager.semaphore(u64::from(n))),
            ObjectKind::Barrier(n) => Object::Barrier(manager.barrier(n)),
        }
    }

    /// Makes an object of this kind in a cluster's Redis (tasks on every host share it).
    pub fn create_in_cluster(
        self,
        manager: &crate::cluster::ClusterManager,
    ) -> crate::Result<Object> {
        Ok(match self {
            ObjectKind::Queue => Object::Queue(manager.queue()?),
            ObjectKind::Dict => Object::Dict(manager.dict()?),
            ObjectKind::List => Object::List(manager.list()?),
            ObjectKind::Pipe => {
                let (a, b) = manager.pipe(true)?;
                Object::Pipe(a, b)
            }
            ObjectKind::Lock => Object::Lock(manager.lock()?),
            ObjectKind::RLock => Object::RLock(manager.rlock()?),
            ObjectKind::Event => Object::Event(manager.event()?),
            ObjectKind::Condition => Object::Condition(manager.condition()?),
            ObjectKind::Semaphore(n) => Object::Semaphore(manager.semaphore(u64::from(n))?),
            ObjectKind::Barrier(n) => Object::Barrier(manager.barrier(n)?),
        })
    }
}

/// A positional argument after [`Objects::substitute`]: a JSON value, or a named object's
/// handle. It serializes as what it holds.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Arg<'a> {
    /// A JSON value, as given.
    Value(&'a Value),
    /// A named object (`"@NAME"`).
    Object(&'a Object),
    /// One end of a named pipe (`"@NAME.0"`, `"@NAME.1"`).
    End(&'a Connection<Json>),
}

/// The named objects of one run (or one tenant): what an argument written `"@NAME"` stands
/// for, and `"@NAME.0"` / `"@NAME.1"` for the ends of a pipe. Kept in the order they were
/// made, which is the order of their [report](Objects::report).
///
/// ```
/// use wasmpool::Manager;
/// use wasmpool::lines::{Arg, Objects};
///
/// let mut objects = Objects::new();
/// objects.create(&Manager::new(), "q", "queue")?;
/// objects.create(&Manager::new(), "p", "pipe")?;
/// let args = [serde_json::json!("@q"), serde_json::json!("@p.1"), serde_json::json!("@r")];
/// let args = objects.substitute(&args);
/// assert!(matches!(args[0], Arg::Object(_)));
/// assert!(matches!(args[1], Arg::End(_)));
/// // Not a name in the table: the string itself.
/// assert!(matches!(args[2], Arg::Value(v) if v == "@r"));
/// # Ok::<(), wasmpool::lines::LinesError>(())
/// ```
#[derive(Debug, Default)]
pub struct Objects {
    named: Vec<(String, Object)>,
}

impl Objects {
    /// An empty table.
    pub fn new() -> Self {
        Objects::default()
    }

    /// Makes an object of `kind` (as [`ObjectKind`] parses it) named `name`. The name is
    /// checked first: it must be non-empty, new to the table, and without a `.`.
    pub fn create(
        &mut self,
        manager: &Manager,
        name: &str,
        kind: &str,
    ) -> Result<&Object, LinesError> {
        self.check_name(name)?;
        let kind: ObjectKind = kind.parse()?;
        self.insert(name, kind.create(manager))
    }

    /// Adds `object` named `name` (non-empty, new to the table, without a `.`).
    pub fn insert(&mut self, name: &str, object: Object) -> Result<&Object, LinesError> {
        self.check_name(name)?;
        self.named.push((name.to_string(), object));
        let (_, object) = &self.named[self.named.len() - 1];
        Ok(object)
    }

    fn check_name(&self, name: &str) -> Result<(), LinesError> {
        if name.is_empty() || self.get(name).is_some() {
            return Err(LinesError::NameTaken {
                name: name.to_string(),
            });
        }
        if name.contains('.') {
            return Err(LinesError::NameWithDot {
                name: name.to_string(),
            });
        }
        Ok(())
    }

    /// The object named `name`.
    pub fn get(&self, name: &str) -> Option<&Object> {
        self.named.iter().find(|(n, _)| n == name).map(|(_, o)| o)
    }

    /// The objects with their names, in the order they were made.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Object)> {
        self.named.iter().map(|(n, o)| (n.as_str(), o))
    }

    /// How many objects the table holds.
    pub fn len(&self) -> usize {
        self.named.len()
    }

    /// Whether the table holds no objects.
    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// What `reference` (a name without its `@`) stands for: an object of the table, or
    /// `PIPE.0` / `PIPE.1`, an end of a pipe of the table.
    pub fn resolve(&self, reference: &str) -> Option<Arg<'_>> {
        if let Some(object) = self.get(reference) {
            return Some(Arg::Object(object));
        }
        let (pipe, end) = reference.rsplit_once('.')?;
        match (self.get(pipe)?, end) {
            (Object::Pipe(a, _), "0") => Some(Arg::End(a)),
            (Object::Pipe(_, b), "1") => Some(Arg::End(b)),
            _ => None,
        }
    }

    /// The pipe end `reference` (`PIPE.0` or `PIPE.1`) stands for.
    pub fn end(&self, reference: &str) -> Option<&Connection<Json>> {
        match self.resolve(reference) {
            Some(Arg::End(end)) => Some(end),
            _ => None,
        }
    }

    /// The arguments with each top-level string `"@NAME"` that [resolves](Self::resolve)
    /// replaced by its object; everything else (nested values, unknown names) as given.
    pub fn substitute<'a>(&'a self, args: &'a [Value]) -> Vec<Arg<'a>> {
        args.iter()
            .map(|arg| {
                arg.as_str()
                    .and_then(|s| s.strip_prefix('@'))
                    .and_then(|name| self.resolve(name))
                    .unwrap_or(Arg::Value(arg))
            })
            .collect()
    }
}
