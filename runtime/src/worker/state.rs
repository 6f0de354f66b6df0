//! The per-instance store state: WASI context, resource table, and the wasmpool host
//! interface (process identity, panic reports).

use std::sync::atomic::{AtomicU64, Ordering};
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
/// It also counts the instance's linear memory, for the peak each call reports.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    pub max_bytes: u64,
    pub exceeded: bool,
    /// The instance's linear memory, all its memories together, in bytes: what the growths
    /// allowed so far add up to (wasmtime creates a memory by growing it from 0 to its
    /// initial size, and a memory never shrinks). A growth allowed here that the host then
    /// could not make (out of memory itself) still counts: wasmtime's failure notice does
    /// not say which growth failed.
    size_bytes: u64,
    /// The running call's peak, raised as the memory grows.
    peak: Arc<PeakMemory>,
}

impl MemoryLimiter {
    /// A limiter for a new instance (no memory yet) under `max_bytes` per memory, raising
    /// `peak` as the instance's memory grows.
    pub fn new(max_bytes: u64, peak: Arc<PeakMemory>) -> Self {
        MemoryLimiter {
            max_bytes,
            exceeded: false,
            size_bytes: 0,
            peak,
        }
    }

    /// The instance's linear memory now, in bytes (all its memories together).
    pub fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
}

/// The largest linear memory the instance running a call had while the call ran, in bytes:
/// its memory when the call began (what earlier calls and the init left, since memory never
/// shrinks) and every growth during it; across instances when the call's instance was
/// replaced (a batch resumed after a trap). One per worker, reset as each call begins; shared
/// by the instances' limiters, the worker loop and the watchdog (which answers for a call it
/// stops).
#[derive(Debug, Default)]
pub(crate) struct PeakMemory(AtomicU64);

impl PeakMemory {
    /// A call begins: nothing of it is counted yet.
    pub fn reset(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The call's instance has `bytes` of linear memory now.
    pub fn raise(&self, bytes: u64) {
        self.0.fetch_max(bytes, Ordering::Relaxed);
    }

    /// The peak so far, in bytes.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max_bytes {
            self.exceeded = true;
            wasmtime::bail!("memory limit of {} bytes reached", self.max_bytes);
        }
        let allowed = maximum.is_none_or(|m| desired <= m);
        if allowed {
            let grown = desired.saturating_sub(current) as u64;
            self.size_bytes = self.size_bytes.saturating_add(grown);
            self.peak.raise(self.size_bytes);
        }
        Ok(allowed)
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
