//! The worker process: the same binary, re-executed in a hidden mode by the host, or
//! forked from a fork server that is (see [`crate::forkserver`]).
//!
//! It maps the precompiled component the host names, keeps one instance alive across tasks
//! (state persists, as in a Python worker), and discards and rebuilds it after a trap. It
//! never outlives the host: the kernel kills it when its parent dies (`PR_SET_PDEATHSIG`,
//! set before exec, or right after the fork, where the worker then checks that its server
//! is still there), an executed worker's watchdog thread re-checks the parent every
//! 100 ms, and end-of-file on its socket makes it exit. A fork server leaves when its
//! socket to the host closes, and is killed with the host the same way.

mod fork_server;
mod instance;
mod objects;
mod output;
pub(crate) mod packed_batch;
mod progress;
mod sandbox;
pub(crate) mod state;
mod watchdog;

use std::io::{self, BufReader};
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmpool_objects::wire::ObjectError;

use crate::bindings::TaskModulePre;
use crate::fdpass::FdReader;
use crate::grants::Grants;
use crate::protocol::{
    CallEvent, CallRequest, Control, FromWorker, Load, ObjectAnswer, ObjectCall, Outcome, Status,
    ToWorker, read_frame,
};

use self::instance::Loaded;
use self::objects::{ObjectClient, Reply};
use self::output::Channel;
use self::progress::{BatchProgress, cap_result};
use self::state::{InstanceState, ProcessIdentity};
use self::watchdog::Watchdog;

use crate::launch::{FORKSERVER_ARG, PARENT_ENV, WORKER_ARG, WORKER_FD};
/// Native stack for the host's side of a call, below the wasm stack a task may use.
const HOST_STACK: usize = 8 << 20;

/// If this process was started as a wasmpool worker, serves as one and exits; otherwise
/// returns, and remembers that this binary can be re-executed as a worker.
///
/// Programs that embed wasmpool call this first thing in `main`, so the host can start its
/// workers by re-executing the program itself (like Python's `freeze_support()`). Without
/// it, workers run from the `wasmpool` binary found beside the program or on `PATH`.
///
/// ```no_run
/// // First thing in `main`:
/// wasmpool::run_worker_if_requested();
/// // ... then the program, using wasmpool::Process ...
/// ```
pub fn run_worker_if_requested() {
    if std::env::args_os().nth(1).is_some_and(|a| a == WORKER_ARG) {
        std::process::exit(serve());
    }
    crate::spawn::mark_self_as_worker();
}

/// Serves as a worker (or, with the fork server argument, as a fork server) on fd 3 until
/// told to stop; returns the exit status.
pub(crate) fn serve() -> i32 {
    // Before anything here opens a descriptor: what the host inherited without
    // close-on-exec stops here, for this process and every worker it forks.
    sandbox::close_inherited_fds();
    let parent: u32 = std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    keep_heap_memory();
    // Best effort: a kernel without seccomp runs the worker without the filter. A fork
    // server's workers inherit it.
    let _ = sandbox::restrict_syscalls();
    if std::env::args_os()
        .nth(2)
        .is_some_and(|a| a == FORKSERVER_ARG)
    {
        return fork_server::serve(parent);
    }
    // A worker (a fork server's workers do this once forked): no new process, no signal
    // to another, and (where the kernel has Landlock) no file under /proc, /sys or /dev.
    let _ = sandbox::restrict_worker();
    let _ = sandbox::restrict_files();
    start_parent_watchdog(parent);
    // SAFETY: the host passes this process one end of a socketpair as fd 3, and nothing else
    // in this process owns that descriptor.
    let sock = unsafe { UnixStream::from_raw_fd(WORKER_FD) };
    on_tasks_thread(move || serve_on(sock, parent, None))
}

/// Serves as a worker forked by a fork server for the host `host`, with the module already
/// prepared; returns the exit status. It runs on the thread it was forked on, whose stack
/// is a task's (see [`tasks_stack_size`]). (No parent watchdog: the worker armed its death
/// signal and then saw its server alive, so the signal cannot be missed.)
fn serve_forked(sock: UnixStream, host: u32, load: Load, pre: TaskModulePre<InstanceState>) -> i32 {
    serve_on(sock, host, Some((load, pre))).unwrap_or(1)
}

/// The stack of the thread tasks run on: the largest wasm stack limit a task may ask for
/// plus the host's frames below it. Untouched stack pages cost no memory.
pub(super) fn tasks_stack_size() -> usize {
    let stack = usize::try_from(crate::Limits::MAX_STACK_BYTES).unwrap_or(usize::MAX);
    stack.saturating_add(HOST_STACK)
}

/// Runs `serve` on the thread tasks run on, whatever stack the main thread was given.
fn on_tasks_thread(serve: impl FnOnce() -> io::Result<i32> + Send + 'static) -> i32 {
    std::thread::Builder::new()
        .name("tasks".into())
        .stack_size(tasks_stack_size())
        .spawn(move || serve().unwrap_or(1))
        .map_or(1, |t| t.join().unwrap_or(1))
}

fn start_parent_watchdog(parent: u32) {
    let _ = std::thread::Builder::new()
        .name("parent-watchdog".into())
        .spawn(move || {
            loop {
                // SAFETY: getppid has no preconditions.
                let ppid = unsafe { libc::getppid() } as u32;
                if parent != 0 && ppid != parent {
                    // The host is gone: leave at once, without running any destructors.
                    // SAFETY: _exit is always safe to call.
                    unsafe { libc::_exit(1) };
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
}

/// Serves tasks on `sock` for the host `parent`: the module named by the first frame, or
/// the one a fork server prepared.
fn serve_on(
    sock: UnixStream,
    parent: u32,
    prepared: Option<(Load, TaskModulePre<InstanceState>)>,
) -> io::Result<i32> {
    let mut reader = BufReader::new(FdReader::new(sock.try_clone()?));
    let channel = Arc::new(Channel::new(sock));
    let mut buf = Vec::new();

    let (mut load, pre) = match prepared {
        Some((load, pre)) => (load, Some(pre)),
        None => match read_frame::<_, ToWorker>(&mut reader, &mut buf)? {
            Some(ToWorker::Control(Control::Load(load))) => (load, None),
            _ => return Ok(1),
        },
    };
    // The socket is always drained by a reader thread, even while a task runs: the host may
    // queue work ahead (pipelining) without ever blocking on a full socket buffer, and the
    // host's own reads and writes can never wait on each other. It starts before the module
    // is instantiated, so that its start overlaps with that work rather than delaying the
    // first call; what it reads waits in `rx` until the worker is ready.
    let (reply_tx, reply_rx) = std::sync::mpsc::channel();
    let (tx, rx) = std::sync::mpsc::channel::<ToWorker>();
    let skips = Arc::new(Skips::default());
    let skipped = skips.clone();
    let exit_channel = channel.clone();
    std::thread::Builder::new()
        .name("frames".into())
        .spawn(move || {
            let mut buf = Vec::new();
            while let Ok(Some(msg)) = read_frame::<_, ToWorker>(&mut reader, &mut buf) {
                // Replies from the broker go to the task blocked on them, past queued work.
                if let ToWorker::Object(ObjectAnswer::Reply {
                    req,
                    result,
                    postable,
                }) = msg
                {
                    let _ = reply_tx.send(Reply::Answer {
                        req,
                        result,
                        postable,
                    });
                } else if let ToWorker::Control(Control::Skip(ids)) = msg {
                    // Noted at once, ahead of the calls queued before it; the running call
                    // is stopped with the process (its instance is not to be trusted
                    // midway, and a guest in a host call cannot be interrupted).
                    if skipped.add(ids) {
                        // The answers of the calls before it (other work) go out first.
                        exit_channel.flush_and_exit(crate::protocol::CANCELLED_EXIT);
                    }
                } else if let ToWorker::Object(ObjectAnswer::Refused { req, target, error }) = msg {
                    let _ = reply_tx.send(Reply::Refused { req, target, error });
                } else if let ToWorker::Object(ObjectAnswer::Attached { req, result }) = msg {
                    // The segment's descriptor came with this frame's bytes.
                    let result = match result {
                        Ok(Some(kind)) => reader
                            .get_mut()
                            .take_fd()
                            .map(|fd| Some((kind, fd)))
                            .ok_or_else(|| {
                                ObjectError::Invalid("the shared segment did not arrive".into())
                            }),
                        Ok(None) => Ok(None),
                        Err(e) => Err(e),
                    };
                    let _ = reply_tx.send(Reply::Attached { req, result });
                } else if tx.send(msg).is_err() {
                    break;
                }
            }
        })?;
    let identity = Arc::new(ProcessIdentity {
        pid: std::process::id(),
        ppid: parent,
        name: Mutex::new(load.name.clone()),
    });
    let progress = Arc::new(BatchProgress::default());
    let watchdog = Watchdog::new(channel.clone(), progress.clone());
    let objects = Arc::new(ObjectClient::new(channel.clone(), reply_rx));
    // A fork server prepared the module already (for a usable stack limit); otherwise it
    // is prepared here, for the limit asked for, or the default if that is out of range
    // (a call asking for such a limit is refused anyway).
    let pre = match pre {
        Some(pre) => Ok(pre),
        None => {
            load.stack_bytes = instance::usable_stack(load.stack_bytes);
            instance::prepare(&load.artifact, load.engine, load.stack_bytes)
        }
    };
    let loaded = pre.and_then(|pre| {
        Loaded::new(
            pre,
            &load,
            identity.clone(),
            channel.clone(),
            watchdog,
            objects,
            progress,
        )
    });
    let mut loaded = match loaded {
        Ok(l) => l,
        Err(message) => {
            channel.send(&FromWorker::Control(Status::LoadFailed(message)))?;
            return Ok(1);
        }
    };
    channel.send(&FromWorker::Control(Status::Ready {
        tasks: loaded.tasks().to_vec(),
    }))?;

    // Whether this thread's files are narrowed to the artifact and the grants yet.
    let mut narrowed = false;
    loop {
        // Answers are queued while more work is waiting, and written when it runs out.
        let msg = match rx.try_recv() {
            Ok(msg) => msg,
            Err(std::sync::mpsc::TryRecvError::Empty) => {
                channel.flush()?;
                match rx.recv() {
                    Ok(msg) => msg,
                    Err(_) => break,
                }
            }
            Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
        };
        match msg {
            ToWorker::Call(CallRequest::One { id, .. } | CallRequest::Batch { id, .. })
                if skips.start(id) =>
            {
                // Cancelled after it was sent: answered unrun (the host has failed its
                // items as cancelled already, and ignores this).
                channel.queue(&FromWorker::Call(CallEvent::Done {
                    id,
                    outcome: Outcome::Failed("cancelled before it started".into()),
                    fuel: None,
                    micros: 0,
                    peak_memory: loaded.peak_memory(),
                }))?;
            }
            ToWorker::Control(Control::Load(_))
            | ToWorker::Control(Control::Skip(_))
            | ToWorker::Object(ObjectAnswer::Reply { .. })
            | ToWorker::Object(ObjectAnswer::Refused { .. })
            | ToWorker::Object(ObjectAnswer::Attached { .. }) => {
                return Ok(1);
            }
            ToWorker::Control(Control::Grant(grants)) => {
                narrow_files(&load.artifact, &grants, &mut narrowed);
                loaded.set_grants(grants)
            }
            ToWorker::Control(Control::Rename(name)) => {
                if let Ok(mut n) = identity.name.lock() {
                    *n = name;
                }
            }
            ToWorker::Call(CallRequest::One {
                id,
                task,
                args,
                exit_after,
                limits,
            }) => {
                narrow_files(&load.artifact, &Grants::default(), &mut narrowed);
                channel.current_call.store(id, Ordering::Relaxed);
                let started = Instant::now();
                // A result too large for a frame fails the task, not the worker.
                let outcome = cap_result(loaded.call(id, &task, &args, &limits));
                skips.finish();
                channel.end_lines(id)?;
                let micros = micros_since(started);
                let fuel = loaded.take_fuel_used();
                let peak_memory = loaded.peak_memory();
                let ok = matches!(outcome, Outcome::Ok(_));
                if !loaded.has_instance() {
                    loaded.forget_attachments();
                    channel.queue(&FromWorker::Object(ObjectCall::InstanceLost))?;
                }
                if exit_after {
                    channel.send(&FromWorker::Call(CallEvent::Done {
                        id,
                        outcome,
                        fuel,
                        micros,
                        peak_memory,
                    }))?;
                    // The answer is written; tearing down the instance and the engine would
                    // only delay the exit the host is waiting for.
                    // SAFETY: _exit is always safe to call; nothing buffered remains.
                    unsafe { libc::_exit(if ok { 0 } else { 1 }) };
                }
                channel.queue(&FromWorker::Call(CallEvent::Done {
                    id,
                    outcome,
                    fuel,
                    micros,
                    peak_memory,
                }))?;
            }
            ToWorker::Call(CallRequest::Batch {
                id,
                task,
                items,
                limits,
            }) => {
                narrow_files(&load.artifact, &Grants::default(), &mut narrowed);
                channel.current_call.store(id, Ordering::Relaxed);
                let started = Instant::now();
                let answers = loaded.call_batch(id, &task, items, &limits);
                skips.finish();
                channel.end_lines(id)?;
                let micros = micros_since(started);
                let fuel = loaded.take_fuel_used();
                let peak_memory = loaded.peak_memory();
                if !loaded.has_instance() {
                    loaded.forget_attachments();
                    channel.queue(&FromWorker::Object(ObjectCall::InstanceLost))?;
                }
                channel.queue(&FromWorker::Call(CallEvent::BatchDone {
                    id,
                    answers,
                    fuel,
                    micros,
                    peak_memory,
                }))?;
            }
            ToWorker::Control(Control::Shutdown) => {
                channel.flush()?;
                return Ok(0);
            }
        }
    }
    channel.flush()?;
    Ok(0)
}

/// Narrows the files this thread (the one that runs tasks) and its later threads may open
/// to the module's artifact, the granted directories and a few devices, once: at the first
/// grant (which comes before any call), or at the first call when nothing is granted. A
/// call asking for another stack limit loads the artifact again from the file the worker
/// opened at load (`Loaded` keeps it), since the cache may have put another file at the
/// path since; the path stays readable for a worker that could not keep it open. A
/// worker is never granted more later (grants come once, before the calls), so nothing it
/// needs is closed by this.
fn narrow_files(artifact: &std::path::Path, grants: &Grants, narrowed: &mut bool) {
    if std::mem::replace(narrowed, true) {
        return;
    }
    let mut paths = vec![(artifact, sandbox::Reach::Read)];
    for (dir, read_only) in grants.host_dirs() {
        let reach = if read_only {
            sandbox::Reach::Read
        } else {
            sandbox::Reach::ReadWrite
        };
        paths.push((dir, reach));
    }
    // Best effort, as the first layer: a kernel without Landlock runs without either.
    let _ = sandbox::restrict_files_to(&paths);
}

/// Microseconds since `started`, as a call's answer reports its run time.
fn micros_since(started: Instant) -> u64 {
    started.elapsed().as_micros().try_into().unwrap_or(u64::MAX)
}

/// Largest allocation the worker's `malloc` serves from its heap rather than a fresh
/// mapping, and how much free memory at the heap's top it keeps rather than returning it.
#[cfg(target_env = "gnu")]
const HEAP_KEEP_BYTES: libc::c_int = 8 << 20;

/// Lets the worker's `malloc` reuse memory between batches. glibc starts by serving a buffer
/// over 128 KiB (a batch's items, its results, their frames) from a fresh mapping, and gives
/// freed memory at the heap's top back to the kernel; it raises both thresholds as large
/// buffers are freed, but a batch still touched fresh pages often: a page fault per 4 KiB,
/// ~2-3 us each on these machines. Both are fixed at 8 MiB here: buffers up to that size come
/// from the heap, and up to that much free memory is kept. An idle worker that ran only
/// small tasks holds no more than before.
#[cfg(target_env = "gnu")]
fn keep_heap_memory() {
    // SAFETY: mallopt only sets allocator parameters (under malloc's own lock); a refused
    // parameter is ignored.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, HEAP_KEEP_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEEP_BYTES);
    }
}

/// Other C libraries keep their allocator's defaults.
#[cfg(not(target_env = "gnu"))]
fn keep_heap_memory() {}

/// The calls whose work the host cancelled after sending them (`Control::Skip`), noted by
/// the frame reader as the frame arrives, and the call running now: a call named before it
/// starts is skipped, and one named while it runs stops the worker.
#[derive(Default)]
struct Skips {
    /// Whether `ids` holds any: the common case costs a load, not a lock.
    any: std::sync::atomic::AtomicBool,
    ids: Mutex<Vec<u64>>,
    /// The running call's id plus one; 0 between calls.
    running: std::sync::atomic::AtomicU64,
}

impl Skips {
    /// Notes `ids` (on the frame reader); whether the running call is one of them.
    ///
    /// With [`start`](Self::start), in sequentially consistent order: a call named as it
    /// starts is either seen here as running or seen there as named, never neither.
    fn add(&self, ids: Vec<u64>) -> bool {
        let mut held = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        held.extend(ids);
        self.any.store(!held.is_empty(), Ordering::SeqCst);
        let running = self.running.load(Ordering::SeqCst);
        running != 0 && held.contains(&(running - 1))
    }

    /// Call `id` is about to start: whether it is to be skipped instead. A worker is sent
    /// its calls in increasing id order, so ids below it were answered already and are
    /// forgotten.
    fn start(&self, id: u64) -> bool {
        self.running.store(id.saturating_add(1), Ordering::SeqCst);
        if !self.any.load(Ordering::SeqCst) {
            return false;
        }
        let mut held = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        let skip = held.contains(&id);
        held.retain(|&i| i > id);
        self.any.store(!held.is_empty(), Ordering::SeqCst);
        if skip {
            self.running.store(0, Ordering::SeqCst);
        }
        skip
    }

    /// The running call has ended.
    fn finish(&self) {
        self.running.store(0, Ordering::SeqCst);
    }
}
