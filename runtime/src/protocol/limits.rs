//! [`Limits`]: what one task run may use, enforced in the worker.

use serde::{Deserialize, Serialize};

/// Limits on one task run, enforced in the worker.
///
/// ```
/// use std::time::Duration;
/// let limits = wasmpool::Limits::default().timeout(Duration::from_secs(5)).memory_mib(64);
/// assert_eq!(limits.memory_bytes, 64 << 20);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// The most linear memory the instance may grow to, in bytes (default 256 MiB).
    pub memory_bytes: u64,
    /// The longest a task may run, wall clock, including time blocked in host calls such as
    /// sleep (default: none, as in Python).
    pub timeout: Option<std::time::Duration>,
    /// The most bytes a task may write to stdout and stderr together (default 64 MiB); a
    /// task that writes more is stopped with an "output limit" error.
    pub output_bytes: u64,
    /// The most fuel a task may use (default: none, no metering). Fuel counts the wasm
    /// instructions a task executes, so the same task on the same input uses the same fuel
    /// on every run and every machine; a task that uses it up is stopped with an "out of
    /// fuel" error. Time spent in host calls (sleeping, waiting on a queue) uses no fuel.
    ///
    /// A pool or process built with a fuel limit runs on an engine that counts fuel, which
    /// makes wasm code slower; others pay nothing for it.
    pub fuel: Option<u64>,
    /// The most wasm stack a task may use, in bytes (default 1 MiB, from
    /// [`Limits::MIN_STACK_BYTES`] to [`Limits::MAX_STACK_BYTES`]); a task that recurses
    /// deeper is stopped with a "stack overflow" error.
    pub stack_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            timeout: None,
            output_bytes: 64 << 20,
            fuel: None,
            stack_bytes: Self::DEFAULT_STACK_BYTES,
        }
    }
}

impl Limits {
    /// The default stack limit (1 MiB).
    pub const DEFAULT_STACK_BYTES: u64 = 1 << 20;
    /// The smallest stack limit a task may be given (64 KiB).
    pub const MIN_STACK_BYTES: u64 = 64 << 10;
    /// The largest stack limit a task may be given (64 MiB): the worker runs tasks on a
    /// thread with this much stack and a margin for the host functions below it.
    pub const MAX_STACK_BYTES: u64 = 64 << 20;

    /// Sets the wasm stack limit per task, in KiB.
    ///
    /// ```
    /// let limits = wasmpool::Limits::default().stack_kib(256);
    /// assert_eq!(limits.stack_bytes, 256 << 10);
    /// assert!(limits.check().is_ok());
    /// assert!(wasmpool::Limits::default().stack_kib(1).check().is_err());
    /// ```
    pub fn stack_kib(mut self, kib: u64) -> Self {
        self.stack_bytes = kib.saturating_mul(1 << 10);
        self
    }

    /// The largest memory limit a task may be given (4 GiB): all that a wasm32 memory can
    /// address (65536 pages of 64 KiB). A larger limit could never be reached, so it is
    /// refused rather than accepted as if it meant something.
    pub const MAX_MEMORY_BYTES: u64 = 4 << 30;
    /// The longest time limit a task may be given (365 days); for no limit at all, leave
    /// [`Limits::timeout`] unset. Longer limits are refused: deadlines are kept as instants
    /// and clock ticks, which far longer ones would overflow.
    pub const MAX_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);

    /// Whether these limits can be enforced: the stack limit within its bounds, the memory
    /// limit from 1 byte to [`Limits::MAX_MEMORY_BYTES`], and the time limit, if any, more
    /// than zero and at most [`Limits::MAX_TIMEOUT`]. Pools and processes check their limits
    /// before running anything, so a bad value fails there, with this text.
    ///
    /// ```
    /// let limits = wasmpool::Limits::default().memory_mib(5000);
    /// assert!(limits.check().unwrap_err().contains("4096 MiB"));
    /// ```
    pub fn check(&self) -> Result<(), String> {
        if !(Self::MIN_STACK_BYTES..=Self::MAX_STACK_BYTES).contains(&self.stack_bytes) {
            return Err(format!(
                "a stack limit of {} is out of range: it must be from {} to {}",
                describe_bytes(self.stack_bytes),
                describe_bytes(Self::MIN_STACK_BYTES),
                describe_bytes(Self::MAX_STACK_BYTES)
            ));
        }
        if self.memory_bytes == 0 {
            return Err("a memory limit of 0 bytes leaves a task no memory at all".into());
        }
        if self.memory_bytes > Self::MAX_MEMORY_BYTES {
            return Err(format!(
                "a memory limit of {} is more than a wasm32 instance can address: it must be \
                 at most {}",
                describe_bytes(self.memory_bytes),
                describe_bytes(Self::MAX_MEMORY_BYTES)
            ));
        }
        match self.timeout {
            Some(t) if t.is_zero() => {
                return Err("a time limit of zero stops every task before it starts".into());
            }
            Some(t) if t > Self::MAX_TIMEOUT => {
                return Err(format!(
                    "a time limit of {}s is too long: it must be at most {}s (365 days); \
                     leave it unset for none",
                    t.as_secs(),
                    Self::MAX_TIMEOUT.as_secs()
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Sets the wall-clock time limit per task.
    pub fn timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the memory limit per instance, in MiB.
    pub fn memory_mib(mut self, mib: u64) -> Self {
        self.memory_bytes = mib.saturating_mul(1 << 20);
        self
    }

    /// Sets the output limit per task (stdout and stderr together), in bytes.
    pub fn output_bytes(mut self, bytes: u64) -> Self {
        self.output_bytes = bytes;
        self
    }

    /// Sets the fuel budget per task: deterministic CPU metering (see [`Limits::fuel`]).
    /// A pool or process built with it reports the fuel its tasks used
    /// ([`AsyncResult::fuel_used`](crate::AsyncResult::fuel_used),
    /// [`Process::fuel_used`](crate::Process::fuel_used)). `u64::MAX` measures without a
    /// budget that matters.
    pub fn fuel(mut self, fuel: u64) -> Self {
        self.fuel = Some(fuel);
        self
    }
}

/// `n` bytes in words: whole MiB or KiB when exact, else bytes.
pub(crate) fn describe_bytes(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}
