//! Frames between the host and a worker process.
//!
//! One Unix stream socket per worker carries length-delimited frames: a 4-byte little-endian
//! length, then that many bytes of postcard. Both ends are this crate, so postcard's compact,
//! schema-less encoding is safe to use. A frame longer than [`MAX_FRAME`] is refused before
//! anything is allocated for it, and a frame that does not decode closes the channel: the
//! peer is treated as lost, never trusted further.

use std::io::{self, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};

/// The largest frame either side accepts (64 MiB): arguments and results travel inside frames.
pub(crate) const MAX_FRAME: usize = 64 << 20;

/// The largest result one item may return (64 MiB less room for the frame around it): a
/// larger one fails that item with an error naming both sizes, and its worker goes on.
pub(crate) const MAX_RESULT: usize = MAX_FRAME - (64 << 10);

/// A batch's items, and its answers, travel in frames of about this many bytes at most
/// (16 MiB): a chunk whose items are larger together is cut into smaller chunks before it is
/// sent, and a worker sends the answers of a batch in parts as they add up to this much, so
/// the items and the answers that fit a frame arrive whatever the others weigh.
pub(crate) const PART_BYTES: usize = 16 << 20;

/// How much of a frame's body is allocated ahead of the bytes that arrive (1 MiB).
const READ_CHUNK: usize = 1 << 20;

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

/// How the message of a task that called `exit` with a non-zero status begins
/// (`Outcome::Failed`): a `Process` does not report it as an error, as Python's
/// `sys.exit(1)` prints nothing.
pub(crate) const EXIT_STATUS: &str = "exited with status ";

/// How one call ended, as the worker reports it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Outcome {
    /// The encoded (MessagePack) return value.
    Ok(#[serde(with = "crate::wire_bytes::bytes")] Vec<u8>),
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
    /// The most wasm stack a task may use, in bytes (default 1 MiB, from
    /// [`Limits::MIN_STACK_BYTES`] to [`Limits::MAX_STACK_BYTES`]); a task that recurses
    /// deeper is stopped with a "stack overflow" error.
    pub stack_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            timeout: None,
            output_bytes: 64 << 20,
            fuel: None,
            stack_bytes: Self::DEFAULT_STACK_BYTES,
        }
    }
}

impl Limits {
    /// The default stack limit (1 MiB).
    pub const DEFAULT_STACK_BYTES: u64 = 1 << 20;
    /// The smallest stack limit a task may be given (64 KiB).
    pub const MIN_STACK_BYTES: u64 = 64 << 10;
    /// The largest stack limit a task may be given (64 MiB): the worker runs tasks on a
    /// thread with this much stack and a margin for the host functions below it.
    pub const MAX_STACK_BYTES: u64 = 64 << 20;

    /// Sets the wasm stack limit per task, in KiB.
    ///
    /// ```
    /// let limits = wasmpool::Limits::default().stack_kib(256);
    /// assert_eq!(limits.stack_bytes, 256 << 10);
    /// assert!(limits.check().is_ok());
    /// assert!(wasmpool::Limits::default().stack_kib(1).check().is_err());
    /// ```
    pub fn stack_kib(mut self, kib: u64) -> Self {
        self.stack_bytes = kib.saturating_mul(1 << 10);
        self
    }

    /// The largest memory limit a task may be given (4 GiB): all that a wasm32 memory can
    /// address (65536 pages of 64 KiB). A larger limit could never be reached, so it is
    /// refused rather than accepted as if it meant something.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// The longest time limit a task may be given (365 days); for no limit at all, leave
    /// [`Limits::timeout`] unset. Longer limits are refused: deadlines are kept as instants
    /// and clock ticks, which far longer ones would overflow.
    pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

    /// Whether these limits can be enforced: the stack limit within its bounds, the memory
    /// limit from 1 byte to [`Limits::MAX_MEMORY_BYTES`], and the time limit, if any, more
    /// than zero and at most [`Limits::MAX_TIMEOUT`]. Pools and processes check their limits
    /// before running anything, so a bad value fails there, with this text.
    ///
    /// ```
    /// let limits = wasmpool::Limits::default().memory_mib(5000);
    /// assert!(limits.check().unwrap_err().contains("4096 MiB"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        if !(Self::MIN_STACK_BYTES..=Self::MAX_STACK_BYTES).contains(&self.stack_bytes) {
            return Err(format!(
                "a stack limit of {} is out of range: it must be from {} to {}",
                describe_bytes(self.stack_bytes),
                describe_bytes(Self::MIN_STACK_BYTES),
                describe_bytes(Self::MAX_STACK_BYTES)
            ));
        }
        if self.memory_bytes == 0 {
            return Err("a memory limit of 0 bytes leaves a task no memory at all".into());
        }
        if self.memory_bytes > Self::MAX_MEMORY_BYTES {
            return Err(format!(
                "a memory limit of {} is more than a wasm32 instance can address: it must be \
                 at most {}",
                describe_bytes(self.memory_bytes),
                describe_bytes(Self::MAX_MEMORY_BYTES)
            ));
        }
        match self.timeout {
            Some(t) if t.is_zero() => {
                return Err("a time limit of zero stops every task before it starts".into());
            }
            Some(t) if t > Self::MAX_TIMEOUT => {
                return Err(format!(
                    "a time limit of {}s is too long: it must be at most {}s (365 days); \
                     leave it unset for none",
                    t.as_secs(),
                    Self::MAX_TIMEOUT.as_secs()
                ));
            }
            _ => {}
        }
        Ok(())
    }

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

/// `n` bytes in words: whole MiB or KiB when exact, else bytes.
pub(crate) fn describe_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
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
    /// The stack limit of the engine to load it into: the one its tasks are likely to ask
    /// for (the pool's or process's), so the first call need not load it again.
    pub stack_bytes: u64,
    /// The limits the first instance is made and its init run under: the memory and time
    /// limits of the pool or process the worker is for.
    pub init_limits: Limits,
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
        #[serde(with = "crate::wire_bytes::bytes")]
        args: Vec<u8>,
        exit_after: bool,
        limits: Limits,
    },
    /// Run one task per item, in order, in one crossing into the guest.
    CallBatch {
        id: u64,
        task: String,
        items: crate::packed::Packed,
        limits: Limits,
    },
    /// Exit now, with status 0.
    Shutdown,
    /// The broker's answer to the worker's `Object` request `req` (or `ObjectSync`). For a
    /// posted request only a refusal is answered. `postable`: the request was a put or a
    /// send on an object where those never wait, so later ones on this handle may be posted.
    ObjectReply {
        req: u64,
        result: Result<Response, ObjectError>,
        postable: bool,
    },
    /// The host refused the posted request `req` on `target`. Until the worker sends a
    /// request on `target` that it waits for, every later posted one is refused the same.
    ObjectRefused {
        req: u64,
        target: Handle,
        error: ObjectError,
    },
    /// The answer to the worker's `Attach` request `req`: the kind of the object's shared
    /// segment, which came with this frame (a descriptor passed on the socket), or `None`
    /// when the object is used through the broker only.
    Attached {
        req: u64,
        result: Result<Option<crate::shm::SegmentKind>, ObjectError>,
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
        #[serde(with = "crate::wire_bytes::bytes")]
        data: Vec<u8>,
    },
    /// Call `id` finished. `fuel`: what it used, on a metered worker; `micros`: how long
    /// it ran in the worker (what the pool's pipelining is based on).
    Done {
        id: u64,
        outcome: Outcome,
        fuel: Option<u64>,
        micros: u64,
    },
    /// The next `answers.len()` items of batch call `id` (after those of earlier parts)
    /// finished; more answers follow. A batch's answers come in parts when they are large
    /// (see [`PART_BYTES`]).
    BatchPart {
        id: u64,
        answers: crate::packed::BatchAnswers,
    },
    /// Batch call `id` finished: one outcome per item after those of its parts. Fewer
    /// answers than items means the rest never ran (the worker's watchdog stopped the batch
    /// in a host call): they are to be run again. `fuel`: what the items used together, on
    /// a metered worker; `micros`: how long the batch ran in the worker.
    BatchDone {
        id: u64,
        answers: crate::packed::BatchAnswers,
        fuel: Option<u64>,
        micros: u64,
    },
    /// The worker is alive, running a call with a time limit: sent when it has sent
    /// nothing else for a second, so the host can tell a stopped or wedged worker (which
    /// sends nothing) from a long call, and replace it.
    Alive,
    /// The last call trapped or hit a limit and its instance was discarded: whatever the
    /// worker held of the shared objects (locks, semaphores, pipe ends) is given back, as
    /// if the process had exited. Sent before the call's answer.
    InstanceLost,
    /// The running task performs `request` on a shared object; the worker blocks until
    /// the `ObjectReply` for `req` arrives. A `posted` request (a put or a send the host
    /// said never waits) is not waited for: the host answers it only if it refuses it.
    Object {
        req: u64,
        target: Handle,
        request: Request,
        timeout_ms: Option<u64>,
        posted: bool,
    },
    /// Answered at once with an empty `ObjectReply` for `req`: once it arrives, every
    /// refusal of a request posted before it has arrived too.
    ObjectSync { req: u64 },
    /// The running task is about to use object `target` (a pipe end or a queue): the worker
    /// holds it from now on, and asks for its shared segment to use it in place (see
    /// `crate::shm`).
    Attach { req: u64, target: Handle },
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

/// Where frames are read from. Between frames a read waits as long as the peer takes (a
/// task may run for hours before its answer); a source may bound the wait inside a frame.
pub(crate) trait FrameSource: Read {
    /// A frame has begun: reads until [`frame_done`](FrameSource::frame_done) are inside it.
    fn frame_begun(&mut self) {}
    /// The frame is complete.
    fn frame_done(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl FrameSource for &[u8] {}
impl FrameSource for UnixStream {}
impl<R: Read> FrameSource for BufReader<R> {}

/// A worker's socket as the host reads it: a worker that sends part of a frame and then
/// nothing for the stall limit (its runtime's, 10 s by default) is treated as broken, so a
/// worker that stops half-way through a frame, yet stays alive, cannot hold its task (and
/// its caller) forever. Waits between frames are not limited.
pub(crate) struct WorkerReader {
    inner: BufReader<UnixStream>,
    stall: Duration,
    in_frame: bool,
    /// Whether the socket's read timeout is set (only while a frame needs the socket).
    armed: bool,
}

impl WorkerReader {
    pub fn new(sock: UnixStream, stall: Duration) -> Self {
        WorkerReader {
            inner: BufReader::with_capacity(64 << 10, sock),
            stall,
            in_frame: false,
            armed: false,
        }
    }

    /// Whether bytes of a next frame are already buffered.
    pub fn has_buffered(&self) -> bool {
        !self.inner.buffer().is_empty()
    }
}

impl Read for WorkerReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let stall = self.stall;
        // Frames read from the buffer cost no system call; the timeout is set only when
        // the rest of a frame must come from the socket.
        if self.in_frame && !self.armed && self.inner.buffer().is_empty() {
            self.inner.get_ref().set_read_timeout(Some(stall))?;
            self.armed = true;
        }
        self.inner.read(out).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if self.in_frame => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("part of a frame, then nothing for {stall:?}"),
            ),
            _ => e,
        })
    }
}

impl FrameSource for WorkerReader {
    fn frame_begun(&mut self) {
        self.in_frame = true;
    }

    fn frame_done(&mut self) -> io::Result<()> {
        self.in_frame = false;
        if self.armed {
            self.armed = false;
            self.inner.get_ref().set_read_timeout(None)?;
        }
        Ok(())
    }
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read_frame<R: FrameSource, T: for<'de> Deserialize<'de>>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> io::Result<Option<T>> {
    // End of file before a frame is the peer closing; inside the header it is a cut frame.
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame header cut short after {got} of 4 bytes"),
                ));
            }
            Ok(n) => {
                if got == 0 {
                    r.frame_begun();
                }
                got += n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the {MAX_FRAME} byte limit"),
        ));
    }
    // The body is read a chunk at a time, so a header announcing more than the peer sends
    // costs memory only for what actually arrived.
    buf.clear();
    while buf.len() < len {
        let filled = buf.len();
        buf.resize(filled + (len - filled).min(READ_CHUNK), 0);
        r.read_exact(&mut buf[filled..])
            .map_err(|e| match e.kind() {
                io::ErrorKind::UnexpectedEof => io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame of {len} bytes cut short"),
                ),
                _ => e,
            })?;
    }
    r.frame_done()?;
    decode_frame(buf).map(Some)
}

/// Decodes a frame body; anything malformed, trailing bytes included, is an `InvalidData`
/// error.
pub(crate) fn decode_frame<T: for<'de> Deserialize<'de>>(body: &[u8]) -> io::Result<T> {
    let malformed = |why: String| io::Error::new(io::ErrorKind::InvalidData, why);
    let (msg, rest) =
        postcard::take_from_bytes(body).map_err(|e| malformed(format!("malformed frame: {e}")))?;
    if !rest.is_empty() {
        return Err(malformed(format!(
            "malformed frame: trailing bytes after the message ({})",
            rest.len()
        )));
    }
    Ok(msg)
}

/// Entry points for fuzzing the frame decoders (the `fuzz/` crate) and for tests that do what
/// the fuzzer does.
///
/// **Not part of the stable API**: hidden from the documentation, and free to change or
/// vanish in any release. It exposes only "bytes in, verdict out", never the frame types.
#[doc(hidden)]
pub mod fuzzing {
    use std::io;

    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::{FromWorker, ToWorker, decode_frame, encode_frame, read_frame};

    /// What reading a byte stream as frames came to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Decoded {
        /// The kinds of the frames that decoded, in order (`"Call"`, `"Done"`, …).
        pub kinds: Vec<&'static str>,
        /// `None` at a clean end of the stream, else the error that closed the channel.
        pub error: Option<io::ErrorKind>,
        /// The most memory the frame buffer held at any point, in bytes.
        pub buffer_capacity: usize,
    }

    /// Reads `stream` as a worker reads its socket (host → worker frames), frame by frame,
    /// until its end or the first error (which closes the channel).
    ///
    /// # Panics
    ///
    /// Only if a frame that decoded does not survive being encoded and decoded again: a bug
    /// in the protocol, which is what the fuzzer looks for. Never on malformed input.
    pub fn read_to_worker(stream: &[u8]) -> Decoded {
        read_all::<ToWorker>(stream, ToWorker::kind)
    }

    /// Reads `stream` as the host reads a worker's socket (worker → host frames); as
    /// [`read_to_worker`].
    ///
    /// # Panics
    ///
    /// As [`read_to_worker`].
    pub fn read_from_worker(stream: &[u8]) -> Decoded {
        read_all::<FromWorker>(stream, FromWorker::kind)
    }

    /// Decodes `body` as the body of one host → worker frame (no length header); returns the
    /// frame's kind if it decoded.
    ///
    /// # Panics
    ///
    /// As [`read_to_worker`].
    pub fn decode_to_worker(body: &[u8]) -> Option<&'static str> {
        decode_one::<ToWorker>(body, ToWorker::kind)
    }

    /// Decodes `body` as the body of one worker → host frame; as [`decode_to_worker`].
    ///
    /// # Panics
    ///
    /// As [`read_to_worker`].
    pub fn decode_from_worker(body: &[u8]) -> Option<&'static str> {
        decode_one::<FromWorker>(body, FromWorker::kind)
    }

    fn read_all<T: Serialize + DeserializeOwned>(
        stream: &[u8],
        kind: fn(&T) -> &'static str,
    ) -> Decoded {
        let mut reader = stream;
        let mut buf = Vec::new();
        let mut decoded = Decoded {
            kinds: Vec::new(),
            error: None,
            buffer_capacity: 0,
        };
        loop {
            let frame = read_frame::<_, T>(&mut reader, &mut buf);
            decoded.buffer_capacity = decoded.buffer_capacity.max(buf.capacity());
            match frame {
                Ok(Some(msg)) => {
                    check_round_trip(&msg);
                    decoded.kinds.push(kind(&msg));
                }
                Ok(None) => return decoded,
                Err(e) => {
                    decoded.error = Some(e.kind());
                    return decoded;
                }
            }
        }
    }

    fn decode_one<T: Serialize + DeserializeOwned>(
        body: &[u8],
        kind: fn(&T) -> &'static str,
    ) -> Option<&'static str> {
        let msg = decode_frame::<T>(body).ok()?;
        check_round_trip(&msg);
        Some(kind(&msg))
    }

    /// A decoded frame encodes again, and that encoding decodes to a frame that encodes the
    /// same way.
    fn check_round_trip<T: Serialize + DeserializeOwned>(msg: &T) {
        let mut first = Vec::new();
        if let Err(e) = encode_frame(&mut first, msg) {
            panic!("a decoded frame does not encode again: {e}");
        }
        let again: T = match read_frame(&mut first.as_slice(), &mut Vec::new()) {
            Ok(Some(again)) => again,
            other => panic!("a re-encoded frame does not decode: {:?}", other.err()),
        };
        let mut second = Vec::new();
        if let Err(e) = encode_frame(&mut second, &again) {
            panic!("a re-decoded frame does not encode again: {e}");
        }
        assert_eq!(first, second, "a frame changes across encode and decode");
    }

    impl ToWorker {
        fn kind(&self) -> &'static str {
            match self {
                ToWorker::Load(_) => "Load",
                ToWorker::Rename(_) => "Rename",
                ToWorker::Grant(_) => "Grant",
                ToWorker::Call { .. } => "Call",
                ToWorker::CallBatch { .. } => "CallBatch",
                ToWorker::Shutdown => "Shutdown",
                ToWorker::ObjectReply { .. } => "ObjectReply",
                ToWorker::ObjectRefused { .. } => "ObjectRefused",
                ToWorker::Attached { .. } => "Attached",
            }
        }
    }

    impl FromWorker {
        fn kind(&self) -> &'static str {
            match self {
                FromWorker::Ready { .. } => "Ready",
                FromWorker::LoadFailed(_) => "LoadFailed",
                FromWorker::Output { .. } => "Output",
                FromWorker::Done { .. } => "Done",
                FromWorker::BatchPart { .. } => "BatchPart",
                FromWorker::BatchDone { .. } => "BatchDone",
                FromWorker::InstanceLost => "InstanceLost",
                FromWorker::Alive => "Alive",
                FromWorker::Object { .. } => "Object",
                FromWorker::ObjectSync { .. } => "ObjectSync",
                FromWorker::Attach { .. } => "Attach",
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_more_items_than_any_limit_allows_does_not_decode() {
        use wasmpool_objects::wire::MAX_REQUEST_ITEMS;
        let frame_of = |items: usize| {
            let mut wire = Vec::new();
            let msg = FromWorker::Object {
                req: 1,
                target: Handle { id: 2, token: 3 },
                request: Request::ListExtend(vec![Vec::new(); items]),
                timeout_ms: None,
                posted: false,
            };
            encode_frame(&mut wire, &msg).unwrap();
            wire
        };
        // One byte per empty item on the wire, far more in memory once decoded: refused from
        // the announced count, before anything is allocated for the items.
        let over = frame_of(MAX_REQUEST_ITEMS + 1);
        let err = read_frame::<_, FromWorker>(&mut over.as_slice(), &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        let at = frame_of(MAX_REQUEST_ITEMS);
        let ok = read_frame::<_, FromWorker>(&mut at.as_slice(), &mut Vec::new()).unwrap();
        assert!(matches!(
            ok,
            Some(FromWorker::Object { request: Request::ListExtend(items), .. })
                if items.len() == MAX_REQUEST_ITEMS
        ));
    }

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
    fn trailing_bytes_are_an_error() {
        let mut wire = Vec::new();
        write_frame(&mut wire, &ToWorker::Shutdown).unwrap();
        wire[0] += 1;
        wire.push(0);
        let mut buf = Vec::new();
        let err = read_frame::<_, ToWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("trailing bytes"), "{err}");
    }

    #[test]
    fn truncated_frame_is_an_error() {
        let mut wire = 10u32.to_le_bytes().to_vec();
        wire.extend_from_slice(&[1, 2]);
        let mut buf = Vec::new();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("cut short"), "{err}");
    }

    #[test]
    fn end_of_file_is_clean_between_frames_and_an_error_inside_a_header() {
        let mut buf = Vec::new();
        let empty: &[u8] = &[];
        assert!(matches!(
            read_frame::<_, FromWorker>(&mut &*empty, &mut buf),
            Ok(None)
        ));
        for cut in 1..4 {
            let wire = 10u32.to_le_bytes();
            let err = read_frame::<_, FromWorker>(&mut &wire[..cut], &mut buf).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
            assert!(err.to_string().contains("header cut short"), "{err}");
        }
    }

    #[test]
    fn max_frame_header_allocates_only_what_arrives() {
        let mut wire = (MAX_FRAME as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[0; 100]);
        let mut buf = Vec::new();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            buf.capacity() <= READ_CHUNK,
            "{} bytes held",
            buf.capacity()
        );

        let wire = (MAX_FRAME as u32 + 1).to_le_bytes();
        let err = read_frame::<_, FromWorker>(&mut wire.as_slice(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn frames_larger_than_a_read_chunk_round_trip() {
        let data: Vec<u8> = (0..3 * READ_CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let mut wire = Vec::new();
        let msg = FromWorker::Output {
            id: 9,
            stream: Stream::Stderr,
            data: data.clone(),
        };
        write_frame(&mut wire, &msg).unwrap();
        write_frame(&mut wire, &FromWorker::InstanceLost).unwrap();
        let mut reader = wire.as_slice();
        let mut buf = Vec::new();
        match read_frame::<_, FromWorker>(&mut reader, &mut buf).unwrap() {
            Some(FromWorker::Output {
                id: 9,
                stream: Stream::Stderr,
                data: back,
            }) => assert!(back == data, "the data changed"),
            other => panic!("unexpected {other:?}"),
        }
        let next = read_frame::<_, FromWorker>(&mut reader, &mut buf).unwrap();
        assert!(matches!(next, Some(FromWorker::InstanceLost)));
        assert!(
            read_frame::<_, FromWorker>(&mut reader, &mut buf)
                .unwrap()
                .is_none()
        );
    }

    /// Valid streams with every kind of frame in each direction, with every optional part.
    fn sample_streams() -> (Vec<u8>, Vec<u8>) {
        use wasmpool_objects::wire::{Handle, ObjectError, Request, Response};
        let limits = Limits::default()
            .timeout(std::time::Duration::from_millis(1500))
            .memory_mib(64);
        let to_worker = [
            ToWorker::Load(Load {
                artifact: "/cache/artifacts/0123.cwasm".into(),
                name: "PoolWorker-1".into(),
                metered: true,
                stack_bytes: 256 << 10,
                init_limits: Limits::default().timeout(Duration::from_secs(2)),
            }),
            ToWorker::Rename("Process-2".into()),
            ToWorker::Grant(
                crate::grants::Grants::new()
                    .dir_read_only("/srv/data", "/data")
                    .env("GREETING", "hello"),
            ),
            ToWorker::Call {
                id: 300,
                task: "square".into(),
                args: vec![0x91, 7],
                exit_after: true,
                limits,
            },
            ToWorker::CallBatch {
                id: u64::MAX,
                task: "add".into(),
                items: [vec![0x92, 1, 2], vec![], vec![0x91, 0xcc, 0xff]]
                    .into_iter()
                    .collect(),
                limits: Limits::default(),
            },
            ToWorker::ObjectReply {
                req: 1,
                result: Ok(Response::Entries(vec![(vec![1], vec![2, 3])])),
                postable: false,
            },
            ToWorker::ObjectReply {
                req: 2,
                result: Err(ObjectError::Closed("gone".into())),
                postable: true,
            },
            ToWorker::ObjectRefused {
                req: 3 | (1 << 63),
                target: Handle { id: 4, token: 5 },
                error: ObjectError::Closed("the queue is closed".into()),
            },
            ToWorker::Shutdown,
        ];
        let from_worker = [
            FromWorker::Ready {
                tasks: vec!["square".into(), "add".into()],
            },
            FromWorker::LoadFailed("no such task".into()),
            FromWorker::Output {
                id: 3,
                stream: Stream::Stdout,
                data: b"hello\n".to_vec(),
            },
            FromWorker::Done {
                id: 3,
                outcome: Outcome::Ok(vec![0x31]),
                fuel: Some(1_234),
                micros: 56,
            },
            FromWorker::BatchPart {
                id: 4,
                answers: {
                    let mut a = crate::packed::BatchAnswers::default();
                    a.push(Outcome::Ok(vec![0x01, 0x02]));
                    a.push(Outcome::Limit("too large".into()));
                    a
                },
            },
            FromWorker::BatchDone {
                id: 4,
                fuel: None,
                micros: 1_000_000,
                answers: {
                    let mut a = crate::packed::BatchAnswers::default();
                    for outcome in [
                        Outcome::Ok(vec![0x07]),
                        Outcome::Failed("boom".into()),
                        Outcome::UnknownTask,
                        Outcome::BadArgs("not an int".into()),
                        Outcome::Trap("unreachable".into()),
                        Outcome::Limit("time limit".into()),
                    ] {
                        a.push(outcome);
                    }
                    a
                },
            },
            FromWorker::InstanceLost,
            FromWorker::Alive,
            FromWorker::Object {
                req: 5,
                target: Handle {
                    id: 8,
                    token: 0xdead_beef,
                },
                request: Request::DictCompareAndSwap {
                    key: vec![0xa1, b'k'],
                    expected: Some(vec![1]),
                    new: vec![2],
                },
                timeout_ms: Some(250),
                posted: true,
            },
            FromWorker::ObjectSync { req: 6 },
        ];
        let mut a = Vec::new();
        for msg in &to_worker {
            encode_frame(&mut a, msg).unwrap();
        }
        let mut b = Vec::new();
        for msg in &from_worker {
            encode_frame(&mut b, msg).unwrap();
        }
        (a, b)
    }

    /// xorshift64: deterministic pseudo-random numbers, without a dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n.max(1) as u64) as usize
        }

        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// One to four random edits of `input`: bit flips, overwritten, inserted and removed
    /// bytes, a cut, a repeated slice, a forged length header.
    fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
        for _ in 0..1 + rng.below(4) {
            let at = rng.below(input.len());
            match rng.below(7) {
                0 if !input.is_empty() => input[at] ^= 1 << rng.below(8),
                1 if !input.is_empty() => input[at] = rng.next() as u8,
                2 => input.insert(at.min(input.len()), rng.next() as u8),
                3 if !input.is_empty() => {
                    input.remove(at);
                }
                4 => input.truncate(at),
                5 if !input.is_empty() => {
                    let end = (at + 1 + rng.below(16)).min(input.len());
                    let slice = input[at..end].to_vec();
                    input.splice(at..at, slice);
                }
                _ if input.len() >= at + 4 => {
                    let len = match rng.below(3) {
                        0 => rng.below(64) as u32,
                        1 => rng.below(MAX_FRAME + 1) as u32,
                        _ => rng.next() as u32,
                    };
                    input[at..at + 4].copy_from_slice(&len.to_le_bytes());
                }
                _ => {}
            }
        }
        input
    }

    /// What the fuzz target does, over a few thousand deterministic inputs, so that CI runs
    /// it: every input decodes or fails cleanly, never panics, and the frame buffer never
    /// holds much more than the input.
    #[test]
    fn random_and_mutated_frames_fail_cleanly() {
        let (to_worker, from_worker) = sample_streams();
        // The samples themselves decode whole.
        let whole = fuzzing::read_to_worker(&to_worker);
        assert_eq!(whole.error, None);
        assert_eq!(whole.kinds.len(), 9);
        let whole = fuzzing::read_from_worker(&from_worker);
        assert_eq!(whole.error, None);
        assert_eq!(whole.kinds.len(), 10);

        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut kinds = std::collections::BTreeSet::new();
        let (mut frames, mut errors) = (0, 0);
        for i in 0..8000 {
            let input = match i % 4 {
                // Noise.
                0 => {
                    let n = rng.below(64);
                    rng.bytes(n)
                }
                // A noise body behind a header that fits it, to reach the decoder.
                1 => {
                    let body = {
                        let n = rng.below(48);
                        rng.bytes(n)
                    };
                    let mut input = (body.len() as u32).to_le_bytes().to_vec();
                    input.extend_from_slice(&body);
                    input
                }
                2 => mutate(&mut rng, to_worker.clone()),
                _ => mutate(&mut rng, from_worker.clone()),
            };
            for decoded in [
                fuzzing::read_to_worker(&input),
                fuzzing::read_from_worker(&input),
            ] {
                assert!(
                    decoded.buffer_capacity <= 2 * (input.len() + READ_CHUNK),
                    "input {i}: {} bytes held for {} bytes of input",
                    decoded.buffer_capacity,
                    input.len()
                );
                frames += decoded.kinds.len();
                errors += usize::from(decoded.error.is_some());
                kinds.extend(decoded.kinds);
            }
            let body = input.get(4..).unwrap_or_default();
            kinds.extend(fuzzing::decode_to_worker(body));
            kinds.extend(fuzzing::decode_from_worker(body));
        }
        // The inputs reached the decoders, both ways, not just the length check.
        assert!(frames > 5000, "only {frames} frames decoded");
        assert!(errors > 4000, "only {errors} inputs failed");
        for kind in [
            "Load",
            "Rename",
            "Grant",
            "Call",
            "CallBatch",
            "Shutdown",
            "ObjectReply",
            "ObjectRefused",
            "Ready",
            "LoadFailed",
            "Output",
            "Done",
            "BatchPart",
            "BatchDone",
            "InstanceLost",
            "Alive",
            "Object",
            "ObjectSync",
        ] {
            assert!(kinds.contains(kind), "no {kind} frame decoded: {kinds:?}");
        }
    }
}
