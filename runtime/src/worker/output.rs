//! The guest's stdout and stderr: every write becomes an `Output` frame to the host, at once,
//! so output from concurrent workers interleaves as it happens (as it does in Python). Inside
//! a batch the worker may hold it back until the items that wrote it are known to have
//! finished (see [`Channel::hold_output`]).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::protocol::{CallEvent, FromWorker, Stream, encode_frame};

/// The worker's half of the socket, shared by the main loop and the guest's output streams.
///
/// Answers are queued and written together when the worker runs out of queued work (or the
/// buffer grows large), so a burst of short tasks costs one write, not one per task. Guest
/// output is written at once, after whatever is queued, so it streams live and in order.
#[derive(Debug)]
pub(crate) struct Channel {
    writer: Mutex<Writer>,
    /// The call currently running, so output can be attributed to it.
    pub current_call: AtomicU64,
    /// Bytes the running call may still write (its output limit).
    output_left: AtomicU64,
    /// The running call's output limit.
    output_limit: AtomicU64,
    /// Set when the running call tried to write past its output limit.
    output_exceeded: AtomicBool,
    /// When the channel was made, and, in nanoseconds after that, when it last wrote.
    born: Instant,
    wrote_at: AtomicU64,
    /// Per stream: whether the running call's output so far ends inside a line.
    open_line: [AtomicBool; 2],
}

#[derive(Debug)]
struct Writer {
    sock: UnixStream,
    pending: Vec<u8>,
    /// Output frames held back (while `Some`): see [`Channel::hold_output`].
    held: Option<Vec<u8>>,
    /// Holding is paused: output goes out at once (the item writing it will not run again).
    hold_paused: bool,
}

/// Queued answers are written once they reach this size, even if more work is queued.
const FLUSH_AT: usize = 256 * 1024;

impl Channel {
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            writer: Mutex::new(Writer {
                sock,
                pending: Vec::new(),
                held: None,
                hold_paused: false,
            }),
            current_call: AtomicU64::new(0),
            output_left: AtomicU64::new(u64::MAX),
            output_limit: AtomicU64::new(u64::MAX),
            output_exceeded: AtomicBool::new(false),
            born: Instant::now(),
            wrote_at: AtomicU64::new(0),
            open_line: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// How long since the channel last wrote to the host.
    pub fn quiet_for(&self) -> Duration {
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(now.saturating_sub(self.wrote_at.load(Ordering::Relaxed)))
    }

    fn note_write(&self) {
        let now = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.wrote_at.store(now, Ordering::Relaxed);
    }

    /// Gives the next call `limit` bytes of output.
    pub fn arm_output(&self, limit: u64) {
        self.output_limit.store(limit, Ordering::Relaxed);
        self.output_left.store(limit, Ordering::Relaxed);
        self.output_exceeded.store(false, Ordering::Relaxed);
    }

    /// Gives the running call its whole output limit again: inside a batch, the items after
    /// a progress report have a limit of their own.
    pub fn rearm_output(&self) {
        let limit = self.output_limit.load(Ordering::Relaxed);
        self.output_left.store(limit, Ordering::Relaxed);
    }

    /// Whether the running call was stopped for writing past its output limit.
    pub fn output_exceeded(&self) -> bool {
        self.output_exceeded.load(Ordering::Relaxed)
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, Writer>> {
        self.writer
            .lock()
            .map_err(|_| io::Error::other("worker channel poisoned"))
    }

    /// Queues a frame for the next flush.
    pub fn queue(&self, msg: &FromWorker) -> io::Result<()> {
        let mut w = self.lock()?;
        encode_frame(&mut w.pending, msg)?;
        if w.pending.len() >= FLUSH_AT {
            self.flush_locked(&mut w)?;
        }
        Ok(())
    }

    /// Writes a frame now, after any queued ones.
    pub fn send(&self, msg: &FromWorker) -> io::Result<()> {
        let mut w = self.lock()?;
        encode_frame(&mut w.pending, msg)?;
        self.flush_locked(&mut w)
    }

    /// Writes whatever is queued and exits the process with `code`, holding the writer
    /// throughout: the answers of calls finished before are not lost, and no frame another
    /// thread is writing is cut in the middle.
    pub fn flush_and_exit(&self, code: i32) -> ! {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.flush_locked(&mut w);
        // SAFETY: _exit is always safe to call; the writer stays locked until the process
        // is gone, so nothing is written after this.
        unsafe { libc::_exit(code) }
    }

    /// Writes whatever is queued.
    pub fn flush(&self) -> io::Result<()> {
        self.flush_locked(&mut *self.lock()?)
    }

    fn flush_locked(&self, w: &mut Writer) -> io::Result<()> {
        if w.pending.is_empty() {
            return Ok(());
        }
        self.note_write();
        flush(w)
    }

    /// Holds the guest's output back from now on, until [`release_output`] or
    /// [`end_hold`]: inside a batch, output written by items that may be run again (after a
    /// trap later in the batch) is sent only once they are known to have finished, so a
    /// re-run never repeats it. At most the output limit is held.
    ///
    /// [`release_output`]: Channel::release_output
    /// [`end_hold`]: Channel::end_hold
    pub fn hold_output(&self) {
        if let Ok(mut w) = self.lock() {
            w.held = Some(Vec::new());
            w.hold_paused = false;
        }
    }

    /// Queues what is held and lets output go out at once until [`resume_hold`]: the item
    /// writing now will not run again.
    ///
    /// [`resume_hold`]: Channel::resume_hold
    pub fn pause_hold(&self) {
        self.release_output();
        if let Ok(mut w) = self.lock()
            && w.held.is_some()
        {
            w.hold_paused = true;
        }
    }

    /// Holds output back again after [`pause_hold`](Channel::pause_hold).
    pub fn resume_hold(&self) {
        if let Ok(mut w) = self.lock() {
            w.hold_paused = false;
        }
    }

    /// Queues the output held so far (its items finished); holding goes on.
    pub fn release_output(&self) {
        if let Ok(mut w) = self.lock() {
            let w = &mut *w;
            if let Some(held) = w.held.as_mut() {
                w.pending.append(held);
            }
        }
    }

    /// Stops holding output back: what is held is queued (`keep`), or dropped, because the
    /// items that wrote it run again and write it again.
    pub fn end_hold(&self, keep: bool) {
        if let Ok(mut w) = self.lock() {
            let w = &mut *w;
            w.hold_paused = false;
            if let Some(mut held) = w.held.take()
                && keep
            {
                w.pending.append(&mut held);
            }
        }
    }

    /// Call `id` ended: for each stream whose output ends inside a line, an empty `Output`
    /// frame tells the host that the line is over, so a host holding the line back (to tag
    /// it) writes it now, with this call's task, rather than joining it to the next call's.
    pub fn end_lines(&self, id: u64) -> io::Result<()> {
        for stream in [Stream::Stdout, Stream::Stderr] {
            if self.open_line[stream as usize].swap(false, Ordering::Relaxed) {
                self.send_output(&FromWorker::Call(CallEvent::Output {
                    id,
                    stream,
                    data: Vec::new(),
                }))?;
            }
        }
        Ok(())
    }

    /// Writes an output frame now, after any queued ones, or holds it back.
    fn send_output(&self, msg: &FromWorker) -> io::Result<()> {
        let mut w = self.lock()?;
        let paused = w.hold_paused;
        if let Some(held) = w.held.as_mut().filter(|_| !paused) {
            return encode_frame(held, msg);
        }
        encode_frame(&mut w.pending, msg)?;
        self.flush_locked(&mut w)
    }
}

fn flush(w: &mut Writer) -> io::Result<()> {
    if w.pending.is_empty() {
        return Ok(());
    }
    let Writer { sock, pending, .. } = w;
    let result = sock.write_all(pending);
    pending.clear();
    result
}

/// One of the guest's output streams.
#[derive(Debug, Clone)]
pub(crate) struct GuestOutput {
    pub stream: Stream,
    pub channel: Arc<Channel>,
}

impl GuestOutput {
    /// Sends `data` to the host, as far as the call's output limit allows; past it, the
    /// guest is stopped with a trap (one task runs at a time, so plain loads and stores do).
    fn forward(&self, data: &[u8]) -> StreamResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let left = self.channel.output_left.load(Ordering::Relaxed);
        let fits = usize::try_from(left).unwrap_or(usize::MAX).min(data.len());
        if fits > 0 {
            let id = self.channel.current_call.load(Ordering::Relaxed);
            self.channel
                .send_output(&FromWorker::Call(CallEvent::Output {
                    id,
                    stream: self.stream,
                    data: data[..fits].to_vec(),
                }))
                .map_err(|e| StreamError::LastOperationFailed(e.into()))?;
            self.channel
                .output_left
                .store(left - fits as u64, Ordering::Relaxed);
            self.channel.open_line[self.stream as usize]
                .store(data[fits - 1] != b'\n', Ordering::Relaxed);
        }
        if fits < data.len() {
            self.channel.output_exceeded.store(true, Ordering::Relaxed);
            return Err(StreamError::trap("output limit reached"));
        }
        Ok(())
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.forward(&bytes)
    }
    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }
    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.forward(buf)
                .map(|()| buf.len())
                .map_err(|e| io::Error::other(e.to_string())),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
