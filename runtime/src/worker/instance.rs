//! One live instance of the guest component, rebuilt after a trap.

use std::path::Path;
use std::sync::Arc;

use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Store, Trap};
use wasmtime_wasi::WasiCtxBuilder;

use super::output::{Channel, GuestOutput};
use super::state::{ProcessIdentity, State};
use crate::bindings::{TaskError, TaskModule, TaskModulePre};
use crate::engine::engine;
use crate::protocol::{Outcome, Stream};

/// The loaded module and, while it is healthy, its instance.
pub(crate) struct Loaded {
    pre: TaskModulePre<State>,
    identity: Arc<ProcessIdentity>,
    channel: Arc<Channel>,
    live: Option<(Store<State>, TaskModule)>,
    tasks: Vec<String>,
}

impl Loaded {
    /// Maps the artifact, instantiates it, runs the guest's init and asks for its tasks.
    pub fn new(
        artifact: &Path,
        identity: Arc<ProcessIdentity>,
        channel: Arc<Channel>,
    ) -> Result<Self, String> {
        let engine = engine();
        // SAFETY: the host wrote this artifact into its own content-addressed cache from a
        // component it compiled and validated with the same engine configuration.
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
        let pre = TaskModulePre::new(instance_pre).map_err(|e| format!("{e:#}"))?;
        let mut loaded = Loaded {
            pre,
            identity,
            channel,
            live: None,
            tasks: Vec::new(),
        };
        let (store, module) = loaded.instantiate()?;
        loaded.live = Some((store, module));
        if let Some((store, module)) = loaded.live.as_mut() {
            loaded.tasks = module
                .wasmpool_task_tasks()
                .call_list_tasks(store)
                .map_err(|e| describe_trap(&e))?;
        }
        Ok(loaded)
    }

    pub fn tasks(&self) -> &[String] {
        &self.tasks
    }

    fn instantiate(&self) -> Result<(Store<State>, TaskModule), String> {
        let wasi = WasiCtxBuilder::new()
            .stdout(GuestOutput {
                stream: Stream::Stdout,
                channel: self.channel.clone(),
            })
            .stderr(GuestOutput {
                stream: Stream::Stderr,
                channel: self.channel.clone(),
            })
            .build();
        let state = State {
            wasi,
            table: ResourceTable::new(),
            identity: self.identity.clone(),
            panic: None,
        };
        let mut store = Store::new(self.pre.engine(), state);
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

    /// The live instance, rebuilt if the last call trapped.
    fn live(&mut self) -> Result<&mut (Store<State>, TaskModule), String> {
        if self.live.is_none() {
            self.live = Some(self.instantiate()?);
        }
        self.live.as_mut().ok_or_else(|| "no instance".to_string())
    }

    /// Runs one task.
    pub fn call(&mut self, task: &str, args: &[u8]) -> Outcome {
        let (store, module) = match self.live() {
            Ok(l) => l,
            Err(message) => return Outcome::Trap(message),
        };
        match module
            .wasmpool_task_tasks()
            .call_call(&mut *store, task, args)
        {
            Ok(result) => convert(result),
            Err(e) => {
                let outcome = match store.data_mut().panic.take() {
                    Some(report) => Outcome::Failed(report.message),
                    None => Outcome::Trap(describe_trap(&e)),
                };
                self.live = None;
                outcome
            }
        }
    }

    /// Runs one task per item. A panic keeps the outcomes of the items before it (the guest
    /// SDK reports them) and the batch resumes after it in a fresh instance; after any other
    /// trap, the items are re-run one by one so only the guilty item fails.
    pub fn call_batch(&mut self, task: &str, items: Vec<Vec<u8>>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(items.len());
        let mut start = 0;
        while start < items.len() {
            let (store, module) = match self.live() {
                Ok(l) => l,
                Err(message) => {
                    outcomes.extend(
                        items[start..]
                            .iter()
                            .map(|_| Outcome::Trap(message.clone())),
                    );
                    break;
                }
            };
            let rest = &items[start..];
            match module
                .wasmpool_task_tasks()
                .call_call_batch(&mut *store, task, rest)
            {
                Ok(results) => {
                    outcomes.extend(results.into_iter().map(convert));
                    break;
                }
                Err(e) => {
                    let report = store.data_mut().panic.take();
                    self.live = None;
                    match report {
                        Some(report) => {
                            let done = report.completed.len();
                            outcomes.extend(report.completed.into_iter().map(convert));
                            outcomes.push(Outcome::Failed(report.message));
                            start += done + 1;
                        }
                        None => {
                            let _ = e;
                            for item in rest {
                                outcomes.push(self.call(task, item));
                            }
                            break;
                        }
                    }
                }
            }
        }
        outcomes
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
        Some(trap) => trap.to_string(),
        None => {
            let text = format!("{e:#}");
            text.lines().next().unwrap_or("trap").to_string()
        }
    }
}
