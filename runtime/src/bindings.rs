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
