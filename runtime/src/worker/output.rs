//! The guest's stdout and stderr: every write becomes an `Output` frame to the host, at once,
//! so output from concurrent workers interleaves as it happens (as it does in Python).

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use crate::protocol::{FromWorker, Stream, encode_frame};

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
}

#[derive(Debug)]
struct Writer {
    sock: UnixStream,
    pending: Vec<u8>,
}

/// Queued answers are written once they reach this size, even if more work is queued.
const FLUSH_AT: usize = 256 * 1024;

impl Channel {
    pub fn new(sock: UnixStream) -> Self {
        Channel {
            writer: Mutex::new(Writer {
                sock,
                pending: Vec::new(),
            }),
            current_call: AtomicU64::new(0),
        }
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
            flush(&mut w)?;
        }
        Ok(())
    }

    /// Writes a frame now, after any queued ones.
    pub fn send(&self, msg: &FromWorker) -> io::Result<()> {
        let mut w = self.lock()?;
        encode_frame(&mut w.pending, msg)?;
        flush(&mut w)
    }

    /// Writes whatever is queued.
    pub fn flush(&self) -> io::Result<()> {
        flush(&mut *self.lock()?)
    }
}

fn flush(w: &mut Writer) -> io::Result<()> {
    if w.pending.is_empty() {
        return Ok(());
    }
    let Writer { sock, pending } = w;
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
    fn forward(&self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let id = self.channel.current_call.load(Ordering::Relaxed);
        self.channel.send(&FromWorker::Output {
            id,
            stream: self.stream,
            data: data.to_vec(),
        })
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
            .map_err(|e| StreamError::LastOperationFailed(e.into()))
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
        Poll::Ready(self.forward(buf).map(|()| buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
