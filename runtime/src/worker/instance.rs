//! One live instance of the guest component, rebuilt after a trap or a limit.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::objects::ObjectClient;
use super::output::{Channel, GuestOutput};
use super::state::{MemoryLimiter, ProcessIdentity, State};
use super::watchdog::{Watchdog, ticks, time_limit_message};
use crate::bindings::{self, BatchOutcome, TaskError, TaskModule, TaskModulePre};
use crate::engine::engine_with;
use crate::grants::Grants;
use crate::packed::{BatchAnswers, Packed};
use crate::protocol::{FromWorker, Limits, Load, Outcome, Stream, describe_bytes};

/// Deadline for calls without a time limit: effectively never.
const NO_DEADLINE: u64 = u64::MAX / 4;

/// The loaded module and, while it is healthy, its instance.
pub(crate) struct Loaded {
    pre: TaskModulePre<State>,
    /// The artifact `pre` was made from, to load again into an engine with another stack limit.
    artifact: PathBuf,
    /// The wasm stack limit of `pre`'s engine, in bytes.
    stack_bytes: u64,
    identity: Arc<ProcessIdentity>,
    channel: Arc<Channel>,
    live: Option<(Store<State>, TaskModule)>,
    tasks: Vec<String>,
    watchdog: Arc<Watchdog>,
    objects: Arc<ObjectClient>,
    grants: Grants,
    /// Whether the engine counts fuel (the artifact was compiled for the metered engine).
    metered: bool,
    /// Fuel used by the current call (every item of a batch), when metered.
    fuel_used: Option<u64>,
}

impl Loaded {
    /// Instantiates the module `load` names, runs the guest's init and asks for its tasks.
    /// `pre` is that module, prepared (by [`prepare`]) for the engine of `load.metered` and
    /// `load.stack_bytes`: the stack limit its tasks will likely ask for.
    pub fn new(
        pre: TaskModulePre<State>,
        load: &Load,
        identity: Arc<ProcessIdentity>,
        channel: Arc<Channel>,
        watchdog: Arc<Watchdog>,
        objects: Arc<ObjectClient>,
    ) -> Result<Self, String> {
        let mut loaded = Loaded {
            pre,
            artifact: load.artifact.clone(),
            stack_bytes: load.stack_bytes,
            identity,
            channel,
            live: None,
            tasks: Vec::new(),
            watchdog,
            objects,
            grants: Grants::default(),
            metered: load.metered,
            fuel_used: None,
        };
        let (mut store, module) = loaded.instantiate()?;
        loaded.tasks = module
            .wasmpool_task_tasks()
            .call_list_tasks(&mut store)
            .map_err(|e| describe_trap(&e))?;
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
            let _ = self.channel.queue(&FromWorker::InstanceLost);
        }
    }

    fn instantiate(&self) -> Result<(Store<State>, TaskModule), String> {
        let mut wasi = WasiCtxBuilder::new();
        wasi.stdout(GuestOutput {
            stream: Stream::Stdout,
            channel: self.channel.clone(),
        })
        .stderr(GuestOutput {
            stream: Stream::Stderr,
            channel: self.channel.clone(),
        });
        self.grants.apply(&mut wasi)?;
        let wasi = wasi.build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            identity: self.identity.clone(),
            panic: None,
            objects: self.objects.clone(),
            channel: self.channel.clone(),
            limiter: MemoryLimiter {
                max_bytes: Limits::default().memory_bytes,
                exceeded: false,
            },
        };
        let mut store = Store::new(self.pre.engine(), state);
        if self.metered {
            // Instantiation and the guest's init are not any task's: they run unmetered.
            store
                .set_fuel(u64::MAX)
                .map_err(|e| format!("cannot give the instance fuel: {e:#}"))?;
        }
        store.limiter(|s| &mut s.limiter);
        store.epoch_deadline_trap();
        store.set_epoch_deadline(NO_DEADLINE);
        let module = self
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("cannot instantiate the module: {e:#}"))?;
        match module.wasmpool_task_tasks().call_init(&mut store) {
            Ok(Ok(())) => Ok((store, module)),
            Ok(Err(message)) => Err(format!("the module's init failed: {message}")),
            Err(e) => Err(format!(
                "the module's init trapped: {}",
                panic_or_trap(&mut store, &e)
            )),
        }
    }

    /// The live instance (rebuilt if the last call trapped), prepared for a call under `limits`.
    fn live(
        &mut self,
        id: u64,
        limits: &Limits,
    ) -> Result<&mut (Store<State>, TaskModule), String> {
        // Armed first: a fresh instance's init prints under this call's budget, not under
        // whatever the last call (perhaps one stopped by its output limit) left.
        self.channel.arm_output(limits.output_bytes);
        if limits.stack_bytes != self.stack_bytes {
            // Another stack limit is another engine: the module is loaded into it, and the
            // instance (of the old engine) is made again, as after a trap.
            self.discard_instance();
            self.pre = prepare(&self.artifact, self.metered, limits.stack_bytes)?;
            self.stack_bytes = limits.stack_bytes;
        }
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        self.watchdog.arm(id, limits.timeout);
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| "no instance".to_string())?;
        live.0.data_mut().limiter = MemoryLimiter {
            max_bytes: limits.memory_bytes,
            exceeded: false,
        };
        live.0
            .set_epoch_deadline(limits.timeout.map_or(NO_DEADLINE, ticks));
        if self.metered {
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
            Some(fuel) if !self.metered => Some(Outcome::BadArgs(format!(
                "a fuel limit ({fuel}) needs a worker that meters fuel: give the pool or \
                 process the fuel limit when it is built"
            ))),
            _ => None,
        }
    }

    /// Runs one task.
    pub fn call(&mut self, id: u64, task: &str, args: &[u8], limits: &Limits) -> Outcome {
        self.fuel_used = None;
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
        let metered = self.metered;
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

    /// Runs one task per item. A panic keeps the outcomes of the items before it (the guest
    /// SDK reports them) and the batch resumes after it in a fresh instance; after any other
    /// trap, the items are re-run one by one so only the guilty item fails.
    ///
    /// A time limit applies to each crossing into the guest: the whole batch first, then each
    /// item on its own if the batch hits it, so the item that exceeded it is the one that fails.
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
        if let Some(refused) = self.refuse(limits) {
            let mut answers = BatchAnswers::with_capacity(items.len());
            for _ in 0..items.len() {
                answers.push(refused.clone());
            }
            return answers;
        }
        let answers = if self.metered {
            self.call_each(id, task, &items, limits)
        } else {
            self.call_batch_armed(id, task, items, limits)
        };
        self.watchdog.disarm();
        answers
    }

    /// Runs each item in a crossing of its own, under its own fuel budget and time limit:
    /// the fuel an item uses, and whether it runs out, never depends on the other items of
    /// its chunk, so it is the same whatever the chunk size. A metered worker gives up
    /// one-crossing batches for that.
    fn call_each(&mut self, id: u64, task: &str, items: &Packed, limits: &Limits) -> BatchAnswers {
        let mut answers = BatchAnswers::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            if i > 0 && !self.has_instance() {
                // What the lost instance held is given back before the next one (made for
                // this item) can take anything; the caller reports a loss after the last.
                let _ = self.channel.queue(&FromWorker::InstanceLost);
            }
            answers.push(self.call_armed(id, task, item, limits));
        }
        answers
    }

    fn call_batch_armed(
        &mut self,
        id: u64,
        task: &str,
        items: Packed,
        limits: &Limits,
    ) -> BatchAnswers {
        let mut answers = BatchAnswers::with_capacity(items.len());
        // The first crossing takes the whole batch as it came; after a panic, the rest.
        let mut batch = Some(items);
        while let Some(items) = batch.take() {
            let (store, module) = match self.live(id, limits) {
                Ok(l) => l,
                Err(message) => {
                    for _ in 0..items.len() {
                        answers.push(Outcome::Trap(message.clone()));
                    }
                    break;
                }
            };
            // Moved into the call (no copy) and recovered from it only on the slow paths.
            let n = items.len();
            let wit = bindings::Packed {
                data: items.data,
                ends: items.ends,
            };
            match module
                .wasmpool_task_tasks()
                .call_call_batch(&mut *store, task, &wit)
            {
                Ok(out) => {
                    append_batch(&mut answers, out);
                    break;
                }
                Err(e) => {
                    let report = store.data_mut().panic.take();
                    let limited = is_limit(store, &e);
                    self.live = None;
                    // What the lost instance held is given back before a new one (for the
                    // rest of the batch) can take anything.
                    let _ = self.channel.queue(&FromWorker::InstanceLost);
                    let items = Packed {
                        data: wit.data,
                        ends: wit.ends,
                    };
                    match report {
                        Some(report) if !limited && report.completed.len() < n => {
                            let done = report.completed.len();
                            for outcome in report.completed {
                                answers.push(convert(outcome));
                            }
                            answers.push(Outcome::Failed(report.message));
                            let mut rest = Packed::with_capacity(n - done - 1, 0);
                            for item in (done + 1..n).filter_map(|i| items.get(i)) {
                                rest.push(item);
                            }
                            if !rest.is_empty() {
                                batch = Some(rest);
                            }
                        }
                        _ => {
                            // A trap or a limit: re-run each item on its own, so only the
                            // guilty one fails.
                            for item in items.iter() {
                                answers.push(self.call_armed(id, task, item, limits));
                            }
                            break;
                        }
                    }
                }
            }
        }
        answers
    }
}

/// Loads the artifact into the engine for `metered` and `stack_bytes`, ready to instantiate.
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

/// Maps the compiled module into the engine of `metered` and `stack_bytes`, and links it.
pub(super) fn prepare(
    artifact: &Path,
    metered: bool,
    stack_bytes: u64,
) -> Result<TaskModulePre<State>, String> {
    let engine = engine_with(metered, stack_bytes)?;
    // SAFETY: the host wrote this artifact into its own content-addressed cache from a
    // component it compiled and validated with the same engine configuration (the stack
    // limit, which may differ, is not part of the compiled code).
    let component = unsafe { Component::deserialize_file(engine, artifact) }.map_err(|e| {
        format!(
            "cannot load the compiled module {}: {e:#}",
            artifact.display()
        )
    })?;
    let linker = crate::bindings::linker::<State>(engine).map_err(|e| format!("{e:#}"))?;
    let instance_pre = linker
        .instantiate_pre(&component)
        .map_err(|e| format!("{e:#}"))?;
    TaskModulePre::new(instance_pre).map_err(|e| format!("{e:#}"))
}

fn is_limit(store: &Store<State>, e: &wasmtime::Error) -> bool {
    store.data().limiter.exceeded
        || store.data().channel.output_exceeded()
        || matches!(
            e.downcast_ref::<Trap>(),
            Some(Trap::Interrupt | Trap::OutOfFuel | Trap::StackOverflow)
        )
}

/// How a call that returned an error ended: a limit, a panic, or another trap.
fn failure(store: &mut Store<State>, e: &wasmtime::Error, limits: &Limits) -> Outcome {
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

/// Appends a guest's batch outcome to `answers`, item by item.
fn append_batch(answers: &mut BatchAnswers, out: BatchOutcome) {
    let BatchOutcome { results, errors } = out;
    let results = Packed {
        data: results.data,
        ends: results.ends,
    };
    if errors.is_empty() && answers.len() == 0 {
        // The common case: every item succeeded; the guest's buffers are the answer.
        answers.results = results;
        return;
    }
    let mut errors = errors.into_iter().peekable();
    for (i, bytes) in results.iter().enumerate() {
        match errors.next_if(|(at, _)| *at as usize == i) {
            Some((_, e)) => answers.push(convert(Err(e))),
            None => answers.push(Outcome::Ok(bytes.to_vec())),
        }
    }
}

fn convert(result: Result<Vec<u8>, TaskError>) -> Outcome {
    match result {
        Ok(bytes) => Outcome::Ok(bytes),
        Err(TaskError::Failed(m)) => Outcome::Failed(m),
        Err(TaskError::UnknownTask(_)) => Outcome::UnknownTask,
        Err(TaskError::BadArgs(m)) => Outcome::BadArgs(m),
    }
}

fn panic_or_trap(store: &mut Store<State>, e: &wasmtime::Error) -> String {
    match store.data_mut().panic.take() {
        Some(report) => report.message,
        None => describe_trap(e),
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
