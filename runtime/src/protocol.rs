//! Frames between the host and a worker process.
//!
//! One Unix stream socket per worker carries length-delimited frames: a 4-byte little-endian
//! length, then that many bytes of postcard. Both ends are this crate, so postcard's compact,
//! schema-less encoding is safe to use. A frame longer than [`MAX_FRAME`] is refused before
//! anything is allocated for it, and a frame that does not decode closes the channel: the
//! peer is treated as lost, never trusted further.

use std::io::{self, Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};

/// The largest frame either side accepts (64 MiB): arguments and results travel inside frames.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// The exit status of a worker whose watchdog stopped a task stuck past its time limit. It
/// answered that task first, so no task was running when it exited.
pub(crate) const WATCHDOG_EXIT: i32 = 75;

/// Which output stream of the guest a chunk of bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stream {
    /// The guest's standard output.
    Stdout,
    /// The guest's standard error.
    Stderr,
}

/// How one call ended, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded (MessagePack) return value.
    Ok(Vec<u8>),
    /// The task returned `Err` or panicked.
    Failed(String),
    /// The module has no such task.
    UnknownTask,
    /// The arguments did not decode.
    BadArgs(String),
    /// The guest trapped; the instance was discarded.
    Trap(String),
    /// The task hit a limit (time, memory); the instance was discarded. The text names it.
    Limit(String),
}

/// Limits on one task run, enforced in the worker.
///
/// ```
/// use std::time::Duration;
/// let limits = wasmpool::Limits::default().timeout(Duration::from_secs(5)).memory_mib(64);
/// assert_eq!(limits.memory_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most linear memory the instance may grow to, in bytes (default 256 MiB).
    pub memory_bytes: u64,
    /// The longest a task may run, wall clock, including time blocked in host calls such as
    /// sleep (default: none, as in Python).
    pub timeout: Option<std::time::Duration>,
    /// The most bytes a task may write to stdout and stderr together (default 64 MiB); a
    /// task that writes more is stopped with an "output limit" error.
    pub output_bytes: u64,
    /// The most fuel a task may use (default: none, no metering). Fuel counts the wasm
    /// instructions a task executes, so the same task on the same input uses the same fuel
    /// on every run and every machine; a task that uses it up is stopped with an "out of
    /// fuel" error. Time spent in host calls (sleeping, waiting on a queue) uses no fuel.
    ///
    /// A pool or process built with a fuel limit runs on an engine that counts fuel, which
    /// makes wasm code slower; others pay nothing for it.
    pub fuel: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            timeout: None,
            output_bytes: 64 << 20,
            fuel: None,
        }
    }
}

impl Limits {
    /// Sets the wall-clock time limit per task.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the memory limit per instance, in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_bytes = mib.saturating_mul(1 << 20);
        self
    }

    /// Sets the output limit per task (stdout and stderr together), in bytes.
    pub fn output_bytes(mut self, bytes: u64) -> Self {
        self.output_bytes = bytes;
        self
    }

    /// Sets the fuel budget per task: deterministic CPU metering (see [`Limits::fuel`]).
    /// A pool or process built with it reports the fuel its tasks used
    /// ([`AsyncResult::fuel_used`](crate::AsyncResult::fuel_used),
    /// [`Process::fuel_used`](crate::Process::fuel_used)). `u64::MAX` measures without a
    /// budget that matters.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }
}

/// What a worker needs to start serving tasks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Load {
    /// The precompiled component artifact to map.
    pub artifact: PathBuf,
    /// The process name tasks see (`Process-1`, `PoolWorker-3`, …).
    pub name: String,
    /// Whether `artifact` was compiled for the metered (fuel-counting) engine: the worker
    /// must deserialize it with that engine.
    pub metered: bool,
}

/// Host → worker.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToWorker {
    /// Map the module, instantiate it and run its init; answered by `Ready` or `LoadFailed`.
    Load(Load),
    /// Rename the process (a warm spare takes the name of the `Process` that claims it).
    Rename(String),
    /// Give the tasks these capabilities (directories, environment) from the next call on.
    Grant(crate::grants::Grants),
    /// Run one task. With `exit_after`, the worker exits once it has answered
    /// (status 0 on success, 1 on failure), as a Python `Process` does.
    Call {
        id: u64,
        task: String,
        args: Vec<u8>,
        exit_after: bool,
        limits: Limits,
    },
    /// Run one task per item, in order, in one crossing into the guest.
    CallBatch {
        id: u64,
        task: String,
        items: Vec<Vec<u8>>,
        limits: Limits,
    },
    /// Exit now, with status 0.
    Shutdown,
    /// The broker's answer to the worker's `Object` request `req`.
    ObjectReply {
        req: u64,
        result: Result<Response, ObjectError>,
    },
}

/// Worker → host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromWorker {
    /// The module is loaded; these are its tasks.
    Ready { tasks: Vec<String> },
    /// The module could not be loaded or its init failed; the worker exits.
    LoadFailed(String),
    /// Bytes the guest wrote to stdout or stderr during call `id`.
    Output {
        id: u64,
        stream: Stream,
        data: Vec<u8>,
    },
    /// Call `id` finished. `fuel`: what it used, on a metered worker.
    Done {
        id: u64,
        outcome: Outcome,
        fuel: Option<u64>,
    },
    /// Batch call `id` finished: one outcome per item. `fuel`: what the items used
    /// together, on a metered worker.
    BatchDone {
        id: u64,
        outcomes: Vec<Outcome>,
        fuel: Option<u64>,
    },
    /// The last call trapped or hit a limit and its instance was discarded: whatever the
    /// worker held of the shared objects (locks, semaphores, pipe ends) is given back, as
    /// if the process had exited. Sent before the call's answer.
    InstanceLost,
    /// The running task performs `request` on a shared object; the worker blocks until
    /// the `ObjectReply` for `req` arrives.
    Object {
        req: u64,
        target: Handle,
        request: Request,
        timeout_ms: Option<u64>,
    },
}

/// Appends one encoded frame to `buf`.
pub(crate) fn encode_frame<T: Serialize>(buf: &mut Vec<u8>, msg: &T) -> io::Result<()> {
    let start = buf.len();
    buf.extend_from_slice(&[0; 4]);
    let encoded = postcard::to_extend(msg, std::mem::take(buf));
    let mut out = encoded.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let len = out.len() - start - 4;
    if len > MAX_FRAME {
        out.truncate(start);
        *buf = out;
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {len} bytes exceeds the {MAX_FRAME} byte limit"),
        ));
    }
    let len = u32::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    *buf = out;
    Ok(())
}

/// Writes one frame.
pub(crate) fn write_frame<W: Write, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let mut buf = Vec::new();
    encode_frame(&mut buf, msg)?;
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame<R: Read, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME} byte limit"),
        ));
    }
    buf.clear();
    buf.resize(len, 0);
    r.read_exact(buf)?;
    decode_frame(buf).map(Some)
}

/// Decodes a frame body; anything malformed is an `InvalidData` error.
pub(crate) fn decode_frame<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    postcard::from_bytes(body)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("malformed frame: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut wire = Vec::new();
        let msg = ToWorker::Call {
            id: 7,
            task: "square".into(),
            args: vec![0x91, 7],
            exit_after: false,
            limits: Limits::default(),
        };
        write_frame(&mut wire, &msg).unwrap();
        let mut buf = Vec::new();
        let back: ToWorker = read_frame(&mut wire.as_slice(), &mut buf).unwrap().unwrap();
        assert!(matches!(back, ToWorker::Call { id: 7, ref task, .. } if task == "square"));
    }

    #[test]
    fn oversized_length_is_refused_without_allocating() {
        let wire = (u32::MAX).to_le_bytes();
        let mut buf = Vec::new();
        let err = read_frame::<_, ToWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(buf.capacity() < 1024);
    }

    #[test]
    fn garbage_body_is_an_error_not_a_panic() {
        let mut wire = 3u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[0xff, 0xff, 0xff]);
        let mut buf = Vec::new();
        assert!(read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).is_err());
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[1, 2]);
        let mut buf = Vec::new();
        assert!(read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).is_err());
    }
}
