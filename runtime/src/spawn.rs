//! Starting worker processes.
//!
//! A worker is this program (or the `wasmpool` binary) re-executed with a hidden argument,
//! or forked from a fork server that is (see [`crate::forkserver`]). An executed process
//! gets one end of a socketpair as fd 3, an empty environment, no stdin, its own process
//! group, no core dumps, and `PR_SET_PDEATHSIG = SIGKILL`. That signal fires when the
//! *thread* that forked the child exits, so every fork happens on one long-lived spawner
//! thread: a worker started from a short-lived user thread must not die with that thread.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Sender, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::fork_client::{ForkError, ForkServer, StartMethod};
use crate::launch::{LOG_ENV, PARENT_ENV, WORKER_ARG, WORKER_FD};
use crate::protocol::{
    Control, FromWorker, Limits, Load, Status, ToWorker, read_frame, write_frame,
};
use crate::runtime::Runtime;

/// Whether this process serves as a worker (a fact about the process, not a setting).
static SELF_IS_WORKER: AtomicBool = AtomicBool::new(false);

/// How long a new worker may take to load its module before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a new worker may take beyond its init's time limit to answer.
const INIT_GRACE: Duration = Duration::from_secs(5);

pub(crate) fn mark_self_as_worker() {
    SELF_IS_WORKER.store(true, Ordering::Relaxed);
}

/// Sets the executable the global runtime starts as a worker process: a binary that calls
/// [`run_worker_if_requested`](crate::run_worker_if_requested) first thing in `main`, such
/// as the `wasmpool` CLI. Overrides the `WASMPOOL_WORKER_EXE` environment variable.
pub fn set_worker_exe(path: impl Into<PathBuf>) {
    Runtime::global().set_worker_exe(path);
}

/// The executable to start `runtime`'s workers from: the one set for it, else
/// `$WASMPOOL_WORKER_EXE`, else this program if it serves as a worker, else a `wasmpool`
/// binary beside this program (or one directory up, as for Cargo's examples and tests),
/// else `wasmpool` on `PATH`.
pub(crate) fn worker_exe(runtime: &Runtime) -> Result<PathBuf> {
    if let Some(exe) = runtime.configured_worker_exe() {
        return Ok(exe);
    }
    if let Some(exe) = std::env::var_os("WASMPOOL_WORKER_EXE") {
        return Ok(PathBuf::from(exe));
    }
    let current =
        std::env::current_exe().map_err(|e| Error::io("cannot find the current executable", e))?;
    if SELF_IS_WORKER.load(Ordering::Relaxed) {
        return Ok(current);
    }
    let mut dir = current.parent();
    for _ in 0..2 {
        if let Some(d) = dir {
            let candidate = d.join("wasmpool");
            if candidate.is_file() {
                return Ok(candidate);
            }
            dir = d.parent();
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let candidate = d.join("wasmpool");
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(Error::Worker(
        "no worker executable: call wasmpool::run_worker_if_requested() at the start of main, \
         or put the `wasmpool` binary on PATH, or set WASMPOOL_WORKER_EXE"
            .into(),
    ))
}

struct SpawnRequest {
    exe: PathBuf,
    fd: OwnedFd,
    mode: Option<&'static str>,
    reply: SyncSender<io::Result<Child>>,
}

/// The long-lived spawner thread's queue, or why it could not be started (then every
/// executed worker start fails with that reason; nothing panics).
fn spawner() -> &'static std::result::Result<Mutex<Sender<SpawnRequest>>, String> {
    static SPAWNER: OnceLock<std::result::Result<Mutex<Sender<SpawnRequest>>, String>> =
        OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("wasmpool-spawner".into())
            .spawn(move || {
                for req in rx {
                    let _ = req.reply.send(exec(&req.exe, req.fd, req.mode));
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| format!("cannot start the thread that starts worker processes: {e}"))
    })
}

/// Executes `exe` in worker mode (with `mode` after the hidden argument, if given), handing
/// it `fd` as fd 3. Runs on the spawner thread, so the process outlives the calling thread.
pub(crate) fn exec_worker(
    exe: &Path,
    fd: OwnedFd,
    mode: Option<&'static str>,
) -> io::Result<Child> {
    let (reply, rx) = sync_channel(1);
    let gone = || io::Error::other("the spawner thread is gone");
    spawner()
        .as_ref()
        .map_err(|why| io::Error::other(why.clone()))?
        .lock()
        .map_err(|_| gone())?
        .send(SpawnRequest {
            exe: exe.to_path_buf(),
            fd,
            mode,
            reply,
        })
        .map_err(|_| gone())?;
    rx.recv().map_err(|_| gone())?
}

fn exec(exe: &Path, fd: OwnedFd, mode: Option<&str>) -> io::Result<Child> {
    let child_fd = fd.as_raw_fd();
    let mut cmd = Command::new(exe);
    cmd.arg(WORKER_ARG);
    if let Some(mode) = mode {
        cmd.arg(mode);
    }
    cmd.env_clear()
        .env(PARENT_ENV, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if let Some(filter) = std::env::var_os(LOG_ENV) {
        cmd.env(LOG_ENV, filter);
    }
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (dup2, fcntl, setpgid, prctl, setrlimit).
    unsafe {
        cmd.pre_exec(move || {
            if child_fd == WORKER_FD {
                if libc::fcntl(WORKER_FD, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, WORKER_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            libc::setpgid(0, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) < 0 {
                return Err(io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            let files = libc::rlimit {
                rlim_cur: 1024,
                rlim_max: 1024,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &files);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(fd);
    Ok(child)
}

/// A worker process, as the host reaps and signals it: a child of this process (executed),
/// or of a fork server (which reaps it and reports its exit status).
#[derive(Debug)]
pub(crate) enum WorkerProcess {
    Exec(Child),
    Forked { pid: u32, server: Arc<ForkServer> },
}

impl WorkerProcess {
    /// Kills the worker, unless it is known to have exited already.
    pub fn kill(&mut self) {
        match self {
            WorkerProcess::Exec(child) => {
                let _ = child.kill();
            }
            WorkerProcess::Forked { pid, server } => server.signal(*pid, libc::SIGKILL),
        }
    }

    /// Whether the worker has exited, without reaping it (an exited child stays a zombie,
    /// so its pid cannot be reused yet). `false` when it cannot be told.
    pub fn has_exited(&self) -> bool {
        match self {
            WorkerProcess::Exec(child) => {
                // SAFETY: an all-zero `siginfo_t` is a valid value, and `waitid` writes at
                // most one `siginfo_t` into it.
                let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
                // SAFETY: `info` is a valid, writable `siginfo_t`; WNOWAIT leaves the child
                // unreaped.
                let r = unsafe {
                    libc::waitid(
                        libc::P_PID,
                        child.id(),
                        &mut info,
                        libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
                    )
                };
                // SAFETY: `waitid` succeeded, so `info` holds a child's state (or zeroes).
                r == 0 && unsafe { info.si_pid() } != 0
            }
            WorkerProcess::Forked { pid, server } => server.has_exited(*pid),
        }
    }

    /// Waits for the worker to exit; `None` if its status cannot be known.
    pub fn wait(&mut self) -> Option<ExitStatus> {
        match self {
            WorkerProcess::Exec(child) => child.wait().ok(),
            WorkerProcess::Forked { pid, server } => server.wait(*pid),
        }
    }
}

/// A worker process that has loaded its module and waits for work.
#[derive(Debug)]
pub(crate) struct ReadyWorker {
    pub pid: u32,
    pub sock: UnixStream,
    pub child: WorkerProcess,
    pub tasks: Vec<String>,
    /// The engine kind it loaded its artifact for.
    pub engine: EngineKind,
    /// The wasm stack limit its engine was made with.
    pub stack_bytes: u64,
    /// The runtime it serves: the broker of its object calls, its limits.
    pub runtime: Runtime,
}

impl Drop for ReadyWorker {
    fn drop(&mut self) {
        // Only reached when the worker was never handed over (an unused spare, a failed
        // hand-over): it must not outlive its handle.
        self.child.kill();
        self.child.wait();
    }
}

impl ReadyWorker {
    /// Whether it runs on the engine `engine` and `stack_bytes` ask for, and was started
    /// by the start method now in force (a spare started before `set_start_method` changed
    /// it is not what the program asked for).
    pub fn is_kind(&self, engine: EngineKind, stack_bytes: u64) -> bool {
        let forked = matches!(self.child, WorkerProcess::Forked { .. });
        self.engine == engine
            && self.stack_bytes == stack_bytes
            && forked == (self.runtime.start_method() == StartMethod::ForkServer)
    }

    /// Whether it is still there: an idle worker has nothing to say, so its socket has
    /// nothing to read until it dies (end of file).
    pub fn is_alive(&self) -> bool {
        let mut byte = 0u8;
        // SAFETY: recv writes at most one byte into `byte`; MSG_PEEK leaves it unread.
        let n = unsafe {
            libc::recv(
                self.sock.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
    }

    /// Gives up ownership of the child and socket to a supervisor.
    pub fn into_parts(self) -> (u32, UnixStream, WorkerProcess, Vec<String>, Runtime) {
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again after its fields are moved out,
        // each exactly once.
        unsafe {
            (
                this.pid,
                std::ptr::read(&this.sock),
                std::ptr::read(&this.child),
                std::ptr::read(&this.tasks),
                std::ptr::read(&this.runtime),
            )
        }
    }
}

/// Starts a worker process, has it load `artifact` (compiled for an engine of kind
/// `engine`) into such an engine with the stack limit of `limits`, make its first instance
/// under their memory and time limits, and waits until it is ready.
pub(crate) fn start_worker(
    runtime: &Runtime,
    artifact: &Path,
    name: &str,
    engine: EngineKind,
    limits: &Limits,
) -> Result<ReadyWorker> {
    start_worker_with(runtime, artifact, name, engine, limits, &[])
}

/// How long the host waits for a new worker to be ready: its start, plus its module's
/// instantiation and init, which the worker stops at their time limit (and this is the
/// host's own deadline, for a worker that does not answer at all).
fn handshake_timeout(limits: &Limits) -> Duration {
    limits.timeout.map_or(HANDSHAKE_TIMEOUT, |t| {
        t.saturating_add(INIT_GRACE).max(HANDSHAKE_TIMEOUT)
    })
}

/// As [`start_worker`], and sends the encoded frames `first` before the worker is ready (a
/// forked worker's, as much as its socket takes, even before it is forked): it reads them
/// once it is, so its first call need not wait for the host to hear that it is ready. They
/// are lost with the worker if it fails to load.
pub(crate) fn start_worker_with(
    runtime: &Runtime,
    artifact: &Path,
    name: &str,
    engine: EngineKind,
    limits: &Limits,
    first: &[u8],
) -> Result<ReadyWorker> {
    let exe = worker_exe(runtime)?;
    let stack_bytes = limits.stack_bytes;
    let load = Load {
        artifact: artifact.to_path_buf(),
        name: name.to_string(),
        engine,
        stack_bytes,
        init_limits: *limits,
    };
    let wait = handshake_timeout(limits);
    // How much of `first` is written already.
    let mut sent = 0;
    let (pid, mut child, mut sock, forked) = match runtime.start_method() {
        StartMethod::ForkServer => {
            let forked =
                crate::fork_client::fork_worker(runtime.fork_servers(), &exe, &load, first)
                    .map_err(|e| match e {
                        ForkError::Gone(why) | ForkError::Failed(why) => Error::Worker(why),
                    })?;
            sent = forked.sent;
            let (pid, server) = (forked.pid, forked.server);
            (
                pid,
                WorkerProcess::Forked { pid, server },
                forked.sock,
                true,
            )
        }
        StartMethod::Exec => {
            let (host_end, child_end) = UnixStream::pair()
                .map_err(|e| Error::io("cannot make a socket for a worker", e))?;
            let child = exec_worker(&exe, child_end.into(), None)
                .map_err(|e| Error::io(format!("cannot start worker {}", exe.display()), e))?;
            (child.id(), WorkerProcess::Exec(child), host_end, false)
        }
    };
    let handshake = (|| -> io::Result<Option<FromWorker>> {
        // A forked worker has its `Load` from the fork server already.
        if !forked {
            write_frame(&mut sock, &ToWorker::Control(Control::Load(load)))?;
        }
        if sent < first.len() {
            use std::io::Write;
            // Fails only if the worker is gone, which the handshake reports better.
            let _ = sock.write_all(&first[sent..]);
        }
        // A timed init that runs for a while says it is alive (the watchdog does, as during
        // any call): not its answer, which must still come within `wait` in all.
        let deadline = std::time::Instant::now() + wait;
        let mut buf = Vec::new();
        let reply = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            sock.set_read_timeout(Some(left))?;
            match read_frame::<_, FromWorker>(&mut sock, &mut buf)? {
                Some(FromWorker::Control(Status::Alive)) => continue,
                reply => break reply,
            }
        };
        sock.set_read_timeout(None)?;
        Ok(reply)
    })();
    match handshake {
        Ok(Some(FromWorker::Control(Status::Ready { tasks }))) => Ok(ReadyWorker {
            pid,
            sock,
            child,
            tasks,
            engine,
            stack_bytes,
            runtime: runtime.clone(),
        }),
        Ok(Some(FromWorker::Control(Status::LoadFailed(message)))) => {
            child.wait();
            Err(Error::Worker(message))
        }
        other => {
            child.kill();
            let status = child.wait();
            let mut rest = Vec::new();
            let _ = sock.read_to_end(&mut rest);
            let why = match other {
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    format!(
                        "it gave no answer within {wait:?} (a module whose init never returns \
                         does this: give the pool or process a time limit, and its init is \
                         stopped at it)"
                    )
                }
                Err(e) => e.to_string(),
                Ok(Some(_)) => "unexpected message".into(),
                Ok(None) => "it exited".into(),
            };
            Err(Error::Worker(format!(
                "worker {} ({}) did not become ready: {why}{}",
                pid,
                exe.display(),
                status.map(|s| format!(" ({s})")).unwrap_or_default()
            )))
        }
    }
}
