//! One live instance of the guest component, rebuilt after a trap or a limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::WasiCtxBuilder;

use super::objects::ObjectClient;
use super::output::{Channel, GuestOutput};
use super::progress::{BatchProgress, Stopped};
use super::state::{CallClock, InstanceState, MemoryLimiter, ProcessIdentity};
use super::watchdog::{INIT_CALL, Watchdog, ticks, time_limit_message};
use crate::bindings::{self, BatchOutcome, TaskError, TaskModule, TaskModulePre};

/// A live instance's exports: the world's, and the optional `batch-bytes` and
/// `batch-packed` ones.
struct Exports {
    tasks: TaskModule,
    /// `call-batch-bytes`, when the module exports it (see [`bindings::batch_bytes`]).
    batch_bytes: Option<wasmtime::component::Func>,
    /// `call-batch-packed`, when the module exports it (see [`bindings::batch_packed`]).
    batch_packed: Option<wasmtime::component::Func>,
}

impl Exports {
    fn wasmpool_task_tasks(&self) -> &bindings::exports::wasmpool::task::tasks::Guest {
        self.tasks.wasmpool_task_tasks()
    }
}
use crate::engine::{EngineKind, engine_with};
use crate::grants::Grants;
use crate::protocol::packed::{BatchAnswers, Packed};
use crate::protocol::{
    EXIT_STATUS, FromWorker, Limits, Load, ObjectCall, Outcome, Stream, describe_bytes,
};

/// The environment variable every instance is given: the host's CPU count, as
/// [`crate::cpu_count`] answers it (read by the Python guest SDK).
const CPU_COUNT_VAR: &str = "WASMPOOL_CPU_COUNT";

/// The CPU count as text, computed once per worker (at its first instance, before its
/// files are narrowed).
fn cpu_count_text() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| crate::process::cpu_count().to_string())
}

/// Deadline for calls without a time limit: effectively never.
const NO_DEADLINE: u64 = u64::MAX / 4;

/// The loaded module and, while it is healthy, its instance.
pub(crate) struct Loaded {
    pre: TaskModulePre<InstanceState>,
    /// The artifact `pre` was made from, to load again into an engine with another stack limit.
    artifact: PathBuf,
    /// The artifact, opened when the module was loaded: a narrowed worker (see
    /// `worker::narrow_files`) may open only the file that was at the path then, and the
    /// host's cache may since have put another (recompiled, identical) file there. `None`
    /// if it could not be opened (then the path is read again).
    artifact_file: Option<std::fs::File>,
    /// The wasm stack limit of `pre`'s engine, in bytes.
    stack_bytes: u64,
    identity: Arc<ProcessIdentity>,
    channel: Arc<Channel>,
    live: Option<(Store<InstanceState>, Exports)>,
    tasks: Vec<String>,
    watchdog: Arc<Watchdog>,
    objects: Arc<ObjectClient>,
    progress: Arc<BatchProgress>,
    grants: Grants,
    /// The kind of engine `pre` is for: whether it counts fuel, and whether its code checks
    /// the epoch (else the watchdog alone enforces time limits).
    engine: EngineKind,
    /// Fuel used by the current call (every item of a batch), when metered.
    fuel_used: Option<u64>,
}

impl Loaded {
    /// Instantiates the module `load` names, runs the guest's init and asks for its tasks.
    /// `pre` is that module, prepared (by [`prepare`]) for the engine of `load.engine` and
    /// `load.stack_bytes`: the stack limit its tasks will likely ask for.
    pub fn new(
        pre: TaskModulePre<InstanceState>,
        load: &Load,
        identity: Arc<ProcessIdentity>,
        channel: Arc<Channel>,
        watchdog: Arc<Watchdog>,
        objects: Arc<ObjectClient>,
        progress: Arc<BatchProgress>,
    ) -> Result<Self, String> {
        let mut loaded = Loaded {
            pre,
            artifact: load.artifact.clone(),
            artifact_file: std::fs::File::open(&load.artifact).ok(),
            stack_bytes: load.stack_bytes,
            identity,
            channel,
            live: None,
            tasks: Vec::new(),
            watchdog,
            objects,
            progress,
            grants: Grants::default(),
            engine: load.engine,
            fuel_used: None,
        };
        // The first instance's init runs under the limits of the pool or process the worker
        // is for, with a watchdog for an init blocked in a host call.
        loaded.watchdog.arm(
            INIT_CALL,
            load.init_limits.timeout,
            load.engine.interruptible,
        );
        let first = loaded
            .instantiate(&load.init_limits)
            .and_then(|(mut store, module)| {
                let tasks = module
                    .wasmpool_task_tasks()
                    .call_list_tasks(&mut store)
                    .map_err(|e| {
                        init_failure("list of tasks", &mut store, &e, &load.init_limits)
                    })?;
                Ok((store, module, tasks))
            });
        loaded.watchdog.disarm();
        let (store, module, tasks) = first?;
        loaded.tasks = tasks;
        loaded.live = Some((store, module));
        Ok(loaded)
    }

    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    /// Whether an instance is alive (false after a trap or a limit discarded it).
    pub fn has_instance(&self) -> bool {
        self.live.is_some()
    }

    /// The fuel the last call used (all the items of a batch), if the engine counts fuel.
    pub fn take_fuel_used(&mut self) -> Option<u64> {
        self.fuel_used.take()
    }

    /// The last call's peak linear memory, in bytes (see
    /// [`PeakMemory`](super::state::PeakMemory)): the largest the instance running it was
    /// while it ran, all its memories together. An instance is reused across calls and its
    /// memory never shrinks, so a call after a larger one in the same instance reports at
    /// least that one's size. 0 for a call refused before it ran.
    pub fn peak_memory(&self) -> u64 {
        self.watchdog.peak_memory().get()
    }

    /// Gives later instances these capabilities; the current one (made without them) goes.
    pub fn set_grants(&mut self, grants: Grants) {
        self.grants = grants;
        // Grants come before any task runs, so this instance holds nothing to give back (and
        // telling the host it was lost would drop the holds a process's arguments gave it).
        self.live = None;
        self.forget_attachments();
    }

    /// Forgets the pipe segments tasks used in place: the host is told (or, for new
    /// grants, has) that this worker holds nothing, so the next use must attach again.
    pub fn forget_attachments(&self) {
        self.objects.forget_attachments();
    }

    /// Drops the live instance, if any, and has the host give back whatever it held of the
    /// shared objects before the next instance can take anything.
    fn discard_instance(&mut self) {
        if self.live.take().is_some() {
            self.forget_attachments();
            let _ = self
                .channel
                .queue(&FromWorker::Object(ObjectCall::InstanceLost));
        }
    }

    /// Makes a fresh instance and runs the guest's init, under the memory and time limits
    /// of `limits` (a module whose memory starts over the limit is refused; an init that
    /// never returns is stopped at the time limit).
    fn instantiate(&self, limits: &Limits) -> Result<(Store<InstanceState>, Exports), String> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput {
            stream: Stream::Stdout,
            channel: self.channel.clone(),
        })
        .stderr(GuestOutput {
            stream: Stream::Stderr,
            channel: self.channel.clone(),
        });
        // What `multiprocessing.cpu_count()` answers in a Python task (the WASI interpreter
        // has no way to ask); a grant of the same name overrides it.
        wasi.env(CPU_COUNT_VAR, cpu_count_text());
        self.grants.apply(&mut wasi)?;
        let wasi = wasi.build();
        let state = InstanceState {
            wasi,
            table: ResourceTable::new(),
            identity: self.identity.clone(),
            panic: None,
            objects: self.objects.clone(),
            channel: self.channel.clone(),
            progress: self.progress.clone(),
            clock: CallClock {
                timeout: limits.timeout,
                started: Instant::now(),
            },
            limiter: MemoryLimiter::new(limits.memory_bytes, self.watchdog.peak_memory().clone()),
        };
        let mut store = Store::new(self.pre.engine(), state);
        if self.engine.metered {
            // Instantiation and the guest's init are not any task's: they run unmetered.
            store
                .set_fuel(u64::MAX)
                .map_err(|e| format!("cannot give the instance fuel: {e:#}"))?;
        }
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_callback(|ctx| Ok(past_deadline(ctx.data())));
        store.set_epoch_deadline(limits.timeout.map_or(NO_DEADLINE, ticks));
        let instance = match self.pre.instance_pre().instantiate(&mut store) {
            Ok(instance) => instance,
            Err(e) if store.data().limiter.exceeded => {
                return Err(format!(
                    "cannot instantiate the module: its memory at start is over the memory \
                     limit of {} ({e:#}); give it a larger limit",
                    describe_bytes(limits.memory_bytes)
                ));
            }
            Err(e) => return Err(init_failure("instantiation", &mut store, &e, limits)),
        };
        let module = Exports {
            tasks: TaskModule::new(&mut store, &instance)
                .map_err(|e| init_failure("instantiation", &mut store, &e, limits))?,
            batch_bytes: bindings::batch_bytes(&mut store, &instance),
            batch_packed: bindings::batch_packed(&mut store, &instance),
        };
        match module.wasmpool_task_tasks().call_init(&mut store) {
            Ok(Ok(())) => Ok((store, module)),
            Ok(Err(message)) => Err(format!("the module's init failed: {message}")),
            Err(e) => Err(init_failure("init", &mut store, &e, limits)),
        }
    }

    /// The live instance (rebuilt if the last call trapped), prepared for a call under `limits`.
    fn live(
        &mut self,
        id: u64,
        limits: &Limits,
    ) -> Result<&mut (Store<InstanceState>, Exports), String> {
        // Armed first: a fresh instance's init prints under this call's budget, not under
        // whatever the last call (perhaps one stopped by its output limit) left.
        self.channel.arm_output(limits.output_bytes);
        if limits.stack_bytes != self.stack_bytes {
            // Another stack limit is another engine: the module is loaded into it, and the
            // instance (of the old engine) is made again, as after a trap.
            self.discard_instance();
            self.pre = match &self.artifact_file {
                Some(file) => prepare_open(file, &self.artifact, self.engine, limits.stack_bytes)?,
                None => prepare(&self.artifact, self.engine, limits.stack_bytes)?,
            };
            self.stack_bytes = limits.stack_bytes;
        }
        if self.live.is_none() {
            // A fresh instance's init runs under this call's limits, and its watchdog.
            self.watchdog
                .arm(id, limits.timeout, self.engine.interruptible);
            self.live = Some(self.instantiate(limits)?);
        }
        self.watchdog
            .arm(id, limits.timeout, self.engine.interruptible);
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| "no instance".to_string())?;
        let limiter = &mut live.0.data_mut().limiter;
        limiter.max_bytes = limits.memory_bytes;
        limiter.exceeded = false;
        // The memory the call starts with is its own too: what earlier calls and the init
        // left (or, for a fresh instance, what its instantiation and init made).
        self.watchdog.peak_memory().raise(limiter.size_bytes());
        live.0.data_mut().clock = CallClock {
            timeout: limits.timeout,
            started: Instant::now(),
        };
        live.0
            .set_epoch_deadline(limits.timeout.map_or(NO_DEADLINE, ticks));
        if self.engine.metered {
            // Without a budget of its own (a per-submission override) a task is only measured.
            live.0
                .set_fuel(limits.fuel.unwrap_or(u64::MAX))
                .map_err(|e| format!("cannot give the instance fuel: {e:#}"))?;
        }
        Ok(live)
    }

    /// The answer to a call under limits this worker cannot enforce: a fuel limit when its
    /// engine does not count fuel, or a stack limit out of range (its thread's stack is sized
    /// for the largest). The host refuses such calls before sending them; this is the
    /// worker's own check, so a limit is never silently ignored or overrun.
    fn refuse(&self, limits: &Limits) -> Option<Outcome> {
        if let Err(message) = limits.check() {
            return Some(Outcome::BadArgs(message));
        }
        match limits.fuel {
            Some(fuel) if !self.engine.metered => Some(Outcome::BadArgs(format!(
                "a fuel limit ({fuel}) needs a worker that meters fuel: give the pool or \
                 process the fuel limit when it is built"
            ))),
            _ => None,
        }
    }

    /// Runs one task.
    pub fn call(&mut self, id: u64, task: &str, args: &[u8], limits: &Limits) -> Outcome {
        self.fuel_used = None;
        self.watchdog.peak_memory().reset();
        if let Some(refused) = self.refuse(limits) {
            return refused;
        }
        self.objects.begin_call();
        let outcome = self.call_armed(id, task, args, limits);
        self.watchdog.disarm();
        // A put or send the task posted and the host refused fails the task, unless it
        // failed already.
        match (self.objects.end_call(), outcome) {
            (Some(refused), Outcome::Ok(_)) => Outcome::Failed(refused),
            (_, outcome) => outcome,
        }
    }

    fn call_armed(&mut self, id: u64, task: &str, args: &[u8], limits: &Limits) -> Outcome {
        let metered = self.engine.metered;
        let (store, module) = match self.live(id, limits) {
            Ok(l) => l,
            Err(message) => return Outcome::Trap(message),
        };
        let budget = if metered { store.get_fuel().ok() } else { None };
        let result = module
            .wasmpool_task_tasks()
            .call_call(&mut *store, task, args);
        // Out of fuel, none is left: the task used its whole budget.
        let used = budget.map(|b| b.saturating_sub(store.get_fuel().unwrap_or(0)));
        let outcome = match result {
            Ok(result) => convert(result),
            Err(e) => {
                let outcome = failure(store, &e, limits);
                self.live = None;
                outcome
            }
        };
        if let Some(used) = used {
            let total = self.fuel_used.get_or_insert(0);
            *total = total.saturating_add(used);
        }
        outcome
    }

    /// Runs one task per item; returns the answers not sent in parts already (see
    /// [`BatchProgress`]). No item that finished runs again: a panic keeps the outcomes of
    /// the items before it (the guest SDK reports them) and the batch resumes after it in a
    /// fresh instance; after any other trap or a limit, the item that was running fails if
    /// the guest's reports say which it was (it had called `objects`), and the batch resumes
    /// after it; otherwise the items after the last report (which made no call to
    /// `objects`: pure, as far as the host can tell) are run again one by one, so only the
    /// guilty one fails, and the output they wrote, held back, is dropped (they write it
    /// again).
    ///
    /// A time limit applies to each crossing into the guest, and within one to what runs
    /// after each progress report: so to each item that calls `objects`, and to each run of
    /// items that do not (then each of those again on its own if the run exceeds it).
    ///
    /// On a metered worker each item crosses on its own instead (see `call_each`).
    pub fn call_batch(
        &mut self,
        id: u64,
        task: &str,
        items: Packed,
        limits: &Limits,
    ) -> BatchAnswers {
        self.fuel_used = None;
        self.watchdog.peak_memory().reset();
        self.progress.begin(id, items.len());
        if let Some(refused) = self.refuse(limits) {
            for _ in 0..items.len() {
                self.progress.push(refused.clone(), &self.channel);
            }
        } else if self.engine.metered {
            self.call_each(id, task, &items, limits);
        } else {
            self.call_batch_armed(id, task, items, limits);
        }
        self.watchdog.disarm();
        self.progress.finish()
    }

    /// Runs each item in a crossing of its own, under its own fuel budget and time limit:
    /// the fuel an item uses, and whether it runs out, never depends on the other items of
    /// its chunk, so it is the same whatever the chunk size. A metered worker gives up
    /// one-crossing batches for that.
    fn call_each(&mut self, id: u64, task: &str, items: &Packed, limits: &Limits) {
        for (i, item) in items.iter().enumerate() {
            if i > 0 && !self.has_instance() {
                // What the lost instance held is given back before the next one (made for
                // this item) can take anything; the caller reports a loss after the last.
                let _ = self
                    .channel
                    .queue(&FromWorker::Object(ObjectCall::InstanceLost));
            }
            self.run_alone(id, task, item, limits);
        }
    }

    /// Runs one item of a batch in a crossing of its own and records its answer.
    fn run_alone(&mut self, id: u64, task: &str, item: &[u8], limits: &Limits) {
        self.progress.begin_crossing(1, false);
        let outcome = self.call_armed(id, task, item, limits);
        self.progress.push(outcome, &self.channel);
    }

    fn call_batch_armed(&mut self, id: u64, task: &str, items: Packed, limits: &Limits) {
        // The first crossing takes the whole batch as it came; after a failure the
        // guest's reports place, the rest.
        let mut batch = Some(items);
        while let Some(items) = batch.take() {
            let n = items.len();
            let base = self.progress.answered();
            self.progress.begin_crossing(n, true);
            // Output of items that may run again is held back until they are known to
            // have finished; a lone item never runs again.
            let hold = n > 1;
            if hold {
                self.channel.hold_output();
            }
            let (store, module) = match self.live(id, limits) {
                Ok(l) => l,
                Err(message) => {
                    self.channel.end_hold(true);
                    for _ in 0..n {
                        self.progress
                            .push(Outcome::Trap(message.clone()), &self.channel);
                    }
                    break;
                }
            };
            let (result, items) = match (module.batch_packed, module.batch_bytes) {
                (Some(func), _) => bindings::call_batch_packed(store, func, task, items),
                (None, Some(func)) => {
                    (bindings::call_batch_bytes(store, func, task, &items), items)
                }
                (None, None) => {
                    // Moved into the call (no copy) and recovered from it.
                    let wit = bindings::Packed {
                        data: items.data,
                        ends: items.ends,
                    };
                    let result =
                        module
                            .wasmpool_task_tasks()
                            .call_call_batch(&mut *store, task, &wit);
                    let items = Packed {
                        data: wit.data,
                        ends: wit.ends,
                    };
                    (result, items)
                }
            };
            let e = match result {
                Ok(out) => {
                    self.channel.end_hold(true);
                    let expected = n.saturating_sub(self.progress.answered() - base);
                    self.record_batch(out, expected);
                    break;
                }
                Err(e) => e,
            };
            let report = store.data_mut().panic.take();
            let limited = is_limit(store, &e);
            let outcome = match &report {
                Some(report) if !limited => Outcome::Failed(report.message.clone()),
                _ => failure(store, &e, limits),
            };
            self.live = None;
            // What the lost instance held is given back before a new one (for the rest of
            // the batch) can take anything.
            let _ = self
                .channel
                .queue(&FromWorker::Object(ObjectCall::InstanceLost));
            // Items of this crossing the guest reported finished.
            let reported = self.progress.answered().saturating_sub(base);
            let stopped = self.progress.stopped();
            // The item that stopped, when it is known (and nothing after it started).
            let guilty = match report {
                Some(report) if !limited => {
                    let at = reported + report.completed.len();
                    for done in report
                        .completed
                        .into_iter()
                        .take(n.saturating_sub(reported))
                    {
                        self.progress.push(convert(done), &self.channel);
                    }
                    Some(at)
                }
                _ if n == 1 || stopped == Stopped::InItem => Some(reported),
                _ => None,
            };
            match guilty {
                Some(at) if at < n => {
                    self.channel.end_hold(true);
                    self.progress.push(outcome, &self.channel);
                    let mut rest = Packed::with_capacity(n - at - 1, 0);
                    for item in (at + 1..n).filter_map(|i| items.get(i)) {
                        rest.push(item);
                    }
                    if !rest.is_empty() {
                        batch = Some(rest);
                    }
                }
                Some(_) => {
                    // The guest reported every item finished, then stopped: nothing is left.
                    self.channel.end_hold(true);
                }
                None => {
                    // Run again, one by one, the items after the last report: they made no
                    // call to `objects` (or the guest does not say), and what they wrote is
                    // dropped, to be written again.
                    self.channel.end_hold(false);
                    for i in reported..n {
                        if i > reported && !self.has_instance() {
                            let _ = self
                                .channel
                                .queue(&FromWorker::Object(ObjectCall::InstanceLost));
                        }
                        let item = items.get(i).unwrap_or_default();
                        self.run_alone(id, task, item, limits);
                    }
                    break;
                }
            }
        }
    }

    /// Records a crossing's answers, item by item: `expected` of them (those not reported
    /// already). A module that answers fewer fails the missing items; more are ignored.
    fn record_batch(&mut self, out: BatchOutcome, expected: usize) {
        let BatchOutcome { results, errors } = out;
        let results = Packed {
            data: results.data,
            ends: results.ends,
        };
        let answered = results.len();
        // The common case: every item succeeded; the guest's buffers are the answer.
        let Some(results) = (match errors.is_empty() && answered == expected {
            true => self.progress.take_whole(results),
            false => Some(results),
        }) else {
            return;
        };
        let mut errors = errors.into_iter().peekable();
        for (i, bytes) in results.iter().take(expected).enumerate() {
            let outcome = match errors.next_if(|(at, _)| *at as usize == i) {
                Some((_, e)) => convert(Err(e)),
                None => Outcome::Ok(bytes.to_vec()),
            };
            self.progress.push(outcome, &self.channel);
        }
        for _ in answered..expected {
            let why = format!("the module's call-batch answered {answered} of {expected} items");
            self.progress.push(Outcome::Trap(why), &self.channel);
        }
    }
}

/// What the epoch deadline of a call's store does when it comes: traps if the call (or,
/// inside a batch, what ran since the guest's last progress report) has run for its whole
/// time limit, and otherwise moves the deadline to when it would have.
fn past_deadline(state: &InstanceState) -> UpdateDeadline {
    let Some(timeout) = state.clock.timeout else {
        return UpdateDeadline::Continue(NO_DEADLINE);
    };
    let started = state
        .progress
        .last_report()
        .map_or(state.clock.started, |r| r.max(state.clock.started));
    let ran = started.elapsed();
    if ran >= timeout {
        UpdateDeadline::Interrupt
    } else {
        UpdateDeadline::Continue(ticks(timeout - ran))
    }
}

/// Loads the artifact into the engine for `engine` and `stack_bytes`, ready to instantiate.
/// The stack limit a worker loads its module for: the one asked for, or the default when it
/// is out of range (a call asking for such a limit is refused anyway).
pub(super) fn usable_stack(stack_bytes: u64) -> u64 {
    let asked = Limits {
        stack_bytes,
        ..Limits::default()
    };
    match asked.check() {
        Ok(()) => stack_bytes,
        Err(_) => Limits::DEFAULT_STACK_BYTES,
    }
}

/// Maps the compiled module into the engine of kind `kind` and `stack_bytes`, and links it.
pub(super) fn prepare(
    artifact: &Path,
    kind: EngineKind,
    stack_bytes: u64,
) -> Result<TaskModulePre<InstanceState>, String> {
    let engine = engine_with(kind, stack_bytes)?;
    // SAFETY: the host wrote this artifact into its own content-addressed cache from a
    // component it compiled and validated with the same engine configuration (the stack
    // limit, which may differ, is not part of the compiled code).
    let component = unsafe { Component::deserialize_file(engine, artifact) }
        .map_err(|e| cannot_load(artifact, &e))?;
    link(engine, &component)
}

/// As [`prepare`], from the artifact already open as `file` (named `artifact` in errors):
/// its bytes are read and loaded, whatever is at its path now.
pub(super) fn prepare_open(
    file: &std::fs::File,
    artifact: &Path,
    kind: EngineKind,
    stack_bytes: u64,
) -> Result<TaskModulePre<InstanceState>, String> {
    use std::io::{Read, Seek};
    let engine = engine_with(kind, stack_bytes)?;
    let mut reader = file;
    let mut bytes = Vec::new();
    reader
        .seek(std::io::SeekFrom::Start(0))
        .and_then(|_| reader.read_to_end(&mut bytes))
        .map_err(|e| cannot_load(artifact, &e))?;
    // SAFETY: as in `prepare`: these are the bytes of the artifact the host wrote and
    // verified, read from the file the worker opened when it loaded the module.
    let component =
        unsafe { Component::deserialize(engine, &bytes) }.map_err(|e| cannot_load(artifact, &e))?;
    link(engine, &component)
}

/// Why `artifact` could not be loaded, as a call's or a load's error says it.
fn cannot_load(artifact: &Path, e: &dyn std::fmt::Display) -> String {
    format!(
        "cannot load the compiled module {}: {e:#}",
        artifact.display()
    )
}

/// Links `component` for the task world, ready to instantiate.
fn link(
    engine: &wasmtime::Engine,
    component: &Component,
) -> Result<TaskModulePre<InstanceState>, String> {
    let linker = crate::bindings::linker_for::<InstanceState>(engine, component)
        .map_err(|e| format!("{e:#}"))?;
    let instance_pre = linker
        .instantiate_pre(component)
        .map_err(|e| format!("{e:#}"))?;
    TaskModulePre::new(instance_pre).map_err(|e| format!("{e:#}"))
}

fn is_limit(store: &Store<InstanceState>, e: &wasmtime::Error) -> bool {
    store.data().limiter.exceeded
        || store.data().channel.output_exceeded()
        || matches!(
            e.downcast_ref::<Trap>(),
            Some(Trap::Interrupt | Trap::OutOfFuel | Trap::StackOverflow)
        )
}

/// What went wrong in a module's `stage` (instantiation, init) that trapped or hit a limit.
fn init_failure(
    stage: &str,
    store: &mut Store<InstanceState>,
    e: &wasmtime::Error,
    limits: &Limits,
) -> String {
    match failure(store, e, limits) {
        Outcome::Limit(why) => format!("the module's {stage} {why}"),
        Outcome::Failed(why) | Outcome::Trap(why) => format!("the module's {stage} trapped: {why}"),
        _ => format!("the module's {stage} trapped: {}", describe_trap(e)),
    }
}

/// The MessagePack nil: what a task that exits with status 0 returns, as a Python task that
/// calls `sys.exit(0)` ends successfully with no value.
const NIL: u8 = 0xc0;

/// How a call that returned an error ended: an exit, a limit, a panic, or another trap.
fn failure(store: &mut Store<InstanceState>, e: &wasmtime::Error, limits: &Limits) -> Outcome {
    if let Some(exit) = e.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return match exit.0 {
            0 => Outcome::Ok(vec![NIL]),
            status => Outcome::Failed(format!(
                "{EXIT_STATUS}{status} (`exit` called in the task; WASI 0.2 carries only \
                 success or failure)"
            )),
        };
    }
    if store.data().limiter.exceeded {
        return Outcome::Limit(format!(
            "exceeded its memory limit of {} MiB",
            limits.memory_bytes >> 20
        ));
    }
    if store.data().channel.output_exceeded() {
        return Outcome::Limit(format!(
            "exceeded its output limit of {}",
            describe_bytes(limits.output_bytes)
        ));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
        return Outcome::Limit(time_limit_message(limits.timeout.unwrap_or_default()));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::StackOverflow) {
        return Outcome::Limit(format!(
            "exceeded its stack limit of {} (stack overflow)",
            describe_bytes(limits.stack_bytes)
        ));
    }
    if e.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Outcome::Limit(match limits.fuel {
            Some(fuel) => format!("ran out of fuel: it used its fuel limit of {fuel}"),
            None => "ran out of fuel".to_string(),
        });
    }
    match store.data_mut().panic.take() {
        Some(report) => Outcome::Failed(report.message),
        None => Outcome::Trap(describe_trap(e)),
    }
}

/// An outcome as the WIT world gives it, as the protocol carries it.
pub(super) fn convert(result: Result<Vec<u8>, TaskError>) -> Outcome {
    match result {
        Ok(bytes) => Outcome::Ok(bytes),
        Err(TaskError::Failed(m)) => Outcome::Failed(m),
        Err(TaskError::UnknownTask(_)) => Outcome::UnknownTask,
        Err(TaskError::BadArgs(m)) => Outcome::BadArgs(m),
    }
}

/// A one-line description of a trap.
fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::StackOverflow) => "stack overflow".to_string(),
        Some(trap) => trap.to_string(),
        None => format!("{e:#}")
            .lines()
            .next()
            .unwrap_or("trap")
            .to_string(),
    }
}
