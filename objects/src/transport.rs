//! How typed handles reach the broker: the host installs its broker, the guest SDK installs
//! the `objects` import of the WIT world. One process has one transport.

use std::sync::OnceLock;
use std::time::Duration;

use crate::wire::{Handle, ObjectError, Request, Response};

/// Carries operations to the broker that owns the objects.
pub trait Transport: Send + Sync + 'static {
    /// Performs `req` on `target`, blocking at most `timeout` (`None`: until it completes).
    fn invoke(
        &self,
        target: Handle,
        req: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ObjectError>;

    /// A new copy of a handle now exists in this process.
    fn retain(&self, _target: Handle) {}

    /// A copy of a handle in this process was dropped.
    fn release(&self, _target: Handle) {}

    /// A handle is being encoded into task arguments (the task will hold it).
    fn granted(&self, _target: Handle) {}
}

static TRANSPORT: OnceLock<&'static dyn Transport> = OnceLock::new();

/// Installs the process's transport; later calls are ignored.
pub fn install(transport: &'static dyn Transport) {
    let _ = TRANSPORT.set(transport);
}

pub(crate) fn current() -> Result<&'static dyn Transport, ObjectError> {
    TRANSPORT
        .get()
        .copied()
        .ok_or_else(|| ObjectError::Stale("no wasmpool broker is reachable from here".into()))
}
