//! Shared objects created from the command line by name: `--object counts=dict` makes a
//! Manager dict that any argument written `"@counts"` stands for. After the run, each
//! object's final contents are printed to stderr as one JSON line, of at most
//! [`REPORT_BYTES`] of contents: items past that, and every entry of a dict of more than
//! [`REPORT_DICT_ENTRIES`], are counted (`"omitted": N`) instead of printed.

use std::io::Write;

use anyhow::{Result, bail};
use clap::Args;
use serde::{Serialize, Serializer};
use serde_json::Value;
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
                    while let Ok(v) = q.get_nowait() {
                        if !r.item(&v) {
                            r.omitted += 1 + q.qsize().unwrap_or(0);
                            break;
                        }
                    }
                    "queue"
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
                                    Err(_) => break,
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
                        Ok(_) => match d.keys() {
                            Ok(keys) => {
                                let total = keys.len();
                                for (i, k) in keys.into_iter().enumerate() {
                                    let Ok(Some(v)) = d.get(&k) else { continue };
                                    if !r.item(&(k, v)) {
                                        r.omitted += total - i;
                                        break;
                                    }
                                }
                            }
                            Err(e) => r.error = Some(e.to_string()),
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
