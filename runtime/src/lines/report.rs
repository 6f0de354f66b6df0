//! The end-of-run object report: one JSON line per object with its final contents, bounded.

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::json::Bounded;
use super::{Object, Objects};
use crate::{Connection, ObjectError};

/// The most bytes of JSON one object's report line gives its contents (1 MiB).
pub const REPORT_BYTES: usize = 1 << 20;

/// A dict with more entries than this is reported by their count alone: its keys are not
/// fetched (10,000).
pub const REPORT_DICT_ENTRIES: usize = 10_000;

/// The same object's handle with another value type, through its wire form (a new
/// reference, as a clone is): the report reads values as [`Bounded`].
pub(super) fn retyped<T: Serialize, U: DeserializeOwned>(handle: &T) -> Result<U, ObjectError> {
    let bytes = rmp_serde::to_vec(handle).map_err(|e| ObjectError::Encode(e.to_string()))?;
    rmp_serde::from_slice(&bytes).map_err(|e| ObjectError::Decode(e.to_string()))
}

impl Objects {
    /// Writes one JSON line per object with its final contents, in the order the objects
    /// were made: `{"contents":…,"error":…,"kind":…,"object":…,"omitted":…}` (`error` and
    /// `omitted` only when there is one). Contents are a queue's remaining items in order
    /// (which it takes), a list's items, a dict's `[key, value]` pairs, what waits at each
    /// end of a pipe (`{"0": […], "1": […]}`, taken), an event's `{"set": …}`, a semaphore's
    /// `{"value": …}`, and `null` for the other kinds.
    ///
    /// Streamed and bounded: each item is fetched and converted on its own, a conversion
    /// stops as soon as its JSON would pass [`REPORT_BYTES`], and at most that much JSON goes
    /// into a line. Items left out are counted in `"omitted"` (for a queue or list, the first
    /// that does not fit and all after it); a dict of more than [`REPORT_DICT_ENTRIES`]
    /// entries is reported by that count alone (`"contents": null`).
    ///
    /// ```
    /// use wasmpool::Manager;
    /// use wasmpool::lines::{Json, Object, Objects};
    ///
    /// let mut objects = Objects::new();
    /// if let Object::Queue(q) = objects.create(&Manager::new(), "q", "queue")? {
    ///     q.put(&Json(serde_json::json!({"a": 1})))?;
    /// }
    /// let mut out = Vec::new();
    /// objects.report(&mut out)?;
    /// assert_eq!(
    ///     String::from_utf8(out)?,
    ///     "{\"contents\":[{\"a\":1}],\"kind\":\"queue\",\"object\":\"q\"}\n"
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn report(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for (name, object) in self.iter() {
            let mut r = Report::default();
            match object {
                Object::Queue(q) => match retyped::<_, crate::Queue<Bounded>>(q) {
                    Ok(q) => loop {
                        match q.get_nowait() {
                            Ok(Bounded::Value(v)) if r.item(&v) => {}
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
                    },
                    Err(e) => r.failed(&e),
                },
                Object::Pipe(a, b) => {
                    let (zero, one) = (pipe_end(a), pipe_end(b));
                    r.set_contents(&serde_json::json!({"0": zero.0, "1": one.0}));
                    r.omitted += zero.1 + one.1;
                    for e in [zero.2, one.2].into_iter().flatten() {
                        r.failed(&e);
                    }
                }
                Object::List(l) => match (l.len(), retyped::<_, crate::List<Bounded>>(l)) {
                    (Ok(len), Ok(l)) => {
                        for i in 0..len {
                            match l.get(i as i64) {
                                Ok(Bounded::Value(v)) if r.item(&v) => {}
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
                    (Err(e), _) | (_, Err(e)) => r.error = Some(e.to_string()),
                },
                Object::Dict(d) => match d.len() {
                    Ok(len) if len > REPORT_DICT_ENTRIES => {
                        r.contents = None;
                        r.omitted = len;
                    }
                    // Fetched entry by entry, so one that cannot be read is counted and
                    // the rest are reported.
                    Ok(_) => match retyped::<_, crate::Dict<Bounded, Bounded>>(d)
                        .and_then(|d| Ok((d.keys()?, d)))
                    {
                        Ok((keys, d)) => {
                            let total = keys.len();
                            for (i, k) in keys.into_iter().enumerate() {
                                let Bounded::Value(key) = &k else {
                                    // A key too large to report: the entry cannot fit.
                                    r.omitted += total - i;
                                    break;
                                };
                                match d.get(&k) {
                                    Ok(Some(Bounded::Value(v))) if r.item(&(key, &v)) => {}
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
                },
                Object::Event(e) => {
                    r.set_contents(&serde_json::json!({"set": e.is_set().ok()}));
                }
                Object::Semaphore(s) => {
                    r.set_contents(&serde_json::json!({"value": s.value().ok()}));
                }
                Object::Lock(_) | Object::RLock(_) | Object::Condition(_) | Object::Barrier(_) => {
                    r.contents = None;
                }
            }
            out.write_all(&r.line(name, object.kind()))?;
        }
        out.flush()
    }
}

/// What is waiting at one end of a pipe (taken, in order, as a queue's items are): the
/// values, up to half of [`REPORT_BYTES`] of JSON; how many more were taken and left out;
/// and the error that stopped the reading, if one did. End of file and nothing waiting
/// both end it.
fn pipe_end(end: &Connection<super::Json>) -> (Vec<Value>, usize, Option<ObjectError>) {
    let end = match retyped::<_, Connection<Bounded>>(end) {
        Ok(end) => end,
        Err(e) => return (Vec::new(), 0, Some(e)),
    };
    let mut items = Vec::new();
    let mut bytes = 0;
    let mut omitted = 0;
    loop {
        match end.recv_timeout(Some(Duration::ZERO)) {
            Ok(Bounded::Value(v)) => {
                let len = v.to_string().len() + 1;
                if bytes + len > REPORT_BYTES / 2 {
                    omitted += 1;
                } else {
                    bytes += len;
                    items.push(v);
                }
            }
            Ok(Bounded::TooLarge) => omitted += 1,
            Err(ObjectError::Timeout | ObjectError::Closed(_)) => return (items, omitted, None),
            Err(e) => return (items, omitted, Some(e)),
        }
    }
}

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
