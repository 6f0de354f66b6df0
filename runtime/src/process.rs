//! `Process`: one task in one worker process, with Python's `multiprocessing.Process` API.

use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::broker::collect_grants;
use crate::engine::EngineKind;
use crate::error::{Error, Result};
use crate::grants::Grants;
use crate::module::Module;
use crate::output::{Captured, Output, OutputEvent, OutputRouter};
use crate::protocol::{
    CallEvent, CallRequest, Control, EXIT_STATUS, Limits, Outcome, ToWorker, encode_frame,
};
use crate::supervisor::{WorkerEvents, WorkerHandle, describe_exit, exitcode};
use crate::values::{decode_result, encode_args};

/// The processes of one runtime: what `active_children` lists, and the numbers of their
/// default names.
#[derive(Debug)]
pub(crate) struct Processes {
    started: Mutex<Vec<Weak<Inner>>>,
    next: AtomicU64,
}

impl Default for Processes {
    fn default() -> Self {
        Processes {
            started: Mutex::new(Vec::new()),
            next: AtomicU64::new(1),
        }
    }
}

impl Processes {
    fn next_name(&self) -> String {
        format!("Process-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn started(&self, process: &Arc<Inner>) {
        let mut started = lock(&self.started);
        started.retain(|w| w.strong_count() > 0);
        started.push(Arc::downgrade(process));
    }

    /// The running ones, as Python's `active_children`.
    pub fn active(&self) -> Vec<ChildInfo> {
        let mut started = lock(&self.started);
        started.retain(|w| w.strong_count() > 0);
        started
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|inner| {
                let state = lock(&inner.state);
                match (state.started, state.exitcode, state.pid) {
                    (true, None, Some(pid)) => Some(ChildInfo {
                        name: inner.name.clone(),
                        pid,
                    }),
                    _ => None,
                }
            })
            .collect()
    }
}

/// A task running in a worker process of its own, as Python's `multiprocessing.Process`.
///
/// The worker is an OS process running the task's WebAssembly inside wasmtime; when the task
/// returns, the process exits. `exitcode` follows Python: `None` while running, `0` on
/// success, `1` if the task failed or trapped, `-N` if signal `N` killed it. Beyond Python,
/// the task's return value comes back: [`result`](Process::result).
///
/// Dropping the handle of a process still running terminates it if it is a daemon, and
/// waits for it otherwise (as Python does for its children when the parent exits).
///
/// ```no_run
/// use wasmpool::{Module, Process};
///
/// let module = Module::load("examples/testkit")?;
/// let p = Process::new(&module, "square", &(7u64,))?;
/// p.start()?;
/// p.join()?;
/// assert_eq!(p.exitcode(), Some(0));
/// assert_eq!(p.result::<u64>()?, 49);
/// # Ok::<(), wasmpool::Error>(())
/// ```
#[derive(Debug)]
pub struct Process {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    module: Module,
    task: String,
    args: Vec<u8>,
    name: String,
    daemon: bool,
    output: Output,
    /// Whether a failed task is reported on the process's stderr.
    error_report: bool,
    limits: Limits,
    grants: Grants,
    state: Mutex<ProcessState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct ProcessState {
    started: bool,
    worker: Option<WorkerHandle>,
    pid: Option<u32>,
    outcome: Option<Outcome>,
    /// The fuel the task used, when it ran with a fuel limit.
    fuel: Option<u64>,
    exitcode: Option<i32>,
    /// Set when the worker died before answering: always an `Error::WorkerLost`.
    lost: Option<Error>,
    /// The shared objects in the arguments, held until the worker holds them.
    grant: Option<u64>,
    router: OutputRouter,
    /// A setting made after `start`, which did not apply: reported once, as an
    /// `Error::State`, by the next `join`, `join_timeout` or `result`.
    misuse: Option<String>,
}

/// A running child process, as listed by [`active_children`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildInfo {
    /// The process name.
    pub name: String,
    /// Its OS process id.
    pub pid: u32,
}

impl Process {
    /// A process that will run `task` from `module` with positional `args` (a tuple such as
    /// `(7,)`, or `()`), named `Process-N` like Python's, not a daemon, with output inherited.
    pub fn new<A: Serialize + ?Sized>(module: &Module, task: &str, args: &A) -> Result<Process> {
        // Shared objects in the arguments are held for the process from now on: a pipe end
        // it was given stays open until it closes it or exits, as an inherited fd would.
        let (args, handles) = collect_grants(|| encode_args(args));
        let process = Self::with_encoded_args(module, task, args?)?;
        lock(&process.inner.state).grant = module.runtime().broker().hold_grant(&handles)?;
        Ok(process)
    }

    /// As [`new`](Process::new), with arguments already encoded as a MessagePack array
    /// (see [`encode_args`](crate::encode_args) and [`json_args`](crate::json_args)).
    pub fn with_encoded_args(module: &Module, task: &str, args: Vec<u8>) -> Result<Process> {
        module.check_task(task)?;
        let name = module.runtime().processes().next_name();
        Ok(Process {
            inner: Arc::new(Inner {
                module: module.clone(),
                task: task.to_string(),
                args,
                name,
                daemon: false,
                output: Output::Inherit,
                error_report: true,
                limits: Limits::default(),
                grants: Grants::default(),
                state: Mutex::new(ProcessState::default()),
                changed: Condvar::new(),
            }),
        })
    }

    /// Applies a setting, before `start`. After it the worker already runs with the old
    /// one: the setting is refused, and the refusal (Python's "process has already
    /// started") is kept for the next `join`, `join_timeout` or `result` to report.
    fn configure(mut self, what: &str, f: impl FnOnce(&mut Inner)) -> Self {
        // Before start the handle is the only owner of `inner` (the worker's watcher and
        // the registry of children share it from `start` on); started or not is in `state`.
        let started = self.lock().started;
        if !started && let Some(inner) = Arc::get_mut(&mut self.inner) {
            f(inner);
            return self;
        }
        let message = format!(
            "cannot set {what} of process {}: it has already started, and settings apply \
             before start only (set it on the process before calling start)",
            self.inner.name
        );
        let mut state = self.lock();
        // The first refusal is the one reported.
        state.misuse.get_or_insert(message);
        drop(state);
        self
    }

    /// Sets the process name (default `Process-N`).
    ///
    /// This and the other `with_` settings apply before [`start`](Process::start) only, as
    /// in Python (whose `daemon` cannot be set on a started process). On a started process
    /// the setting does not apply and the next [`join`](Process::join),
    /// [`join_timeout`](Process::join_timeout) or [`result`](Process::result) fails once
    /// with [`Error::State`] saying so (after waiting, for a join). Unlike Python's, the
    /// name cannot change once started: the worker and [`active_children`] already use it.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.configure("the name", |i| i.name = name)
    }

    /// Makes the process a daemon: dropping its handle terminates it instead of waiting.
    /// Before [`start`](Process::start) only (see [`with_name`](Process::with_name)).
    pub fn with_daemon(self, daemon: bool) -> Self {
        self.configure("daemon", |i| i.daemon = daemon)
    }

    /// Sets the task's limits (memory, time, stack, output, fuel); a task that exceeds one fails with
    /// [`Error::Limit`]. With a fuel limit the process runs on the metered engine and
    /// reports the fuel the task used ([`fuel_used`](Process::fuel_used)); with a time limit,
    /// on one whose code checks the time (slower wasm code, see
    /// [`PoolBuilder::interruptible`](crate::PoolBuilder::interruptible)). Before
    /// [`start`](Process::start) only (see [`with_name`](Process::with_name)).
    pub fn with_limits(self, limits: Limits) -> Self {
        self.configure("the limits", |i| i.limits = limits)
    }

    /// Grants the task directories and environment variables (default: none). A grant of a
    /// directory that does not exist makes [`start`](Process::start) fail. Before `start`
    /// only (see [`with_name`](Process::with_name)).
    pub fn with_grants(self, grants: Grants) -> Self {
        self.configure("the grants", |i| i.grants = grants)
    }

    /// Sets where the task's stdout and stderr go (default: this program's, untagged).
    /// Before [`start`](Process::start) only (see [`with_name`](Process::with_name)).
    pub fn with_output(self, output: Output) -> Self {
        self.configure("the output", |i| i.output = output)
    }

    /// Whether a task that fails writes its error to the process's stderr (default: yes),
    /// as a Python child prints `Process Process-1:` and the traceback of the exception
    /// that ended its `run`:
    ///
    /// ```text
    /// Process Process-1:
    /// task `boom` failed: panicked at src/lib.rs:47:5: no
    /// ```
    ///
    /// The report goes where the task's output goes ([`with_output`](Process::with_output)):
    /// this program's stderr by default. A task that exits with a non-zero status, or a
    /// process killed by a signal, reports nothing, as in Python; a task's error is in
    /// [`result`](Process::result) either way. Turn it off when the caller reports the
    /// error itself (the CLI's `run` does). Before [`start`](Process::start) only (see
    /// [`with_name`](Process::with_name)).
    pub fn with_error_report(self, report: bool) -> Self {
        self.configure("the error report", |i| i.error_report = report)
    }

    /// The refusal of a setting made after start, once (see [`with_name`](Process::with_name)).
    fn take_misuse(&self) -> Result<()> {
        match self.lock().misuse.take() {
            Some(message) => Err(Error::State(message)),
            None => Ok(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ProcessState> {
        lock(&self.inner.state)
    }

    /// Starts the process. Starting it twice is an error, as in Python.
    pub fn start(&self) -> Result<()> {
        let mut state = self.lock();
        if state.started {
            return Err(Error::State(format!(
                "cannot start a process twice ({})",
                self.inner.name
            )));
        }
        let inner = &self.inner;
        inner.limits.check().map_err(Error::State)?;
        let grants = inner.grants.resolved()?;
        let engine = EngineKind::for_limits(&inner.limits);
        let stack = inner.limits.stack_bytes;
        let mut frames = Vec::new();
        let encoded = self.first_frames(grants, &mut frames);
        // The call goes with the start when the module is known to have the task: the
        // worker runs it as soon as it is ready, without waiting for the host to hear so.
        let pipelined = encoded.is_ok() && inner.module.exports(&inner.task) == Some(true);
        let first: &[u8] = if pipelined { &frames } else { &[] };
        let worker = inner
            .module
            .ready_worker_with(&inner.name, engine, &inner.limits, first)?;
        if !worker.tasks.iter().any(|t| *t == inner.task) {
            return Err(Error::UnknownTask {
                task: inner.task.clone(),
                available: worker.tasks.clone(),
            });
        }
        // Bound before the worker is watched, so its exit always finds (and frees) the hold.
        if let Some(grant) = state.grant.take() {
            inner
                .module
                .runtime()
                .broker()
                .bind_grant(grant, worker.pid);
        }
        let events: Arc<dyn WorkerEvents> = inner.clone();
        let pid = worker.pid;
        let handle = WorkerHandle::attach(worker, events).map_err(|e| {
            inner.module.runtime().broker().worker_exited(pid);
            Error::Worker(e.to_string())
        })?;
        let sent = if pipelined {
            Ok(())
        } else {
            encoded.and_then(|()| handle.send_encoded(&frames))
        };
        state.started = true;
        state.pid = Some(handle.pid);
        if sent.is_err() {
            // The worker died between its hand-over and the call: its exit will be reported.
            handle.signal(libc::SIGKILL);
        }
        state.worker = Some(handle);
        drop(state);
        inner.module.runtime().processes().started(&self.inner);
        inner.module.refill_spare(engine, stack);
        Ok(())
    }

    /// Encodes what a new worker is told before it runs the task: its capabilities, its
    /// name (a warm spare has another), and the call.
    fn first_frames(&self, grants: Grants, out: &mut Vec<u8>) -> std::io::Result<()> {
        let inner = &self.inner;
        if !grants.is_empty() {
            encode_frame(out, &ToWorker::Control(Control::Grant(grants)))?;
        }
        encode_frame(out, &ToWorker::Control(Control::Rename(inner.name.clone())))?;
        encode_frame(
            out,
            &ToWorker::Call(CallRequest::One {
                id: 1,
                task: inner.task.clone(),
                args: inner.args.clone(),
                exit_after: true,
                limits: inner.limits,
            }),
        )
    }

    /// Waits until the process has exited. Joining a process never started is an error.
    pub fn join(&self) -> Result<()> {
        self.wait_until(None)?;
        self.take_misuse()
    }

    /// Waits at most `timeout` for the process to exit; returns whether it has.
    pub fn join_timeout(&self, timeout: Duration) -> Result<bool> {
        let exited = self.wait_until(Some(Instant::now() + timeout))?;
        self.take_misuse()?;
        Ok(exited)
    }

    /// Waits until the process has exited or `deadline` passes; returns whether it has.
    /// An error for a process never started.
    pub(crate) fn wait_until(&self, deadline: Option<Instant>) -> Result<bool> {
        let mut state = self.lock();
        if !state.started {
            return Err(Error::State(format!(
                "can only join a started process ({})",
                self.inner.name
            )));
        }
        while state.exitcode.is_none() {
            match deadline {
                None => {
                    state = self
                        .inner
                        .changed
                        .wait(state)
                        .unwrap_or_else(|p| p.into_inner())
                }
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(false);
                    }
                    state = self
                        .inner
                        .changed
                        .wait_timeout(state, d - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
        Ok(true)
    }

    /// Whether the process has started and not yet exited.
    pub fn is_alive(&self) -> bool {
        let state = self.lock();
        state.started && state.exitcode.is_none()
    }

    /// The worker's OS process id, once started.
    pub fn pid(&self) -> Option<u32> {
        self.lock().pid
    }

    /// The process name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the process is a daemon.
    pub fn is_daemon(&self) -> bool {
        self.inner.daemon
    }

    /// `None` while running (or before start), `0` on success, `1` if the task failed or
    /// trapped, `-N` if signal `N` killed the process.
    pub fn exitcode(&self) -> Option<i32> {
        self.lock().exitcode
    }

    /// Sends SIGTERM to the process (as Python's `terminate`); a no-op once it has exited.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    /// Sends SIGKILL to the process (as Python's `kill`); a no-op once it has exited.
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    fn signal(&self, sig: i32) {
        let state = self.lock();
        if state.exitcode.is_none()
            && let Some(w) = &state.worker
        {
            w.signal(sig);
        }
    }

    /// The task's return value, once the process has exited; the task's error (or how the
    /// process was lost) otherwise. Before exit it is an error: call [`join`](Process::join).
    pub fn result<T: DeserializeOwned>(&self) -> Result<T> {
        decode_result(&self.inner.task, &self.result_bytes()?)
    }

    /// The task's raw MessagePack result, as [`result`](Process::result) but undecoded.
    pub fn result_bytes(&self) -> Result<Vec<u8>> {
        self.take_misuse()?;
        let state = self.lock();
        if state.exitcode.is_none() {
            return Err(Error::State(format!(
                "process {} has not finished: join it first",
                self.inner.name
            )));
        }
        let task = &self.inner.task;
        match (&state.outcome, &state.lost) {
            (Some(Outcome::Ok(bytes)), _) => Ok(bytes.clone()),
            (Some(other), _) => Err(outcome_error(task, other, &self.inner.module)),
            (
                None,
                Some(Error::WorkerLost {
                    pid,
                    task,
                    signal,
                    reason,
                }),
            ) => Err(Error::WorkerLost {
                pid: *pid,
                task: task.clone(),
                signal: *signal,
                reason: reason.clone(),
            }),
            (None, _) => Err(Error::Worker(format!(
                "process {} ended without a result",
                self.inner.name
            ))),
        }
    }

    /// The fuel the task used, once the process has exited, when it ran with a fuel limit
    /// ([`Limits::fuel`]): the same on every run for the same task and arguments. A task
    /// that ran out used all of it. `None` without a fuel limit, before the task finished,
    /// or if the worker died before answering.
    pub fn fuel_used(&self) -> Option<u64> {
        let state = self.lock();
        state.exitcode.and(state.fuel)
    }

    /// Output kept so far, when the process was created with [`Output::Capture`].
    pub fn captured_output(&self) -> Captured {
        self.lock().router.captured.clone()
    }
}

pub(crate) fn outcome_error(task: &str, outcome: &Outcome, module: &Module) -> Error {
    let task = task.to_string();
    match outcome {
        Outcome::Ok(_) => Error::State("not an error".into()),
        Outcome::Failed(message) => Error::Task {
            task,
            message: message.clone(),
        },
        Outcome::Trap(message) => Error::Trap {
            task,
            message: message.clone(),
        },
        Outcome::Limit(message) => Error::Limit {
            task,
            message: message.clone(),
        },
        Outcome::BadArgs(message) => Error::BadArgs(message.clone()),
        Outcome::UnknownTask => Error::UnknownTask {
            task,
            available: module.known_tasks().unwrap_or_default(),
        },
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Inner {
    /// What a failed task writes to the process's stderr (see
    /// [`Process::with_error_report`]); `None` when it did not fail, or exited with a status.
    fn error_report_of(&self, outcome: &Outcome) -> Option<String> {
        if let Outcome::Failed(message) = outcome
            && message.starts_with(EXIT_STATUS)
        {
            // Python's `sys.exit(1)` prints nothing either.
            return None;
        }
        match outcome {
            Outcome::Ok(_) => None,
            failed => Some(format!(
                "Process {}:\n{}\n",
                self.name,
                outcome_error(&self.task, failed, &self.module)
            )),
        }
    }
}

impl WorkerEvents for Inner {
    fn on_call(&self, pid: u32, event: CallEvent, _more: bool) {
        let mut state = lock(&self.state);
        match event {
            CallEvent::Output { stream, data, .. } => {
                let event = OutputEvent {
                    pid,
                    process: &self.name,
                    task: &self.task,
                    stream,
                    data: &data,
                };
                state.router.route(&self.output, event);
            }
            CallEvent::Done { outcome, fuel, .. } => {
                if self.error_report
                    && let Some(report) = self.error_report_of(&outcome)
                {
                    let event = OutputEvent {
                        pid,
                        process: &self.name,
                        task: &self.task,
                        stream: crate::output::Stream::Stderr,
                        data: report.as_bytes(),
                    };
                    state.router.route(&self.output, event);
                }
                state.outcome = Some(outcome);
                state.fuel = fuel;
            }
            // A process runs one call, never a batch.
            CallEvent::BatchDone { .. } | CallEvent::BatchPart { .. } => {}
        }
    }

    fn on_exit(&self, pid: u32, status: Option<ExitStatus>, protocol_error: Option<String>) {
        let mut state = lock(&self.state);
        state
            .router
            .finish(&self.output, pid, &self.name, &self.task);
        if state.outcome.is_none() {
            let (signal, reason) = match protocol_error {
                Some(e) => (
                    None,
                    format!("sent a malformed frame ({e}) and was stopped"),
                ),
                None => describe_exit(status),
            };
            state.lost = Some(Error::WorkerLost {
                pid,
                task: self.task.clone(),
                signal,
                reason,
            });
        }
        state.exitcode = Some(exitcode(status));
        self.changed.notify_all();
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(grant) = lock(&self.state).grant.take() {
            self.module.runtime().broker().drop_grant(grant);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.is_alive() {
            return;
        }
        if self.inner.daemon {
            self.terminate();
        }
        let _ = self.wait_until(None);
    }
}

/// The processes started in the global runtime that are still running, as Python's
/// `multiprocessing.active_children()` (see [`Runtime::active_children`](crate::Runtime::active_children)
/// for another runtime's).
pub fn active_children() -> Vec<ChildInfo> {
    crate::Runtime::global().active_children()
}

/// The number of CPUs this program may use, as Python's `multiprocessing.cpu_count()`.
pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
