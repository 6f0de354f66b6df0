//! Shared objects created from the command line by name: `--object counts=dict` makes a
//! Manager dict that any argument written `"@counts"` stands for. After the run, each
//! object's final contents are printed to stderr as one JSON line, of at most
//! [`REPORT_BYTES`] of contents: items past that, and every entry of a dict of more than
//! [`REPORT_DICT_ENTRIES`], are counted (`"omitted": N`) instead of printed.
//!
//! Values are taken as any MessagePack value ([`Json`]), so whatever a task stores is
//! reported: a map with keys that are not strings (`{1: "x"}`) gets them as JSON text
//! (`{"1":"x"}`), as Python's `json.dumps` writes them.

use std::io::Write;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Args;
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Serialize, Serializer};
use serde_json::Value;
use wasmpool::{
    Barrier, Condition, Connection, Dict, Event, List, Lock, Manager, ObjectError, Queue, RLock,
    Semaphore,
};

/// Shared objects for the tasks, shared by the commands that run tasks.
#[derive(Args, Debug)]
pub struct ObjectArgs {
    /// Create a shared object that arguments written "@NAME" stand for. KIND is queue,
    /// dict, list, lock, rlock, event, condition, semaphore:N or barrier:N. Its final
    /// contents are printed to stderr when the run ends. Repeatable.
    #[arg(long = "object", value_name = "NAME=KIND")]
    pub objects: Vec<String>,
    /// Send a JSON value into a pipe made by --object NAME=pipe before the tasks start, at
    /// end 0 or 1 (`--send p.0=42`: a task holding end 1 receives 42). Repeatable; sent in
    /// order.
    #[arg(long = "send", value_name = "PIPE.END=JSON")]
    pub sends: Vec<String>,
    /// Close this program's copy of a pipe end after the sends (`--close p.0`), as a parent
    /// closes the end it gave away: a task reading the other end then sees end of file once
    /// it has read what was sent. Repeatable.
    #[arg(long = "close", value_name = "PIPE.END")]
    pub closes: Vec<String>,
}

/// One object made from the command line. Values are JSON on this side.
pub enum Shared {
    Queue(Queue<Json>),
    Dict(Dict<Json, Json>),
    List(List<Json>),
    Pipe(Connection<Json>, Connection<Json>),
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
            // `"@NAME"`: both ends, as Python's `Pipe()` returns them.
            Shared::Pipe(a, b) => (a, b).serialize(s),
        }
    }
}

/// Any value a task may store, as JSON: MessagePack maps whose keys are not strings get
/// them as JSON text (`{1: "x"}` is `{"1":"x"}`, as Python's `json.dumps` writes it), and
/// binary data is an array of its bytes. It serializes as the JSON value it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct Json(pub Value);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JsonVisitor).map(Json)
    }
}

/// Builds a [`Json`]'s value from whatever the decoder finds.
struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any MessagePack value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // NaN and the infinities have no JSON form: null, as serde_json writes them.
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(Value::Array(v.iter().map(|&b| Value::from(b)).collect()))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Json::deserialize(d).map(|j| j.0)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Json::deserialize(d).map(|j| j.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(Json(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some((Json(key), Json(value))) = map.next_entry()? {
            out.insert(key_text(key), value);
        }
        Ok(Value::Object(out))
    }
}

/// A map key as JSON has it: a string as itself, anything else as its JSON text.
fn key_text(key: Value) -> String {
    match key {
        Value::String(s) => s,
        other => other.to_string(),
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
    End(&'a Connection<Json>),
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
            if name.contains('.') {
                bail!("--object `{spec}`: the name must not contain `.` (`@NAME.0` is a pipe end)");
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
                ("pipe", None) => {
                    let (a, b) = manager.pipe(true);
                    Shared::Pipe(a, b)
                }
                ("semaphore", Some(n)) => Shared::Semaphore(manager.semaphore(u64::from(n))),
                ("barrier", Some(n)) if n > 0 => Shared::Barrier(manager.barrier(n)),
                _ => bail!(
                    "--object `{spec}`: the kind is one of queue, dict, list, pipe, lock, \
                     rlock, event, condition, semaphore:N, barrier:N (N > 0)"
                ),
            };
            named.push((name.to_string(), object));
        }
        let objects = Objects { named };
        for spec in &self.sends {
            objects.send(spec)?;
        }
        for spec in &self.closes {
            match objects.find(spec) {
                Some(Arg::End(end)) => end
                    .close()
                    .map_err(|e| anyhow::anyhow!("--close `{spec}`: {e}"))?,
                _ => bail!(
                    "--close `{spec}`: not an end of a pipe made by --object NAME=pipe (write \
                     NAME.0 or NAME.1)"
                ),
            }
        }
        Ok(objects)
    }
}

impl Objects {
    /// The arguments with each top-level `"@NAME"` of a declared object replaced by it, and
    /// `"@NAME.0"` / `"@NAME.1"` by one end of a pipe.
    pub fn substitute(&self, args: Vec<Value>) -> Vec<Arg<'_>> {
        args.into_iter()
            .map(|arg| {
                let found = arg
                    .as_str()
                    .and_then(|s| s.strip_prefix('@'))
                    .and_then(|name| self.find(name));
                match found {
                    Some(object) => object,
                    None => Arg::Value(arg),
                }
            })
            .collect()
    }

    /// The object `name` stands for: a declared object, or `PIPE.0` / `PIPE.1`.
    fn find(&self, name: &str) -> Option<Arg<'_>> {
        let named = |name: &str| {
            self.named
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, object)| object)
        };
        if let Some(object) = named(name) {
            return Some(Arg::Object(object));
        }
        let (pipe, end) = name.rsplit_once('.')?;
        match (named(pipe)?, end) {
            (Shared::Pipe(a, _), "0") => Some(Arg::End(a)),
            (Shared::Pipe(_, b), "1") => Some(Arg::End(b)),
            _ => None,
        }
    }

    /// Sends the value of a `--send PIPE.END=JSON` at that end.
    fn send(&self, spec: &str) -> Result<()> {
        let Some((target, json)) = spec.split_once('=') else {
            bail!("--send looks like PIPE.END=JSON (e.g. p.0=42), not `{spec}`");
        };
        let end = match self.find(target) {
            Some(Arg::End(end)) => end,
            _ => bail!(
                "--send `{spec}`: `{target}` is not an end of a pipe made by --object \
                 NAME=pipe (write NAME.0 or NAME.1)"
            ),
        };
        let value: Value = serde_json::from_str(json)
            .map_err(|e| anyhow::anyhow!("--send `{spec}`: the value is not JSON: {e}"))?;
        end.send(&Json(value))
            .map_err(|e| anyhow::anyhow!("--send `{spec}`: {e}"))
    }

    pub fn is_empty(&self) -> bool {
        self.named.is_empty()
    }

    /// Writes one JSON line per object with its final contents (dicts as `[key, value]`
    /// pairs, a queue's remaining items in order, which it takes), streamed: each item is
    /// fetched and written on its own, and at most [`REPORT_BYTES`] of them to a line. Items
    /// left out are counted in `"omitted"`; a dict of more than [`REPORT_DICT_ENTRIES`]
    /// entries is reported by that count alone (`"contents": null`).
    pub fn report(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for (name, object) in &self.named {
            let mut r = Report::default();
            let kind = match object {
                Shared::Queue(q) => {
                    loop {
                        match q.get_nowait() {
                            Ok(v) if r.item(&v) => {}
                            Ok(_) => {
                                r.omitted += 1 + q.qsize().unwrap_or(0);
                                break;
                            }
                            // Drained; closed by a task and drained.
                            Err(ObjectError::Empty | ObjectError::Closed(_)) => break,
                            Err(e) => {
                                r.failed(&e);
                                r.omitted += q.qsize().unwrap_or(0);
                                break;
                            }
                        }
                    }
                    "queue"
                }
                Shared::Pipe(a, b) => {
                    let (zero, one) = (pipe_end(a), pipe_end(b));
                    r.set_contents(&serde_json::json!({"0": zero.0, "1": one.0}));
                    r.omitted += zero.1 + one.1;
                    for e in [zero.2, one.2].into_iter().flatten() {
                        r.failed(&e);
                    }
                    "pipe"
                }
                Shared::List(l) => {
                    match l.len() {
                        Ok(len) => {
                            for i in 0..len {
                                match l.get(i as i64) {
                                    Ok(v) if r.item(&v) => {}
                                    Ok(_) => {
                                        r.omitted += len - i;
                                        break;
                                    }
                                    // Shorter than it was: a task still runs.
                                    Err(ObjectError::Missing(_)) => break,
                                    Err(e) => {
                                        r.failed(&e);
                                        r.omitted += len - i;
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => r.error = Some(e.to_string()),
                    }
                    "list"
                }
                Shared::Dict(d) => {
                    match d.len() {
                        Ok(len) if len > REPORT_DICT_ENTRIES => {
                            r.contents = None;
                            r.omitted = len;
                        }
                        // Fetched entry by entry, so one that cannot be read is counted
                        // and the rest are reported.
                        Ok(_) => match d.keys() {
                            Ok(keys) => {
                                let total = keys.len();
                                for (i, k) in keys.into_iter().enumerate() {
                                    match d.get(&k) {
                                        Ok(Some(v)) if r.item(&(&k, &v)) => {}
                                        Ok(Some(_)) => {
                                            r.omitted += total - i;
                                            break;
                                        }
                                        // Deleted since: a task still runs.
                                        Ok(None) => {}
                                        Err(e) => {
                                            r.failed(&e);
                                            r.omitted += 1;
                                        }
                                    }
                                }
                            }
                            Err(e) => r.failed(&e),
                        },
                        Err(e) => r.error = Some(e.to_string()),
                    }
                    "dict"
                }
                Shared::Event(e) => {
                    r.set_contents(&serde_json::json!({"set": e.is_set().ok()}));
                    "event"
                }
                Shared::Semaphore(s) => {
                    r.set_contents(&serde_json::json!({"value": s.value().ok()}));
                    "semaphore"
                }
                Shared::Lock(_) => r.null("lock"),
                Shared::RLock(_) => r.null("rlock"),
                Shared::Condition(_) => r.null("condition"),
                Shared::Barrier(_) => r.null("barrier"),
            };
            out.write_all(&r.line(name, kind))?;
        }
        out.flush()
    }
}

/// What is waiting at one end of a pipe (taken, in order, as a queue's items are): the
/// values, up to half of [`REPORT_BYTES`] of JSON; how many more were taken and left out;
/// and the error that stopped the reading, if one did. End of file and nothing waiting
/// both end it.
fn pipe_end(end: &Connection<Json>) -> (Vec<Value>, usize, Option<ObjectError>) {
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut omitted = 0;
    loop {
        match end.recv_timeout(Some(Duration::ZERO)) {
            Ok(Json(v)) => {
                let len = v.to_string().len() + 1;
                if bytes + len > REPORT_BYTES / 2 {
                    omitted += 1;
                } else {
                    bytes += len;
                    items.push(v);
                }
            }
            Err(ObjectError::Timeout | ObjectError::Closed(_)) => return (items, omitted, None),
            Err(e) => return (items, omitted, Some(e)),
        }
    }
}

/// The most bytes of JSON one object's report line gives its contents (1 MiB).
pub const REPORT_BYTES: usize = 1 << 20;

/// A dict with more entries than this is reported by their count alone: its keys are not
/// fetched (10,000).
pub const REPORT_DICT_ENTRIES: usize = 10_000;

/// One object's report line as it is built.
struct Report {
    /// The JSON of the contents so far: an array's items without its brackets, or (with
    /// `array` false) a whole value; `None` for `null`.
    contents: Option<Vec<u8>>,
    array: bool,
    items: usize,
    omitted: usize,
    error: Option<String>,
}

impl Default for Report {
    fn default() -> Self {
        Report {
            contents: Some(Vec::new()),
            array: true,
            items: 0,
            omitted: 0,
            error: None,
        }
    }
}

impl Report {
    /// Adds an item to the contents; `false` (and nothing added) if it does not fit.
    fn item<T: Serialize>(&mut self, item: &T) -> bool {
        let Some(contents) = &mut self.contents else {
            return false;
        };
        let Ok(text) = serde_json::to_vec(item) else {
            self.omitted += 1;
            return true;
        };
        if contents.len() + text.len() + 1 > REPORT_BYTES {
            return false;
        }
        if self.items > 0 {
            contents.push(b',');
        }
        contents.extend_from_slice(&text);
        self.items += 1;
        true
    }

    /// Records why the contents stop here (the first reason, if several).
    fn failed(&mut self, e: &ObjectError) {
        self.error.get_or_insert_with(|| e.to_string());
    }

    fn set_contents(&mut self, value: &Value) {
        self.contents = serde_json::to_vec(value).ok();
        self.array = false;
    }

    fn null(&mut self, kind: &'static str) -> &'static str {
        self.contents = None;
        kind
    }

    /// `{"contents":…,"error":…,"kind":…,"object":…,"omitted":…}`, keys in order, newline.
    fn line(self, name: &str, kind: &str) -> Vec<u8> {
        let json = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
        let mut line = b"{\"contents\":".to_vec();
        match self.contents {
            Some(c) if self.array => {
                line.push(b'[');
                line.extend_from_slice(&c);
                line.push(b']');
            }
            Some(c) => line.extend_from_slice(&c),
            None => line.extend_from_slice(b"null"),
        }
        if let Some(e) = self.error {
            line.extend_from_slice(format!(",\"error\":{}", json(&e)).as_bytes());
        }
        line.extend_from_slice(
            format!(",\"kind\":{},\"object\":{}", json(kind), json(name)).as_bytes(),
        );
        if self.omitted > 0 {
            line.extend_from_slice(format!(",\"omitted\":{}", self.omitted).as_bytes());
        }
        line.extend_from_slice(b"}\n");
        line
    }
}
