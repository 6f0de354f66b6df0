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
    let ends = le_ends(&items.ends);
    let ((data, ends, errors),) = typed.call(&mut *store, (task, &items.data, &ends))?;
    Ok(BatchOutcome {
        results: Packed {
            data,
            ends: from_le_ends(&ends),
        },
        errors,
    })
}

/// The instance export and function of the optional `batch-packed` interface (see the WIT
/// world).
const BATCH_PACKED: (&str, &str) = ("wasmpool:task/batch-packed@0.1.0", "call-batch-packed");

/// The WIT variant `batch-items` of `batch-packed`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Debug)]
#[component(variant)]
enum BatchItems {
    #[component(name = "encoded")]
    Encoded((Vec<u8>, Vec<u8>)),
    #[component(name = "ints")]
    Ints(Vec<u8>),
    #[component(name = "floats")]
    Floats(Vec<u8>),
}

/// The WIT variant `batch-results` of `batch-packed`.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lift, Debug)]
#[component(variant)]
enum BatchResults {
    #[component(name = "encoded")]
    Encoded((Vec<u8>, Vec<u8>)),
    #[component(name = "ints")]
    Ints(Vec<u8>),
    #[component(name = "uints")]
    Uints(Vec<u8>),
    #[component(name = "floats")]
    Floats(Vec<u8>),
    #[component(name = "bools")]
    Bools(Vec<u8>),
    #[component(name = "nils")]
    Nils(u32),
}

/// What `call-batch-packed` answers: the results and the failed items.
type BatchPackedAnswer = (BatchResults, Vec<(u32, TaskError)>);

/// An instance's `call-batch-packed`, when its module exports it with the WIT world's type
/// (else `None`: the host calls `call-batch-bytes` or `call-batch`).
pub(crate) fn batch_packed<T: 'static>(
    store: &mut wasmtime::Store<T>,
    instance: &wasmtime::component::Instance,
) -> Option<wasmtime::component::Func> {
    let (interface, name) = BATCH_PACKED;
    let iface = instance.get_export_index(&mut *store, None, interface)?;
    let index = instance.get_export_index(&mut *store, Some(&iface), name)?;
    let func = instance.get_func(&mut *store, index)?;
    func.typed::<(&str, &BatchItems), (BatchPackedAnswer,)>(&*store)
        .ok()
        .map(|_| func)
}

/// Calls `func` (found by [`batch_packed`]) on `items`, packed when they pack (see
/// `worker::packed_batch`): what `call-batch` would answer for them, with packed results
/// written out as each item's MessagePack. Answers past the batch's items are dropped, as
/// are ends and packed items cut short (the caller then reports the items left
/// unanswered). The items come back with the answer.
pub(crate) fn call_batch_packed<T: 'static>(
    store: &mut wasmtime::Store<T>,
    func: wasmtime::component::Func,
    task: &str,
    items: crate::protocol::packed::Packed,
) -> (
    wasmtime::Result<BatchOutcome>,
    crate::protocol::packed::Packed,
) {
    use crate::worker::packed_batch::{self as packed, Items, Kind};
    let typed = match func.typed::<(&str, &BatchItems), (BatchPackedAnswer,)>(&*store) {
        Ok(typed) => typed,
        Err(e) => return (Err(e), items),
    };
    let limit = items.len();
    let (arg, items) = match packed::pack_items(&items) {
        Some(Items::Ints(values)) => (BatchItems::Ints(values), items),
        Some(Items::Floats(values)) => (BatchItems::Floats(values), items),
        None => {
            // Moved into the call (no copy) and recovered from it.
            let ends = le_ends(&items.ends);
            (
                BatchItems::Encoded((items.data, ends)),
                items_ends(items.ends),
            )
        }
    };
    let answer = typed.call(&mut *store, (task, &arg));
    let items = match arg {
        BatchItems::Encoded((data, _)) => crate::protocol::packed::Packed {
            data,
            ends: items.ends,
        },
        _ => items,
    };
    let ((answer, errors),) = match answer {
        Ok(answer) => answer,
        Err(e) => return (Err(e), items),
    };
    let failed: Vec<u32> = errors.iter().map(|(i, _)| *i).collect();
    let results = match answer {
        BatchResults::Encoded((data, ends)) => Packed {
            data,
            ends: from_le_ends(&ends),
        },
        BatchResults::Ints(payload) => wit(packed::encode(Kind::Ints, &payload, &failed, limit)),
        BatchResults::Uints(payload) => wit(packed::encode(Kind::Uints, &payload, &failed, limit)),
        BatchResults::Floats(payload) => {
            wit(packed::encode(Kind::Floats, &payload, &failed, limit))
        }
        BatchResults::Bools(payload) => wit(packed::encode(Kind::Bools, &payload, &failed, limit)),
        BatchResults::Nils(count) => wit(packed::nils(count, &failed, limit)),
    };
    (Ok(BatchOutcome { results, errors }), items)
}

/// The batch's items with their data moved out (into an `encoded` argument), to be put
/// back after the call.
fn items_ends(ends: Vec<u32>) -> crate::protocol::packed::Packed {
    crate::protocol::packed::Packed {
        data: Vec::new(),
        ends,
    }
}

/// The protocol's `Packed` as the WIT record.
fn wit(p: crate::protocol::packed::Packed) -> Packed {
    Packed {
        data: p.data,
        ends: p.ends,
    }
}

/// A batch's item ends as bytes, as `batch-bytes` and `batch-packed` take them.
fn le_ends(ends: &[u32]) -> Vec<u8> {
    ends.iter().flat_map(|e| e.to_le_bytes()).collect()
}

/// The ends a guest answered as bytes: the whole u32s of them.
fn from_le_ends(ends: &[u8]) -> Vec<u32> {
    ends.chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}
