//! Shared objects created from the command line by name: `--object counts=dict` makes a
//! Manager dict that any argument written `"@counts"` stands for. After the run, each
//! object's final contents are printed to stderr as one JSON line.

use anyhow::{Result, bail};
use clap::Args;
use serde::{Serialize, Serializer};
use serde_json::{Value, json};
use wasmpool::{Barrier, Condition, Dict, Event, List, Lock, Manager, Queue, RLock, Semaphore};

/// Shared objects for the tasks, shared by the commands that run tasks.
#[derive(Args, Debug)]
pub struct ObjectArgs {
    /// Create a shared object that arguments written "@NAME" stand for. KIND is queue,
    /// dict, list, lock, rlock, event, condition, semaphore:N or barrier:N. Its final
    /// contents are printed to stderr when the run ends. Repeatable.
    #[arg(long = "object", value_name = "NAME=KIND")]
    pub objects: Vec<String>,
}

/// One object made from the command line. Values are JSON on this side.
pub enum Shared {
    Queue(Queue<Value>),
    Dict(Dict<Value, Value>),
    List(List<Value>),
    Lock(Lock),
    RLock(RLock),
    Event(Event),
    Condition(Condition),
    Semaphore(Semaphore),
    Barrier(Barrier),
}

impl Serialize for Shared {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shared::Queue(h) => h.serialize(s),
            Shared::Dict(h) => h.serialize(s),
            Shared::List(h) => h.serialize(s),
            Shared::Lock(h) => h.serialize(s),
            Shared::RLock(h) => h.serialize(s),
            Shared::Event(h) => h.serialize(s),
            Shared::Condition(h) => h.serialize(s),
            Shared::Semaphore(h) => h.serialize(s),
            Shared::Barrier(h) => h.serialize(s),
        }
    }
}

/// The named objects of one run.
pub struct Objects {
    named: Vec<(String, Shared)>,
}

/// A positional argument: a JSON value, or a named object's handle.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Arg<'a> {
    Value(Value),
    Object(&'a Shared),
}

impl ObjectArgs {
    /// Creates the objects these flags ask for.
    pub fn create(&self) -> Result<Objects> {
        let manager = Manager::new();
        let mut named: Vec<(String, Shared)> = Vec::new();
        for spec in &self.objects {
            let Some((name, kind)) = spec.split_once('=') else {
                bail!("--object looks like NAME=KIND (e.g. counts=dict), not `{spec}`");
            };
            if name.is_empty() || named.iter().any(|(n, _)| n == name) {
                bail!("--object `{spec}`: the name must be non-empty and used once");
            }
            let (kind, n) = match kind.split_once(':') {
                Some((k, n)) => {
                    let n: u32 = n
                        .parse()
                        .map_err(|_| anyhow::anyhow!("--object `{spec}`: `{n}` is not a count"))?;
                    (k, Some(n))
                }
                None => (kind, None),
            };
            let object = match (kind, n) {
                ("queue", None) => Shared::Queue(manager.queue()),
                ("dict", None) => Shared::Dict(manager.dict()),
                ("list", None) => Shared::List(manager.list()),
                ("lock", None) => Shared::Lock(manager.lock()),
                ("rlock", None) => Shared::RLock(manager.rlock()),
                ("event", None) => Shared::Event(manager.event()),
                ("condition", None) => Shared::Condition(manager.condition()),
                ("semaphore", Some(n)) => Shared::Semaphore(manager.semaphore(u64::from(n))),
                ("barrier", Some(n)) if n > 0 => Shared::Barrier(manager.barrier(n)),
                _ => bail!(
                    "--object `{spec}`: the kind is one of queue, dict, list, lock, rlock, \
                     event, condition, semaphore:N, barrier:N (N > 0)"
                ),
            };
            named.push((name.to_string(), object));
        }
        Ok(Objects { named })
    }
}

impl Objects {
    /// The arguments with each top-level `"@NAME"` of a declared object replaced by it.
    pub fn substitute(&self, args: Vec<Value>) -> Vec<Arg<'_>> {
        args.into_iter()
            .map(|arg| {
                let found = arg
                    .as_str()
                    .and_then(|s| s.strip_prefix('@'))
                    .and_then(|name| {
                        self.named
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, object)| object)
                    });
                match found {
                    Some(object) => Arg::Object(object),
                    None => Arg::Value(arg),
                }
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// One JSON line per object with its final contents (dicts as `[key, value]` pairs, a
    /// queue's remaining items in order).
    pub fn report(&self) -> Vec<Value> {
        self.named
            .iter()
            .map(|(name, object)| {
                let (kind, contents) = match object {
                    Shared::Queue(q) => {
                        let mut items = Vec::new();
                        while let Ok(v) = q.get_nowait() {
                            items.push(v);
                        }
                        ("queue", json!(items))
                    }
                    Shared::Dict(d) => ("dict", json!(d.items().unwrap_or_default())),
                    Shared::List(l) => ("list", json!(l.items().unwrap_or_default())),
                    Shared::Event(e) => ("event", json!({"set": e.is_set().ok()})),
                    Shared::Semaphore(s) => ("semaphore", json!({"value": s.value().ok()})),
                    Shared::Lock(_) => ("lock", Value::Null),
                    Shared::RLock(_) => ("rlock", Value::Null),
                    Shared::Condition(_) => ("condition", Value::Null),
                    Shared::Barrier(_) => ("barrier", Value::Null),
                };
                json!({"object": name, "kind": kind, "contents": contents})
            })
            .collect()
    }
}
