//! Support code for the `#[task]` and `export_tasks!` macros; not a public API.

use std::cell::{Cell, RefCell};
use std::fmt::Display;
use std::sync::Once;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::bindings::wasmpool::task::host;
pub use crate::bindings::wasmpool::task::types::{BatchOutcome, Packed, TaskError};

/// The outcome of one task call, as the WIT world defines it.
pub type Outcome = Result<Vec<u8>, TaskError>;

/// A task's function: decodes its arguments, runs it and appends its encoded result to the
/// buffer (so a batch reuses one buffer rather than allocating per item).
pub type TaskFn = fn(&[u8], &mut Vec<u8>) -> Result<(), TaskError>;

/// A task's name and its function.
pub type TaskEntry = (&'static str, TaskFn);

thread_local! {
    /// Outcomes of the current `call-batch` since its last progress report, handed to the
    /// host if a later item panics (`None` outside a batch).
    static BATCH: RefCell<Option<BatchOutcome>> = const { RefCell::new(None) };
    /// Whether the running item of a batch has called the host's `objects` (a side effect
    /// that must not happen twice).
    static EFFECT: Cell<bool> = const { Cell::new(false) };
}

/// An empty batch outcome, with room for `n` items.
fn empty_outcome(n: usize, bytes: usize) -> BatchOutcome {
    BatchOutcome {
        results: Packed {
            data: Vec::with_capacity(bytes),
            ends: Vec::with_capacity(n),
        },
        errors: Vec::new(),
    }
}

/// Hands the outcomes recorded since the last report to the host, which keeps them: a
/// later trap in this batch never runs those items again.
fn report_progress(batch: &mut BatchOutcome) {
    if batch.results.ends.is_empty() {
        return;
    }
    let done = std::mem::replace(batch, empty_outcome(0, 0));
    host::batch_progress(&unpack(done));
}

/// Called before every call to the host's `objects`: inside a batch, the items finished
/// so far are reported first (so the host knows which item makes the call), and the
/// running item is marked as having a side effect (so it is reported when it finishes).
pub(crate) fn before_effect() {
    BATCH.with(|b| {
        if let Ok(mut b) = b.try_borrow_mut()
            && let Some(batch) = b.as_mut()
        {
            report_progress(batch);
            EFFECT.set(true);
        }
    });
}

/// The outcomes recorded in `batch`, one per item, as `report-panic` takes them.
fn unpack(batch: BatchOutcome) -> Vec<Outcome> {
    let BatchOutcome { results, errors } = batch;
    let mut errors = errors.into_iter().peekable();
    let mut start = 0usize;
    let mut out = Vec::with_capacity(results.ends.len());
    for (i, &end) in results.ends.iter().enumerate() {
        let end = end as usize;
        match errors.next_if(|(at, _)| *at as usize == i) {
            Some((_, e)) => out.push(Err(e)),
            None => out.push(Ok(results
                .data
                .get(start..end)
                .unwrap_or_default()
                .to_vec())),
        }
        start = end;
    }
    out
}

static PANIC_HOOK: Once = Once::new();

fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        // Handles in the arguments reach the host through the `objects` import.
        crate::objects::install();
        std::panic::set_hook(Box::new(|info| {
            let payload = info.payload();
            let text = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_string()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "Box<dyn Any>".to_string()
            };
            let message = match info.location() {
                Some(loc) => format!(
                    "panicked at {}:{}:{}: {text}",
                    loc.file(),
                    loc.line(),
                    loc.column()
                ),
                None => format!("panicked: {text}"),
            };
            // What the task printed without a newline reaches the host before it hears of
            // the panic (the instance is discarded after it, with std's buffer).
            flush_output();
            let completed = BATCH.with(|b| {
                b.try_borrow_mut()
                    .ok()
                    .and_then(|mut b| b.take())
                    .map(unpack)
                    .unwrap_or_default()
            });
            host::report_panic(&message, &completed);
        }));
    });
}

/// Writes out what std's stdout holds back (a last line without a newline): a task's output
/// is whole when its call ends, as a Python process's is when it exits. Stderr is not
/// buffered.
fn flush_output() {
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
}

/// The default per-instance init: nothing to do.
pub fn no_init() -> Result<(), String> {
    Ok(())
}

/// Runs the guest's init function, rendering its error as text.
pub fn run_init<E: Display>(init: fn() -> Result<(), E>) -> Result<(), String> {
    install_panic_hook();
    let result = init().map_err(|e| e.to_string());
    flush_output();
    result
}

/// The names of the exported tasks.
pub fn list_tasks(tasks: &[TaskEntry]) -> Vec<String> {
    tasks.iter().map(|(name, _)| (*name).to_string()).collect()
}

fn find(tasks: &[TaskEntry], name: &str) -> Option<TaskFn> {
    tasks.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Calls one task.
pub fn call(tasks: &[TaskEntry], name: &str, args: &[u8]) -> Outcome {
    install_panic_hook();
    match find(tasks, name) {
        Some(f) => {
            let mut out = Vec::new();
            let result = f(args, &mut out).map(|()| out);
            flush_output();
            result
        }
        None => Err(TaskError::UnknownTask(name.to_string())),
    }
}

/// Calls one task once per item. The host hears of the items that finished as the batch
/// goes (see `batch-progress` in the WIT world): before each call to `objects` and after
/// each item that made one, so an item with side effects never runs twice; a panic hands
/// the rest of the finished outcomes to the host first.
pub fn call_batch(tasks: &[TaskEntry], name: &str, items: Packed) -> BatchOutcome {
    install_panic_hook();
    let n = items.ends.len();
    let mut out = empty_outcome(n, items.data.len());
    let Some(f) = find(tasks, name) else {
        out.results.ends.resize(n, 0);
        out.errors = (0..n as u32)
            .map(|i| (i, TaskError::UnknownTask(name.to_string())))
            .collect();
        return out;
    };
    if n > 1 {
        // Says that this guest reports its progress: one host call per batch.
        host::batch_progress(&[]);
    }
    // One scratch buffer for every item: the batch so far stays in BATCH, where the panic
    // hook finds it, and no borrow of it is held while a task runs.
    let mut scratch = Vec::new();
    let mut start = 0usize;
    BATCH
        .with(|batch| {
            *batch.borrow_mut() = Some(out);
            for &end in &items.ends {
                let end = end as usize;
                scratch.clear();
                EFFECT.set(false);
                let outcome = match items.data.get(start..end) {
                    Some(args) => f(args, &mut scratch),
                    None => Err(TaskError::BadArgs(
                        "the batch's item bounds are malformed".into(),
                    )),
                };
                start = end;
                if let Some(out) = batch.borrow_mut().as_mut() {
                    match outcome {
                        Ok(()) => append(&mut out.results.data, &scratch),
                        Err(e) => out.errors.push((out.results.ends.len() as u32, e)),
                    }
                    out.results.ends.push(out.results.data.len() as u32);
                    if EFFECT.get() {
                        // An item with side effects is reported as soon as it finishes.
                        report_progress(out);
                    }
                }
            }
            EFFECT.set(false);
            flush_output();
            batch.borrow_mut().take()
        })
        .unwrap_or_else(|| empty_outcome(0, 0))
}

/// Appends `bytes` to `out`. Copying a slice whose length is known only at run time
/// compiles to wasm's `memory.copy`, which the runtime runs as a call out of the guest that
/// costs more than copying a few bytes; so the lengths of MessagePack scalars (1 to 9 bytes,
/// what tiny tasks return) are copied as fixed-size arrays, which compile to plain loads and
/// stores.
#[inline]
fn append(out: &mut Vec<u8>, bytes: &[u8]) {
    macro_rules! fixed {
        ($($n:literal)*) => {
            match bytes.len() {
                $($n => {
                    if let Ok(b) = <&[u8; $n]>::try_from(bytes) {
                        out.extend_from_slice(b);
                    }
                })*
                _ => out.extend_from_slice(bytes),
            }
        };
    }
    fixed!(1 2 3 4 5 6 7 8 9);
}

/// Decodes positional arguments: one MessagePack array of exactly `N` values.
#[derive(Debug)]
pub struct Args<'a> {
    task: &'static str,
    params: &'static [(&'static str, &'static str)],
    rest: &'a [u8],
    index: usize,
}

impl<'a> Args<'a> {
    /// The arguments of one call of a task whose parameters are `params` (each given as
    /// `(name, type)`); [`begin`](Args::begin) reads the array header.
    ///
    /// This, `begin` and [`decode_next`](Args::decode_next) run once per item of a batch:
    /// their common paths are inlined into the task's `call`, the rest kept out of line.
    /// Making the value cannot fail, so it never travels inside a `Result`: a `Result<Args,
    /// _>` was built in the guest's stack memory and copied out of it in 8-byte loads over
    /// 4-byte stores, which stall the processor on every item.
    #[inline]
    pub fn new(
        task: &'static str,
        params: &'static [(&'static str, &'static str)],
        bytes: &'a [u8],
    ) -> Self {
        Args {
            task,
            params,
            rest: bytes,
            index: 0,
        }
    }

    /// Reads the array header and checks the arity against the task's parameters.
    #[inline]
    pub fn begin(&mut self) -> Result<(), TaskError> {
        // A fixarray header of the right length: the common case, with nothing to report.
        if let Some((&marker, rest)) = self.rest.split_first()
            && self.params.len() < 16
            && usize::from(marker) == 0x90 + self.params.len()
        {
            self.rest = rest;
            return Ok(());
        }
        self.begin_general()
    }

    #[inline(never)]
    fn begin_general(&mut self) -> Result<(), TaskError> {
        let (task, params) = (self.task, self.params);
        let len = rmp::decode::read_array_len(&mut self.rest).map_err(|_| {
            TaskError::BadArgs(format!(
                "task `{task}` expects its arguments as one MessagePack array"
            ))
        })?;
        if len as usize != params.len() {
            let wanted: Vec<String> = params.iter().map(|(n, t)| format!("{n}: {t}")).collect();
            return Err(TaskError::BadArgs(format!(
                "task `{task}` takes {} argument{} ({}), got {len}",
                params.len(),
                if params.len() == 1 { "" } else { "s" },
                wanted.join(", ")
            )));
        }
        Ok(())
    }

    /// Decodes the next argument.
    #[inline]
    pub fn decode_next<T: DeserializeOwned + 'static>(&mut self) -> Result<T, TaskError> {
        match crate::scalar::decode::<T>(&mut self.rest) {
            Some(value) => {
                self.index += 1;
                Ok(value)
            }
            None => self.decode_serde(),
        }
    }

    #[inline(never)]
    fn decode_serde<T: DeserializeOwned>(&mut self) -> Result<T, TaskError> {
        // Only the marker byte is kept for the error message, which is written only on the
        // error path: this runs once per argument of every item of a batch.
        let marker = self.rest.first().copied();
        let mut de = rmp_serde::Deserializer::new(&mut self.rest);
        let value = T::deserialize(&mut de).map_err(|e| {
            let (name, ty) = self.params.get(self.index).copied().unwrap_or(("?", "?"));
            let got = marker.map_or("nothing", kind_of);
            TaskError::BadArgs(format!(
                "task `{}`: argument {} (`{name}: {ty}`): expected {ty}, got {got} ({e})",
                self.task,
                self.index + 1
            ))
        })?;
        self.index += 1;
        Ok(value)
    }
}

/// What kind of MessagePack value starts with marker byte `m`.
fn kind_of(m: u8) -> &'static str {
    match m {
        0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => "an integer",
        0x80..=0x8f | 0xde | 0xdf => "a map",
        0x90..=0x9f | 0xdc | 0xdd => "an array",
        0xa0..=0xbf | 0xd9..=0xdb => "a string",
        0xc0 => "nil",
        0xc2 | 0xc3 => "a boolean",
        0xc4..=0xc6 => "binary data",
        0xca | 0xcb => "a float",
        _ => "an extension value",
    }
}

/// Encodes a task's return value.
#[inline]
pub fn encode_return<T: Serialize + 'static>(
    task: &str,
    value: T,
    out: &mut Vec<u8>,
) -> Result<(), TaskError> {
    if crate::scalar::encode(&value, out) {
        return Ok(());
    }
    encode_serde(task, value, out)
}

#[inline(never)]
fn encode_serde<T: Serialize>(task: &str, value: T, out: &mut Vec<u8>) -> Result<(), TaskError> {
    let start = out.len();
    rmp_serde::encode::write_named(out, &value).map_err(|e| {
        out.truncate(start);
        TaskError::Failed(format!("task `{task}`: cannot encode its result: {e}"))
    })
}

/// Encodes a fallible task's return value; its `Err` becomes the task's error message.
#[inline]
pub fn encode_result<T: Serialize + 'static, E: Display>(
    task: &str,
    value: Result<T, E>,
    out: &mut Vec<u8>,
) -> Result<(), TaskError> {
    match value {
        Ok(v) => encode_return(task, v, out),
        Err(e) => Err(TaskError::Failed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_copies_every_length_exactly() {
        let source: Vec<u8> = (1..=40).collect();
        for len in 0..=source.len() {
            let mut out = vec![0xaa, 0xbb];
            append(&mut out, &source[..len]);
            assert_eq!(out.len(), 2 + len);
            assert_eq!(&out[..2], [0xaa, 0xbb]);
            assert_eq!(&out[2..], &source[..len], "length {len}");
        }
    }
}
