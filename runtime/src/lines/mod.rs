//! The JSON-lines contract of `wasmpool map`, for any front end that maps a task over JSON
//! inputs (the CLI, a service taking an NDJSON body).
//!
//! - **Inputs**: one JSON value a line ([`Lines`], [`parse_line`]); lines of nothing but
//!   whitespace are skipped. Each value is the task's one argument, or, as Python's
//!   `starmap` takes them, an array of its positional arguments ([`encode_input`]).
//! - **Objects**: a top-level argument written `"@NAME"` stands for the object `NAME` of an
//!   [`Objects`] table (made by a [`Manager`](crate::Manager)), and `"@NAME.0"` /
//!   `"@NAME.1"` for an end of a pipe of it; any other string is itself.
//! - **Records**: one line a finished item ([`RecordWriter`]), in whatever order the caller
//!   takes the results (input order, or as they complete): `{"input":…,"result":…}`, or
//!   `{"error":"…","input":…}` for an item that failed (a result that does not convert to
//!   JSON fails its item). Results are streamed into the line, never built as a tree.
//! - **Report**: when the run ends, one line per object with its final contents, bounded
//!   ([`Objects::report`]).
//!
//! [`Items`] joins the first three to a pool: it turns inputs into the encoded arguments
//! [`Pool::imap_encoded`](crate::Pool::imap_encoded) takes, and keeps each input until its
//! result is written next to it.
//!
//! ```
//! use wasmpool::Manager;
//! use wasmpool::lines::{Lines, Objects, RecordWriter, encode_input};
//!
//! let mut objects = Objects::new();
//! objects.create(&Manager::new(), "q", "queue")?;
//!
//! // Inputs for starmap: each line the arguments, the queue's among them.
//! let text = "[\"@q\", 3]\n\n  \n[\"@q\", 4]\n";
//! let inputs: Vec<_> = Lines::new(text.as_bytes()).collect::<Result<_, _>>()?;
//! assert_eq!(inputs, [serde_json::json!(["@q", 3]), serde_json::json!(["@q", 4])]);
//! let args = encode_input(&objects, &inputs[0], true)?;
//! // A MessagePack array of two: the queue's handle (itself an array of three), then 3.
//! assert_eq!(args[..2], [0x92, 0x93]);
//! assert_eq!(args.last(), Some(&3));
//!
//! // What a pool answered for them: 9 (MessagePack 0x09), and a failure.
//! let mut records = RecordWriter::new("square", Vec::new());
//! records.write(&inputs[0], Ok(vec![0x09]))?;
//! records.write(&inputs[1], Err(wasmpool::Error::BadArgs("no".into())))?;
//! assert_eq!((records.done(), records.failed()), (2, 1));
//! assert_eq!(
//!     String::from_utf8(records.into_inner())?,
//!     "{\"input\":[\"@q\",3],\"result\":9}\n\
//!      {\"error\":\"bad arguments: no\",\"input\":[\"@q\",4]}\n"
//! );
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod json;
mod objects;
mod report;

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

pub use json::Json;
pub use objects::{Arg, Object, ObjectKind, Objects};
pub use report::{REPORT_BYTES, REPORT_DICT_ENTRIES};

/// What can go wrong reading inputs, making named objects or writing records.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinesError {
    /// An input line is not one JSON value.
    #[error("input line {line} is not valid JSON")]
    BadLine {
        /// The line's number, from 1, counting blank lines.
        line: u64,
        /// What the JSON parser said.
        #[source]
        source: serde_json::Error,
    },
    /// The inputs could not be read (including a line that is not UTF-8).
    #[error("cannot read the input")]
    Read(#[source] std::io::Error),
    /// A record could not be written.
    #[error(transparent)]
    Write(#[from] std::io::Error),
    /// A result could not be written into its record ([`Error::Io`](crate::Error::Io),
    /// naming the task).
    #[error(transparent)]
    Result(crate::Error),
    /// An object's name is empty or already in the table.
    #[error("the name must be non-empty and used once")]
    NameTaken {
        /// The name.
        name: String,
    },
    /// An object's name has a `.`, which would make `@NAME.0` ambiguous.
    #[error("the name must not contain `.` (`@NAME.0` is a pipe end)")]
    NameWithDot {
        /// The name.
        name: String,
    },
    /// The count after an object kind's `:` is not a number from 0 to 2^32 - 1.
    #[error("`{count}` is not a count")]
    BadCount {
        /// The text after the `:`.
        count: String,
    },
    /// Not a kind of object [`ObjectKind`] knows, or without the count it needs.
    #[error(
        "the kind is one of queue, dict, list, pipe, lock, rlock, event, condition, \
         semaphore:N, barrier:N (N > 0)"
    )]
    UnknownKind {
        /// The kind, without its count.
        kind: String,
    },
}

/// Whether `line` holds no input: nothing but (Unicode) whitespace.
pub fn is_blank(line: &str) -> bool {
    line.trim().is_empty()
}

/// The input on line `number` (from 1): `None` for a [blank](is_blank) line, else its JSON
/// value or [`LinesError::BadLine`].
///
/// ```
/// use wasmpool::lines::parse_line;
///
/// assert_eq!(parse_line("[\"@q\", 2]", 1).unwrap().unwrap(), serde_json::json!(["@q", 2]));
/// assert!(parse_line(" \t", 2).is_none());
/// let e = parse_line("{oops", 3).unwrap().unwrap_err();
/// assert_eq!(e.to_string(), "input line 3 is not valid JSON");
/// ```
pub fn parse_line(line: &str, number: u64) -> Option<Result<Value, LinesError>> {
    if is_blank(line) {
        return None;
    }
    Some(
        serde_json::from_str(line).map_err(|source| LinesError::BadLine {
            line: number,
            source,
        }),
    )
}

/// The inputs of a JSON-lines reader, one a non-blank line ([`parse_line`]). A line that is
/// not JSON is an error and the next lines still come; a failure to read ends the inputs
/// after its [`LinesError::Read`].
#[derive(Debug)]
pub struct Lines<R> {
    lines: std::io::Lines<R>,
    number: u64,
    ended: bool,
}

impl<R: BufRead> Lines<R> {
    /// The inputs `reader` holds.
    pub fn new(reader: R) -> Self {
        Lines {
            lines: reader.lines(),
            number: 0,
            ended: false,
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Value, LinesError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.ended {
            self.number += 1;
            match self.lines.next()? {
                Ok(line) => {
                    if let Some(input) = parse_line(&line, self.number) {
                        return Some(input);
                    }
                }
                Err(e) => {
                    self.ended = true;
                    return Some(Err(LinesError::Read(e)));
                }
            }
        }
        None
    }
}

/// Encodes `input` as a task's arguments (a MessagePack array): the one argument, or with
/// `star` the array's items (anything but an array is then [`Error::BadArgs`](crate::Error::BadArgs)),
/// each top-level `"@NAME"` [resolved](Objects::substitute) against `objects`.
pub fn encode_input(objects: &Objects, input: &Value, star: bool) -> crate::Result<Vec<u8>> {
    match (star, input) {
        (true, Value::Array(args)) => crate::encode_args(&objects.substitute(args)),
        (true, _) => Err(crate::Error::BadArgs(format!(
            "with --star each input must be a JSON array, got {input}"
        ))),
        (false, arg) => crate::encode_args(&objects.substitute(std::slice::from_ref(arg))),
    }
}

/// Inputs as encoded task arguments, for [`Pool::imap_encoded`](crate::Pool::imap_encoded):
/// each input is [encoded](encode_input) and kept, by its index from 0, in the [`Pending`]
/// table until its result comes back. The first error of the inputs ends them, kept in the
/// table too (the items before it still run).
///
/// ```no_run
/// use wasmpool::lines::{Items, Lines, Objects, RecordWriter};
/// use wasmpool::{Module, Pool};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let module = Module::load("examples/testkit")?;
/// let pool = Pool::builder(&module).build()?;
/// let objects = Objects::new();
/// let items = Items::new(Lines::new(std::io::stdin().lock()), &objects, false);
/// let pending = items.pending();
/// let mut records = RecordWriter::new("square", std::io::stdout().lock());
/// let mut results = pool.imap_encoded::<()>("square", items, 64, true)?;
/// while let Some((index, result)) = results.next_indexed_bytes() {
///     let input = pending.take(index).unwrap_or_default();
///     records.write(&input, result)?;
/// }
/// if let Some(e) = pending.take_error() {
///     return Err(e.into());
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Items<'o, I> {
    inputs: I,
    objects: &'o Objects,
    star: bool,
    next: usize,
    ended: bool,
    pending: Pending,
}

impl<'o, I> Items<'o, I> {
    /// The items of `inputs`, whose `"@NAME"` arguments stand for `objects`; with `star`
    /// each input is an array of arguments.
    pub fn new(inputs: I, objects: &'o Objects, star: bool) -> Self {
        Items {
            inputs,
            objects,
            star,
            next: 0,
            ended: false,
            pending: Pending::default(),
        }
    }

    /// The table of the inputs in flight (a handle to it, shared with this iterator).
    pub fn pending(&self) -> Pending {
        self.pending.clone()
    }
}

impl<I: Iterator<Item = Result<Value, LinesError>>> Iterator for Items<'_, I> {
    type Item = crate::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        let input = match self.inputs.next() {
            Some(Ok(input)) => input,
            Some(Err(e)) => {
                self.ended = true;
                self.pending.lock().error = Some(e);
                return None;
            }
            None => {
                self.ended = true;
                return None;
            }
        };
        let args = encode_input(self.objects, &input, self.star);
        self.pending.lock().inputs.insert(self.next, input);
        self.next += 1;
        Some(args)
    }
}

/// The inputs of an [`Items`] whose results have not been taken yet, by index, and the
/// error that ended its inputs, if one did. Clones share the one table.
#[derive(Debug, Clone, Default)]
pub struct Pending(Arc<Mutex<PendingState>>);

#[derive(Debug, Default)]
struct PendingState {
    inputs: HashMap<usize, Value>,
    error: Option<LinesError>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, PendingState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the input of item `index`, to write it next to its result.
    pub fn take(&self, index: usize) -> Option<Value> {
        self.lock().inputs.remove(&index)
    }

    /// How many inputs are still held.
    pub fn len(&self) -> usize {
        self.lock().inputs.len()
    }

    /// Whether no inputs are held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Takes the error that ended the inputs, if one did.
    pub fn take_error(&self) -> Option<LinesError> {
        self.lock().error.take()
    }
}

/// Writes one JSON line per finished item of task `task`: `{"input":…,"result":…}`, the
/// result converted from MessagePack as [`write_json`](crate::write_json) does it
/// (streamed), or `{"error":"…","input":…}`. It counts the records and the failures, and
/// keeps the first failure's message. Records are written as they are given; the caller
/// chooses the order (input order, or as completed).
///
/// ```
/// use wasmpool::lines::RecordWriter;
///
/// let mut records = RecordWriter::new("t", Vec::new());
/// // 0xc1 is no MessagePack value: the item fails, naming the task.
/// assert!(!records.write_result(&serde_json::json!(1), &[0xc1])?);
/// assert!(records.first_error().unwrap().contains("task `t`"));
/// # Ok::<(), wasmpool::lines::LinesError>(())
/// ```
#[derive(Debug)]
pub struct RecordWriter<W> {
    out: W,
    task: String,
    done: u64,
    failed: u64,
    first_error: Option<String>,
}

impl<W: Write> RecordWriter<W> {
    /// Records of task `task`'s results, written to `out` (buffer it: each record is
    /// several writes).
    pub fn new(task: &str, out: W) -> Self {
        RecordWriter {
            out,
            task: task.to_string(),
            done: 0,
            failed: 0,
            first_error: None,
        }
    }

    /// Writes the record of `input` and what the pool answered for it (its MessagePack
    /// result or its error); `true` if the item succeeded.
    pub fn write(
        &mut self,
        input: &Value,
        result: crate::Result<Vec<u8>>,
    ) -> Result<bool, LinesError> {
        match result {
            Ok(raw) => self.write_result(input, &raw),
            Err(e) => self.write_error(input, &e.to_string()).map(|()| false),
        }
    }

    /// Writes the record of `input` and its MessagePack result `raw`; `true` if it
    /// succeeded, `false` (an error record, naming the task) if the result does not
    /// convert to JSON.
    pub fn write_result(&mut self, input: &Value, raw: &[u8]) -> Result<bool, LinesError> {
        if let Err(e) = crate::check_json(&self.task, raw) {
            self.write_error(input, &e.to_string())?;
            return Ok(false);
        }
        self.out.write_all(b"{\"input\":")?;
        serde_json::to_writer(&mut self.out, input).map_err(std::io::Error::from)?;
        self.out.write_all(b",\"result\":")?;
        crate::values::write_checked_json(&self.task, raw, &mut self.out)
            .map_err(LinesError::Result)?;
        self.out.write_all(b"}\n")?;
        self.done += 1;
        Ok(true)
    }

    /// Writes the error record of `input`, which failed with `message`.
    pub fn write_error(&mut self, input: &Value, message: &str) -> Result<(), LinesError> {
        self.failed += 1;
        self.first_error.get_or_insert_with(|| message.to_string());
        self.out.write_all(b"{\"error\":")?;
        serde_json::to_writer(&mut self.out, message).map_err(std::io::Error::from)?;
        self.out.write_all(b",\"input\":")?;
        serde_json::to_writer(&mut self.out, input).map_err(std::io::Error::from)?;
        self.out.write_all(b"}\n")?;
        self.done += 1;
        Ok(())
    }

    /// How many records were written.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// How many of them are errors.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// The message of the first error record.
    pub fn first_error(&self) -> Option<&str> {
        self.first_error.as_deref()
    }

    /// Flushes the output.
    pub fn flush(&mut self) -> Result<(), LinesError> {
        Ok(self.out.flush()?)
    }

    /// The output.
    pub fn into_inner(self) -> W {
        self.out
    }
}

#[cfg(test)]
mod tests;
