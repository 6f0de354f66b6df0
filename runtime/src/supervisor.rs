//! Watching a running worker: one reader thread per worker turns its frames into events and,
//! at end of file (or a malformed frame, which kills the worker), reaps it with `waitpid`
//! and reports how it ended. Nothing waits on a dead worker: its exit is always reported.

use std::io;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::broker::{Owner, Refusals, Responder, reply_attached, reply_to_worker};
use crate::fork_client::ForkServer;
use crate::protocol::{FromWorker, ToWorker, WATCHDOG_EXIT, WorkerReader, read_frame, write_frame};
use crate::spawn::{ReadyWorker, WorkerProcess};
use wasmpool_objects::wire::Response;

/// How long a worker whose last frame was cut short has to exit before it is killed.
const CUT_FRAME_GRACE: Duration = Duration::from_millis(500);

/// Whether `child` exits within `grace` (it is not reaped).
fn exits_within(child: &WorkerProcess, grace: Duration) -> bool {
    let deadline = std::time::Instant::now() + grace;
    loop {
        if child.has_exited() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Receives what a worker says and how it ends.
pub(crate) trait WorkerEvents: Send + Sync + 'static {
    /// A frame from the worker, in order. `more` says whether further frames are already
    /// buffered (so work done per batch, like dispatching, can wait for the last of them).
    fn on_message(&self, pid: u32, msg: FromWorker, more: bool);
    /// The worker is gone and reaped. `protocol_error` is set when it broke the protocol: a
    /// malformed frame, or a frame cut short without a signal ending it.
    fn on_exit(&self, pid: u32, status: Option<ExitStatus>, protocol_error: Option<String>);
}

/// The host's handle on a running worker.
#[derive(Debug)]
pub(crate) struct WorkerHandle {
    pub pid: u32,
    writer: Arc<Mutex<UnixStream>>,
    reaped: Arc<AtomicBool>,
    /// The fork server whose child the worker is, if it was forked.
    server: Option<Arc<ForkServer>>,
}

impl WorkerHandle {
    /// Starts watching `worker`, reporting to `events`.
    pub fn attach(worker: ReadyWorker, events: Arc<dyn WorkerEvents>) -> io::Result<WorkerHandle> {
        let (pid, sock, mut child, _tasks, runtime) = worker.into_parts();
        let broker = runtime.broker().clone();
        let server = match &child {
            WorkerProcess::Forked { server, .. } => Some(server.clone()),
            WorkerProcess::Exec(_) => None,
        };
        let reader = match sock.try_clone() {
            Ok(r) => WorkerReader::new(r, runtime.frame_stall()),
            Err(e) => {
                child.kill();
                child.wait();
                return Err(e);
            }
        };
        let reaped = Arc::new(AtomicBool::new(false));
        let reaped2 = reaped.clone();
        let writer = Arc::new(Mutex::new(sock));
        let replies = writer.clone();
        let refused = Arc::new(Refusals::default());
        // The reader and the child go to the thread once it exists: if it cannot be made
        // (the host is out of threads or memory), they are still here, so the worker is
        // killed and reaped and the caller gets the error, instead of a worker left behind.
        let (hand_over, handed) = std::sync::mpsc::sync_channel::<(WorkerReader, WorkerProcess)>(1);
        let spawned = std::thread::Builder::new()
            .name(format!("wasmpool-worker-{pid}"))
            .spawn(move || {
                let Ok((mut reader, mut child)) = handed.recv() else {
                    return;
                };
                let mut buf = Vec::new();
                // Set when the last frame was cut short and the worker then exited within the
                // grace (by itself, or killed meanwhile by whoever owns it).
                let mut died_mid_frame = false;
                let protocol_error = loop {
                    match read_frame::<_, FromWorker>(&mut reader, &mut buf) {
                        Ok(Some(FromWorker::Object {
                            req,
                            target,
                            request,
                            timeout_ms,
                            posted,
                        })) => {
                            let writer = replies.clone();
                            let responder = if posted {
                                if refused.refused_again(&writer, req, target) {
                                    continue;
                                }
                                Responder::Posted {
                                    writer,
                                    req,
                                    target,
                                    refused: refused.clone(),
                                }
                            } else {
                                refused.clear(target);
                                Responder::Worker {
                                    writer,
                                    req,
                                    postable: false,
                                }
                            };
                            broker.submit(
                                Owner::Pid(pid),
                                target,
                                request,
                                timeout_ms.map(Duration::from_millis),
                                responder,
                            )
                        }
                        // Every request before it was answered (or, posted and accepted,
                        // needs no answer): the sync's answer comes after all of theirs.
                        Ok(Some(FromWorker::ObjectSync { req })) => {
                            reply_to_worker(&replies, req, Ok(Response::Unit), false)
                        }
                        Ok(Some(FromWorker::InstanceLost)) => broker.worker_exited(pid),
                        Ok(Some(FromWorker::Attach { req, target })) => {
                            reply_attached(&replies, req, broker.attach(pid, target))
                        }
                        Ok(Some(msg)) => {
                            let more = reader.has_buffered();
                            events.on_message(pid, msg, more)
                        }
                        Ok(None) => break None,
                        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break None,
                        // A frame cut short by the end of the stream: the worker is gone
                        // or going. Killed by a signal mid-write, it is reported by that
                        // signal; anything else broke the protocol.
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            died_mid_frame = exits_within(&child, CUT_FRAME_GRACE);
                            if !died_mid_frame {
                                child.kill();
                            }
                            break Some(e.to_string());
                        }
                        Err(e) => {
                            child.kill();
                            break Some(e.to_string());
                        }
                    }
                };
                // What the worker held is given back before anyone hears it is gone. An
                // executed worker is reaped only after this, so its pid cannot have been
                // reused yet; a forked one is reaped by its fork server, and for its pid to
                // come back in between, the kernel would have to go round all of them.
                broker.worker_exited(pid);
                let status = child.wait();
                let signalled = status.is_some_and(|s| s.signal().is_some());
                let protocol_error = protocol_error.filter(|_| !(died_mid_frame && signalled));
                reaped2.store(true, Ordering::SeqCst);
                events.on_exit(pid, status, protocol_error);
            });
        if let Err(e) = spawned {
            child.kill();
            child.wait();
            return Err(io::Error::new(
                e.kind(),
                format!("cannot start a thread to watch worker {pid}: {e}"),
            ));
        }
        if let Err(std::sync::mpsc::SendError((_, mut child))) = hand_over.send((reader, child)) {
            // The thread is gone before it was given the worker (it cannot be, but if it
            // were, the worker must not outlive its handle).
            child.kill();
            child.wait();
            return Err(io::Error::other(format!(
                "the thread watching worker {pid} ended before it started"
            )));
        }
        Ok(WorkerHandle {
            pid,
            writer,
            reaped,
            server,
        })
    }

    /// Sends a frame to the worker.
    pub fn send(&self, msg: &ToWorker) -> io::Result<()> {
        let mut w = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("worker writer poisoned"))?;
        write_frame(&mut *w, msg)
    }

    /// Writes already-encoded frames to the worker in one write.
    pub fn send_encoded(&self, frames: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut w = self
            .writer
            .lock()
            .map_err(|_| io::Error::other("worker writer poisoned"))?;
        w.write_all(frames)
    }

    /// Sends `signal` to the worker, unless it has already been reaped.
    pub fn signal(&self, signal: i32) {
        if self.reaped.load(Ordering::SeqCst) {
            return;
        }
        match &self.server {
            Some(server) => server.signal(self.pid, signal),
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            None => unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            },
        }
    }
}

/// Python's `exitcode` for a finished worker: its exit status, or minus the signal that
/// killed it.
pub(crate) fn exitcode(status: Option<ExitStatus>) -> i32 {
    match status {
        // Stopped by its watchdog after reporting the task's time limit: a task failure.
        Some(s) if s.code() == Some(WATCHDOG_EXIT) => 1,
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => code,
            (None, Some(sig)) => -sig,
            (None, None) => 1,
        },
        None => 1,
    }
}

/// "was killed by signal 9 (SIGKILL)", "exited with status 3", … for error messages.
pub(crate) fn describe_exit(status: Option<ExitStatus>) -> (Option<i32>, String) {
    match status.and_then(|s| s.signal()) {
        Some(sig) => (
            Some(sig),
            format!("was killed by signal {sig} ({})", signal_name(sig)),
        ),
        None => match status.and_then(|s| s.code()) {
            Some(code) => (None, format!("exited with status {code} before answering")),
            None => (None, "vanished".to_string()),
        },
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGINT => "SIGINT",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    }
}
