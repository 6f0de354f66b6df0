//! The per-instance store state: WASI context, resource table, and the wasmpool host
//! interface (process identity, panic reports).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::objects::ObjectClient;
use super::output::Channel;
use super::progress::BatchProgress;
use crate::bindings::{self, Identity, TaskError, objects};

/// What a panic hook reported just before its trap.
#[derive(Debug)]
pub(crate) struct PanicReport {
    pub message: String,
    pub completed: Vec<Result<Vec<u8>, TaskError>>,
}

/// Identity shared by every instance of one worker process.
#[derive(Debug)]
pub(crate) struct ProcessIdentity {
    pub pid: u32,
    pub ppid: u32,
    pub name: Mutex<String>,
}

pub(crate) struct InstanceState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub identity: Arc<ProcessIdentity>,
    pub panic: Option<PanicReport>,
    pub limiter: MemoryLimiter,
    pub objects: Arc<ObjectClient>,
    /// The worker's channel to the host (the guest's output goes through it).
    pub channel: Arc<Channel>,
    /// What the running batch has done so far.
    pub progress: Arc<BatchProgress>,
    /// The running call's time limit, and when it began.
    pub clock: CallClock,
}

/// The time limit of the running call, and when it began.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CallClock {
    pub timeout: Option<Duration>,
    pub started: Instant,
}

impl Default for CallClock {
    fn default() -> Self {
        CallClock {
            timeout: None,
            started: Instant::now(),
        }
    }
}

/// Refuses memory growth past the limit with a trap, and remembers that it did, so the
/// failure is reported as "memory limit" rather than as whatever the guest's allocator does.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub max_bytes: u64,
    pub exceeded: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.max_bytes);
        }
        Ok(maximum.is_none_or(|m| desired <= m))
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000 && maximum.is_none_or(|m| desired <= m))
    }
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl bindings::Host for InstanceState {
    fn process_info(&mut self) -> Identity {
        let name = match self.identity.name.lock() {
            Ok(n) => n.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        Identity {
            pid: self.identity.pid,
            ppid: self.identity.ppid,
            name,
        }
    }

    fn report_panic(&mut self, message: String, completed: Vec<Result<Vec<u8>, TaskError>>) {
        self.panic = Some(PanicReport { message, completed });
    }

    fn batch_progress(&mut self, completed: Vec<Result<Vec<u8>, TaskError>>) {
        let completed = completed
            .into_iter()
            .map(super::instance::convert)
            .collect();
        self.progress.report(completed, &self.channel);
    }
}

impl bindings::wasmpool::task::types::Host for InstanceState {}

impl objects::Host for InstanceState {
    fn invoke(
        &mut self,
        target: objects::Handle,
        req: objects::Request,
        timeout_ms: Option<u64>,
    ) -> Result<objects::Response, objects::ObjectError> {
        self.progress.effect(&self.channel);
        self.objects.invoke(target, req, timeout_ms)
    }

    fn invoke_more(
        &mut self,
        target: objects::Handle,
        req: objects::MoreRequest,
        timeout_ms: Option<u64>,
    ) -> Result<objects::MoreResponse, objects::ObjectError> {
        self.progress.effect(&self.channel);
        self.objects.invoke_more(target, req, timeout_ms)
    }
}
