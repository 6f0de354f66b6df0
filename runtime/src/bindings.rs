//! Host-side bindings of the WIT world in `wit/`, and the linker every instance uses.

use wasmtime::component::{HasSelf, Linker};
use wasmtime_wasi::p2::add_to_linker_sync;

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-module",
});

pub(crate) use self::wasmpool::task::host::{Host, Identity};
pub(crate) use self::wasmpool::task::objects;
pub(crate) use self::wasmpool::task::types::{BatchOutcome, Packed, TaskError};

/// A linker with WASI 0.2 and the wasmpool host interface, for any store state that
/// implements both.
pub(crate) fn linker<T>(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<T>>
where
    T: wasmtime_wasi::WasiView + Host + objects::Host + self::wasmpool::task::types::Host + 'static,
{
    let mut linker = Linker::new(engine);
    add_to_linker_sync(&mut linker)?;
    TaskModule::add_to_linker::<T, HasSelf<T>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// The linker for `component`: [`linker`], and the `wasi:http` interfaces it imports
/// linked to stubs that deny every request (see `http_denied.rs`).
pub(crate) fn linker_for<T>(
    engine: &wasmtime::Engine,
    component: &wasmtime::component::Component,
) -> wasmtime::Result<Linker<T>>
where
    T: wasmtime_wasi::WasiView + Host + objects::Host + self::wasmpool::task::types::Host + 'static,
{
    let mut linker = linker(engine)?;
    crate::http_denied::link_denied_http(&mut linker, component)?;
    Ok(linker)
}

/// The instance export and function of the optional `batch-bytes` interface (see the WIT
/// world).
const BATCH_BYTES: (&str, &str) = ("wasmpool:task/batch-bytes@0.1.0", "call-batch-bytes");

/// What `call-batch-bytes` answers: the results' data, their ends (u32s, little-endian),
/// and the failed items.
type BatchBytesAnswer = (Vec<u8>, Vec<u8>, Vec<(u32, TaskError)>);

/// An instance's `call-batch-bytes`, when its module exports it with the WIT world's type.
///
/// Looked up once per instance; `None` (the module does not have it, or has it with another
/// type) means the host calls `call-batch`.
pub(crate) fn batch_bytes<T: 'static>(
    store: &mut wasmtime::Store<T>,
    instance: &wasmtime::component::Instance,
) -> Option<wasmtime::component::Func> {
    let (interface, name) = BATCH_BYTES;
    let iface = instance.get_export_index(&mut *store, None, interface)?;
    let index = instance.get_export_index(&mut *store, Some(&iface), name)?;
    let func = instance.get_func(&mut *store, index)?;
    func.typed::<(&str, &[u8], &[u8]), (BatchBytesAnswer,)>(&*store)
        .ok()
        .map(|_| func)
}

/// Calls `func` (found by [`batch_bytes`]) on the items of `items`: what `call-batch` would
/// answer for them. An answer whose ends are not whole u32s keeps only the whole ones (the
/// caller then reports the items left unanswered).
pub(crate) fn call_batch_bytes<T: 'static>(
    store: &mut wasmtime::Store<T>,
    func: wasmtime::component::Func,
    task: &str,
    items: &crate::protocol::packed::Packed,
) -> wasmtime::Result<BatchOutcome> {
    let typed = func.typed::<(&str, &[u8], &[u8]), (BatchBytesAnswer,)>(&*store)?;
    let ends: Vec<u8> = items.ends.iter().flat_map(|e| e.to_le_bytes()).collect();
    let ((data, ends, errors),) = typed.call(&mut *store, (task, &items.data, &ends))?;
    let ends = ends
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(BatchOutcome {
        results: Packed { data, ends },
        errors,
    })
}
