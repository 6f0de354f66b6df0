//! A dict: entries in insertion order, in the broker, or in shared memory where every
//! process uses it in place until it spills (or an operation must count the handles it
//! stores); the broker's first operation on a dict in shared memory takes its entries over.

use std::sync::Arc;

use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request, Response};

use super::{Common, ObjectKind, invalid};
use crate::broker::object::{
    MAX_OBJECT_BYTES, OpResult, Step, Waiter, entry_cost, growth, heap_bytes, too_big,
};
use crate::broker::refs::RefLog;
use crate::broker::{Owner, Responder, host_tag};
use crate::rules::{add_to_int, handles_in};
use crate::shm::{Shared, SharedDict};

/// A dict, by where its entries are.
#[derive(Debug)]
pub(crate) enum Dict {
    InBroker(Map),
    /// A dict in shared memory, used in place by everyone until it spills; the broker's
    /// first operation on it takes its entries over (it becomes `InBroker`).
    InPlace(Arc<SharedDict>),
}

impl ObjectKind for Dict {
    fn start(
        &mut self,
        cx: &mut Common<'_>,
        _owner: Owner,
        _end: u8,
        req: Request,
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> Step {
        if let Dict::InPlace(shared) = self
            && crate::shm::dict_request(&req)
        {
            // The dict spilled (or a process could not use it in place): the broker keeps
            // its entries from now on. If a process stays inside its mutex, nothing changes
            // and the caller hears so.
            let entries = match shared.take_over(host_tag()) {
                Ok(entries) => entries,
                Err(e) => return Step::Done(Err(e)),
            };
            let mut map = Map::default();
            *cx.stored = 0;
            for (k, v) in entries {
                store(&mut map, cx.stored, cx.refs, k, v);
            }
            *self = Dict::InBroker(map);
        }
        match self {
            Dict::InPlace(_) => Step::Done(invalid(cx.kind, &req)),
            Dict::InBroker(_) if cx.stored.saturating_add(growth(&req)) > MAX_OBJECT_BYTES => {
                Step::Done(too_big(cx.kind, *cx.stored))
            }
            Dict::InBroker(map) => Step::Done(dict_op(map, cx.stored, cx.refs, req)),
        }
    }

    fn worker_exited(
        &mut self,
        _cx: &mut Common<'_>,
        pid: u32,
        _gone: &[Waiter],
        _out: &mut Vec<(Responder, OpResult)>,
    ) -> bool {
        if let Dict::InPlace(dict) = self {
            dict.release_locks_of(pid, host_tag());
        }
        false
    }

    fn never_waits(&self, req: &Request) -> bool {
        matches!((self, req), (Dict::InBroker(_), Request::DictSet(_)))
    }

    fn shared(&self) -> Option<Shared> {
        match self {
            Dict::InPlace(d) => Some(Shared::Dict(d.clone())),
            Dict::InBroker(_) => None,
        }
    }

    fn contents(&self) -> Vec<Handle> {
        match self {
            Dict::InBroker(map) => map
                .iter()
                .flat_map(|(k, v)| handles_in(k).into_iter().chain(handles_in(v)))
                .collect(),
            Dict::InPlace(_) => Vec::new(),
        }
    }
}

pub(crate) type Map = indexmap::IndexMap<Vec<u8>, Vec<u8>>;

/// Sets `k` to `v`, keeping `stored` (what the entries cost, as [`entry_cost`] counts it)
/// and `refs` (the handles stored and let go of) exact.
fn store(map: &mut Map, stored: &mut usize, refs: &mut RefLog, k: Vec<u8>, v: Vec<u8>) {
    let cost = entry_cost(&k, &v);
    let value = heap_bytes(v.capacity());
    // An existing key keeps its stored buffer (the new one is dropped): only the value
    // changes.
    if !map.contains_key(&k) {
        refs.added(&k);
    }
    refs.added(&v);
    match map.insert(k, v) {
        Some(old) => {
            refs.removed(&old);
            *stored = (*stored + value).saturating_sub(heap_bytes(old.capacity()))
        }
        None => *stored += cost,
    }
}

/// Removes the entry of `k`, keeping `stored` and `refs` exact for its key; answers its
/// value, which the caller logs as removed or taken.
fn unstore(map: &mut Map, stored: &mut usize, refs: &mut RefLog, k: &[u8]) -> Option<Vec<u8>> {
    let (key, v) = map.shift_remove_entry(k)?;
    *stored = stored.saturating_sub(entry_cost(&key, &v));
    refs.removed(&key);
    Some(v)
}

fn dict_op(map: &mut Map, stored: &mut usize, refs: &mut RefLog, req: Request) -> OpResult {
    Ok(match req {
        Request::DictGet(k) => Response::Maybe(map.get(&k).cloned()),
        Request::DictSet((k, v)) => {
            store(map, stored, refs, k, v);
            Response::Unit
        }
        Request::DictDelete(k) => match unstore(map, stored, refs, &k) {
            Some(v) => {
                refs.removed(&v);
                Response::Unit
            }
            None => return Err(ObjectError::Missing("KeyError: no such key".into())),
        },
        Request::DictContains(k) => Response::Flag(map.contains_key(&k)),
        Request::DictKeys => Response::Values(map.keys().cloned().collect()),
        Request::DictValues => Response::Values(map.values().cloned().collect()),
        Request::DictItems => {
            Response::Entries(map.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        }
        Request::DictLen => Response::Count(map.len() as u64),
        Request::DictUpdate(entries) => {
            for (k, v) in entries {
                store(map, stored, refs, k, v);
            }
            Response::Unit
        }
        Request::DictSetdefault((k, v)) => match map.get(&k) {
            Some(existing) => Response::Value(existing.clone()),
            None => {
                store(map, stored, refs, k, v.clone());
                Response::Value(v)
            }
        },
        Request::DictPop(k) => {
            let v = unstore(map, stored, refs, &k);
            if let Some(v) = &v {
                refs.taken(v);
            }
            Response::Maybe(v)
        }
        Request::DictPopitem => match map.pop() {
            Some((k, v)) => {
                *stored = stored.saturating_sub(entry_cost(&k, &v));
                refs.taken(&k);
                refs.taken(&v);
                Response::Entries(vec![(k, v)])
            }
            None => {
                return Err(ObjectError::Missing(
                    "KeyError: 'popitem(): dictionary is empty'".into(),
                ));
            }
        },
        Request::DictClear => {
            for (k, v) in map.drain(..) {
                refs.removed(&k);
                refs.removed(&v);
            }
            *stored = 0;
            Response::Unit
        }
        Request::DictIncrement(k, delta) => {
            let (new, encoded) = add_to_int(map.get(&k).map(Vec::as_slice), delta)?;
            store(map, stored, refs, k, encoded);
            Response::Int(new)
        }
        Request::DictCompareAndSwap { key, expected, new } => {
            let matches = map.get(&key) == expected.as_ref();
            if matches {
                store(map, stored, refs, key, new);
            }
            Response::Flag(matches)
        }
        req => return invalid(Kind::Dict, &req),
    })
}
