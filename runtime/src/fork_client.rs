//! The host's side of the fork servers (the server itself is `worker/fork_server.rs`): how
//! worker processes start, forked from a fork server (the default) or executed afresh.
//!
//! Executing the worker binary costs a few milliseconds before a task can run: the kernel
//! maps a large binary, the dynamic loader relocates it, and the worker builds an engine,
//! maps the compiled module and links it. A fork server pays that once. It is the worker
//! binary executed in a hidden mode, with no thread but its main one; it keeps the modules
//! it was asked for loaded (deserialized and linked, never instantiated: no guest code runs
//! in it) and forks a worker per request. The worker starts with everything in place and
//! only instantiates the module. This is Python's `forkserver` start method.
//!
//! The host sends each request with the new worker's socket attached; the server answers
//! with the worker's pid and, later, reports how it exited (the worker is the server's
//! child, so only the server can reap it). A fork server never outlives the host (it is
//! killed when the host dies, and leaves when its socket closes), and its workers never
//! outlive it (each is killed when the server dies).
//!
//! There is one server per worker executable and module artifact (so per module and engine
//! kind): a worker is a copy of its server, with every module the server holds mapped, so a
//! server shared by a large module (a Python component, ~100 MB deserialized) and a small one
//! would make each worker of the small one copy the large one's page tables (its cold start
//! 1.6 → 4.2 ms and its idle worker 8.4 → 15.7 MiB, measured with a shared server). A server
//! whose workers have all exited, and that no fork request is on its way to, is idle (one
//! with live workers is never stopped: they would die with it). An idle server is stopped
//! when it has been idle for the runtime's idle timeout (a minute by default), by the one
//! reaper thread of its runtime's [`ForkServers`], which sleeps until the next such deadline;
//! and when a new server starts, at most [`MAX_IDLE_SERVERS`] idle ones are kept, the least
//! recently used stopped first. A module used again after its server stopped gets a new one.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fdpass;
use crate::launch::{FORKSERVER_ARG, FromForkServer, ToForkServer};
use crate::protocol::Load;

/// How new worker processes are started, for every pool and process of a runtime (as
/// Python's `multiprocessing.set_start_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartMethod {
    /// Fork each worker from a fork server that keeps the module loaded (the default): a
    /// worker is ready in well under a millisecond of its own work. The server is started
    /// the first time a worker is needed and lives while it has workers, until it has been
    /// idle for the runtime's [fork server idle timeout](crate::RuntimeBuilder::fork_server_idle_timeout)
    /// (then the next worker starts a new one).
    #[default]
    ForkServer,
    /// Execute the worker binary afresh for every worker: a few milliseconds per start,
    /// and nothing but the worker binary's own state is shared between workers (each one
    /// gets its own address-space layout).
    Exec,
}

/// Sets how the global runtime's new worker processes are started; workers already running
/// are not affected. (A [`Runtime`](crate::Runtime) of its own has its own start method.)
///
/// ```
/// use wasmpool::{StartMethod, set_start_method, start_method};
///
/// set_start_method(StartMethod::Exec);
/// assert_eq!(start_method(), StartMethod::Exec);
/// set_start_method(StartMethod::ForkServer);
/// ```
pub fn set_start_method(method: StartMethod) {
    crate::Runtime::global().set_start_method(method);
}

/// How the global runtime's new worker processes are started (see [`set_start_method`]).
pub fn start_method() -> StartMethod {
    crate::Runtime::global().start_method()
}

/// Why a fork request failed.
#[derive(Debug)]
pub(crate) enum ForkError {
    /// The server is gone (or broken); another one may do.
    Gone(String),
    /// The server refused the request (its message says why).
    Failed(String),
}

/// How long a fork request may take: the server may have to load the module first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

enum Reply {
    Forked(u64, u32),
    Failed(u64, String),
}

#[derive(Default)]
struct Exits {
    /// Exit statuses reported and not yet collected, by pid.
    statuses: HashMap<u32, i32>,
    /// Workers forked and not yet reported exited.
    live: usize,
    /// Fork requests found this server (in [`server_for`]) and not yet answered: a server
    /// loading a large module for one is not idle.
    pending: usize,
    /// Set when the server is gone: no further status will be reported.
    closed: bool,
    /// Since when it has had no live worker and no pending request (`None` while it has).
    idle_since: Option<Instant>,
}

impl Exits {
    /// Brings `idle_since` up to date after a change to `live` or `pending`; whether the
    /// server has just become idle (its reaper has a new deadline to wait for).
    fn settle(&mut self) -> bool {
        if self.live > 0 || self.pending > 0 {
            self.idle_since = None;
            false
        } else if self.idle_since.is_none() {
            self.idle_since = Some(Instant::now());
            true
        } else {
            false
        }
    }
}

/// Fork servers kept running with no live worker, for the modules used most recently.
pub(crate) const MAX_IDLE_SERVERS: usize = 4;

/// How long a fork server may stay idle (no live worker, no request on its way) before it
/// is stopped, by default.
pub const DEFAULT_FORK_SERVER_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The host's handle on one fork server.
pub(crate) struct ForkServer {
    pid: u32,
    exe: PathBuf,
    /// The module artifact its workers run.
    artifact: PathBuf,
    /// When a worker was last asked of it.
    used: Mutex<Instant>,
    /// The servers it is one of, to wake their reaper when it becomes idle.
    reaper: Weak<Shared>,
    ctrl: Arc<OwnedFd>,
    /// Held for the whole of a request: one at a time.
    replies: Mutex<Receiver<Reply>>,
    next: AtomicU64,
    exits: Mutex<Exits>,
    exited: Condvar,
    gone: AtomicBool,
}

impl std::fmt::Debug for ForkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForkServer")
            .field("pid", &self.pid)
            .field("exe", &self.exe)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The fork servers of one runtime, one per worker executable and module artifact, and the
/// thread that stops those idle for longer than the idle timeout (started with the first
/// server; it ends at [`shut_down`](ForkServers::shut_down)).
#[derive(Debug)]
pub(crate) struct ForkServers {
    shared: Arc<Shared>,
    reaper: Mutex<Option<JoinHandle<()>>>,
}

/// What the servers' reaper shares with their users.
#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the reaper: a server became idle, the timeout changed, or the runtime ends.
    wake: Condvar,
    /// The idle timeout, in milliseconds (`u64::MAX`: never).
    idle_ms: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    servers: Vec<Arc<ForkServer>>,
    /// Set by `shut_down`: no server is kept, and the reaper ends.
    closed: bool,
}

fn timeout_ms(timeout: Duration) -> u64 {
    u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)
}

impl ForkServers {
    /// No servers yet; an idle one is stopped once idle for `idle_timeout`.
    pub fn new(idle_timeout: Duration) -> Self {
        ForkServers {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                idle_ms: AtomicU64::new(timeout_ms(idle_timeout)),
            }),
            reaper: Mutex::new(None),
        }
    }

    /// Sets how long a server may stay idle before it is stopped (servers idle already
    /// count their idle time from when they became idle).
    pub fn set_idle_timeout(&self, timeout: Duration) {
        self.shared
            .idle_ms
            .store(timeout_ms(timeout), Ordering::Relaxed);
        let _state = lock(&self.shared.state);
        self.shared.wake.notify_all();
    }

    /// How long a server may stay idle before it is stopped.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_millis(self.shared.idle_ms.load(Ordering::Relaxed))
    }

    /// Stops every server (each leaves when its socket shuts, and its workers die with it)
    /// and ends the reaper.
    pub fn shut_down(&self) {
        {
            let mut state = lock(&self.shared.state);
            state.closed = true;
            for server in state.servers.drain(..) {
                server.stop();
            }
            self.shared.wake.notify_all();
        }
        if let Some(reaper) = lock(&self.reaper).take() {
            let _ = reaper.join();
        }
    }

    /// The pids of the servers in use.
    pub fn pids(&self) -> Vec<u32> {
        let mut state = lock(&self.shared.state);
        state.servers.retain(|s| !s.gone.load(Ordering::SeqCst));
        state.servers.iter().map(|s| s.pid).collect()
    }

    /// Starts the reaper unless it runs (called with the state locked, as a server starts).
    fn start_reaper(&self) -> io::Result<()> {
        let mut reaper = lock(&self.reaper);
        if reaper.is_none() {
            let shared = self.shared.clone();
            *reaper = Some(
                std::thread::Builder::new()
                    .name("wasmpool-fsidle".into())
                    .spawn(move || shared.reap())?,
            );
        }
        Ok(())
    }
}

impl Drop for ForkServers {
    fn drop(&mut self) {
        self.shut_down();
    }
}

impl Shared {
    /// The reaper: stops each server idle for the idle timeout, sleeping until the next
    /// server's deadline (or, with none idle, until one becomes idle); ends at `shut_down`.
    /// It decides under the state lock, where a server is found for a request and counted
    /// pending, so a server found for a request (even one still loading its module) is
    /// never stopped.
    fn reap(&self) {
        let mut state = lock(&self.state);
        while !state.closed {
            let idle_for = Duration::from_millis(self.idle_ms.load(Ordering::Relaxed));
            let now = Instant::now();
            let mut next: Option<Instant> = None;
            for server in &state.servers {
                let Some(since) = lock(&server.exits).idle_since else {
                    continue;
                };
                match since.checked_add(idle_for) {
                    Some(deadline) if deadline <= now => server.stop(),
                    Some(deadline) => next = Some(next.map_or(deadline, |n| n.min(deadline))),
                    None => {}
                }
            }
            state.servers.retain(|s| !s.gone.load(Ordering::SeqCst));
            state = match next {
                Some(deadline) => {
                    self.wake
                        .wait_timeout(state, deadline.saturating_duration_since(now))
                        .unwrap_or_else(|p| p.into_inner())
                        .0
                }
                None => self.wake.wait(state).unwrap_or_else(|p| p.into_inner()),
            };
        }
    }
}

/// A worker forked from a fork server, as [`fork_worker`] returns it.
pub(crate) struct Forked {
    pub pid: u32,
    pub server: Arc<ForkServer>,
    /// The host's end of the worker's socket.
    pub sock: UnixStream,
    /// How many bytes of the frames to send first were written before the fork request.
    pub sent: usize,
}

/// Forks a worker for `load` from the fork server of `exe` and `load`'s artifact (started if
/// there is none, or if the last one died).
///
/// As much of `first` (encoded frames for the worker) as its socket takes without waiting
/// is written before the request goes out, so the worker finds its first call there as soon
/// as it is ready: it need not wait for this thread to hear the server's answer, which on
/// a busy machine may be scheduled only once the worker blocks. The rest, if any, is the
/// caller's to write ([`Forked::sent`]).
pub(crate) fn fork_worker(
    servers: &ForkServers,
    exe: &Path,
    load: &Load,
    first: &[u8],
) -> Result<Forked, ForkError> {
    let mut last = String::new();
    // A server that died since its last request is replaced once.
    for _ in 0..2 {
        let server = server_for(servers, exe, &load.artifact).map_err(|e| {
            ForkError::Failed(format!(
                "cannot start a fork server ({}): {e}",
                exe.display()
            ))
        })?;
        let (host_end, child_end) =
            UnixStream::pair().map_err(|e| ForkError::Failed(e.to_string()))?;
        let sent = write_without_waiting(&host_end, first);
        let forked = server.fork(load, child_end);
        // Answered (a worker forked is live by now: its report came first).
        {
            let mut exits = lock(&server.exits);
            exits.pending = exits.pending.saturating_sub(1);
            let idle = exits.settle();
            drop(exits);
            if idle {
                server.wake_reaper();
            }
        }
        match forked {
            Ok(pid) => {
                return Ok(Forked {
                    pid,
                    server,
                    sock: host_end,
                    sent,
                });
            }
            Err(ForkError::Gone(why)) => {
                server.retire();
                last = why;
            }
            Err(e) => return Err(e),
        }
    }
    Err(ForkError::Gone(last))
}

/// Writes as much of `bytes` to `sock` as it takes without blocking; returns how much.
fn write_without_waiting(sock: &UnixStream, bytes: &[u8]) -> usize {
    let mut sent = 0;
    while sent < bytes.len() {
        let rest = &bytes[sent..];
        // SAFETY: send reads at most `rest.len()` bytes from `rest`, which is valid for them.
        let n = unsafe {
            libc::send(
                sock.as_raw_fd(),
                rest.as_ptr().cast(),
                rest.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        match usize::try_from(n) {
            Ok(0) => break,
            Ok(n) => sent += n,
            Err(_) if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    sent
}

/// The running fork server for `exe` and `artifact`, started if needed (then idle servers
/// past [`MAX_IDLE_SERVERS`] are stopped, the least recently used first).
fn server_for(all: &ForkServers, exe: &Path, artifact: &Path) -> io::Result<Arc<ForkServer>> {
    let mut state = lock(&all.shared.state);
    if state.closed {
        return Err(io::Error::other("the runtime is shutting down"));
    }
    let servers = &mut state.servers;
    servers.retain(|s| !s.gone.load(Ordering::SeqCst));
    if let Some(s) = servers
        .iter()
        .find(|s| s.exe == exe && s.artifact == artifact)
    {
        *lock(&s.used) = Instant::now();
        s.claim();
        return Ok(s.clone());
    }
    stop_idle(servers, MAX_IDLE_SERVERS.saturating_sub(1));
    all.start_reaper()?;
    let (host_end, server_end) = fdpass::pair()?;
    let child = crate::spawn::exec_worker(exe, server_end, Some(FORKSERVER_ARG))?;
    let (tx, rx) = sync_channel(16);
    let server = Arc::new(ForkServer {
        pid: child.id(),
        exe: exe.to_path_buf(),
        artifact: artifact.to_path_buf(),
        used: Mutex::new(Instant::now()),
        reaper: Arc::downgrade(&all.shared),
        ctrl: Arc::new(host_end),
        replies: Mutex::new(rx),
        next: AtomicU64::new(1),
        exits: Mutex::new(Exits::default()),
        exited: Condvar::new(),
        gone: AtomicBool::new(false),
    });
    let watched = server.clone();
    std::thread::Builder::new()
        .name(format!("wasmpool-forkserver-{}", child.id()))
        .spawn(move || watched.read_reports(child, tx))?;
    server.claim();
    servers.push(server.clone());
    Ok(server)
}

/// Stops idle servers (no live worker) beyond the `keep` used most recently. A worker asked of
/// one meanwhile (it was found, but not yet asked) fails as from a server that died, and is
/// asked of a new one.
fn stop_idle(servers: &mut Vec<Arc<ForkServer>>, keep: usize) {
    let mut idle: Vec<(Instant, usize)> = servers
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_idle())
        .map(|(i, s)| (*lock(&s.used), i))
        .collect();
    if idle.len() <= keep {
        return;
    }
    idle.sort();
    for &(_, i) in &idle[..idle.len() - keep] {
        servers[i].stop();
    }
    servers.retain(|s| !s.gone.load(Ordering::SeqCst));
}

impl ForkServer {
    /// Whether no worker of its is alive and no fork request is on its way to it.
    fn is_idle(&self) -> bool {
        let exits = lock(&self.exits);
        exits.live == 0 && exits.pending == 0
    }

    /// Counts a fork request on its way to it (it is not idle until answered).
    fn claim(&self) {
        let mut exits = lock(&self.exits);
        exits.pending += 1;
        exits.settle();
    }

    /// Tells its reaper it has become idle (called without its `exits` locked).
    fn wake_reaper(&self) {
        if let Some(shared) = self.reaper.upgrade() {
            // Under the lock the reaper decides under, so the wake-up is not lost.
            let _state = lock(&shared.state);
            shared.wake.notify_all();
        }
    }

    /// Takes it out of use and makes it leave (it leaves when its socket shuts; its workers,
    /// if it had any, die with it).
    fn stop(&self) {
        self.retire();
        // SAFETY: a plain system call on a descriptor the server handle owns.
        unsafe { libc::shutdown(self.ctrl.as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Asks for a worker serving on `sock`; returns its pid.
    fn fork(&self, load: &Load, sock: UnixStream) -> Result<u32, ForkError> {
        let replies = lock(&self.replies);
        if self.gone.load(Ordering::SeqCst) {
            return Err(ForkError::Gone("the fork server exited".into()));
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let request = ToForkServer::Fork {
            id,
            load: load.clone(),
        };
        let bytes =
            postcard::to_allocvec(&request).map_err(|e| ForkError::Failed(e.to_string()))?;
        if bytes.len() > fdpass::MAX_MESSAGE {
            return Err(ForkError::Failed(format!(
                "a fork request of {} bytes is too large (a module path or name this long?)",
                bytes.len()
            )));
        }
        fdpass::send(&*self.ctrl, &bytes, Some(sock.as_raw_fd()))
            .map_err(|e| ForkError::Gone(format!("cannot reach the fork server: {e}")))?;
        // The server has its own copy now; a worker it never forks sees its socket close.
        drop(sock);
        loop {
            match replies.recv_timeout(REQUEST_TIMEOUT) {
                Ok(Reply::Forked(rid, pid)) if rid == id => return Ok(pid),
                Ok(Reply::Failed(rid, message)) if rid == id => {
                    return Err(ForkError::Failed(message));
                }
                // The late answer to a request that timed out.
                Ok(_) => continue,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ForkError::Failed(format!(
                        "the fork server (pid {}) did not answer within {REQUEST_TIMEOUT:?}",
                        self.pid
                    )));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ForkError::Gone("the fork server exited".into()));
                }
            }
        }
    }

    /// Takes this server out of use: the next worker gets a new one.
    fn retire(&self) {
        self.gone.store(true, Ordering::SeqCst);
    }

    /// The server's reports, until it is gone; then it is reaped.
    fn read_reports(&self, mut child: Child, replies: SyncSender<Reply>) {
        let mut buf = vec![0u8; fdpass::MAX_MESSAGE];
        let broken = loop {
            let n = match fdpass::recv(&*self.ctrl, &mut buf) {
                Ok((0, _)) => break false,
                Ok((n, _)) => n,
                Err(_) => break true,
            };
            match postcard::from_bytes::<FromForkServer>(&buf[..n]) {
                Ok(FromForkServer::Forked { id, pid }) => {
                    let mut exits = lock(&self.exits);
                    exits.live += 1;
                    exits.settle();
                    drop(exits);
                    let _ = replies.try_send(Reply::Forked(id, pid));
                }
                Ok(FromForkServer::Failed { id, message }) => {
                    let _ = replies.try_send(Reply::Failed(id, message));
                }
                Ok(FromForkServer::Exited { pid, status }) => {
                    let mut exits = lock(&self.exits);
                    exits.statuses.insert(pid, status);
                    exits.live = exits.live.saturating_sub(1);
                    let idle = exits.settle();
                    drop(exits);
                    self.exited.notify_all();
                    if idle {
                        self.wake_reaper();
                    }
                }
                Err(_) => break true,
            }
        };
        self.retire();
        if broken {
            let _ = child.kill();
        }
        let _ = child.wait();
        lock(&self.exits).closed = true;
        self.exited.notify_all();
        // Dropping `replies` fails a request still waiting for its answer.
    }

    /// Waits until worker `pid` has exited and returns its status; `None` if the server
    /// died first (its workers are killed with it, and their statuses are lost).
    pub fn wait(&self, pid: u32) -> Option<ExitStatus> {
        let mut exits = lock(&self.exits);
        loop {
            if let Some(status) = exits.statuses.remove(&pid) {
                return Some(ExitStatus::from_raw(status));
            }
            if exits.closed {
                return None;
            }
            exits = self.exited.wait(exits).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Whether worker `pid` has exited (its status was reported).
    pub fn has_exited(&self, pid: u32) -> bool {
        let exits = lock(&self.exits);
        exits.closed || exits.statuses.contains_key(&pid)
    }

    /// Sends `signal` to worker `pid`, unless it is known to have exited.
    pub fn signal(&self, pid: u32, signal: i32) {
        if !self.has_exited(pid) {
            // SAFETY: kill has no memory-safety preconditions; the pid is one of this
            // server's workers, not yet reaped when last heard of.
            unsafe { libc::kill(pid as libc::pid_t, signal) };
        }
    }
}
