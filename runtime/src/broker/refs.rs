//! Handles stored inside a dict or a list: the container holds the objects they name.
//!
//! A handle travels inside MessagePack as `[tag, id, token]` (see `wasmpool_objects`'s
//! handle), so the broker finds the handles in a value by walking its encoding
//! ([`handles_in`]). Each operation of a dict or list that stores a value records it with
//! [`RefLog::added`], and each that removes one (delete, pop, overwrite, clear) with
//! [`RefLog::removed`]; the broker then applies the log ([`Registry::apply_refs`]): every
//! live object a stored value names counts one reference from its container
//! ([`Object::contained`](super::object::Object)), and lives while it has one. A container
//! that is freed lets go of everything it holds, which may free more ([`Registry::free`]).
//!
//! A container's references to itself (a list appended to itself) are not counted, so they
//! never keep it alive; a longer cycle (a list in a dict in that list) keeps its members
//! alive until a value of the cycle is removed.

use wasmpool_objects::wire::{Handle, Kind};

use super::kinds::ObjectKind;
use super::object::{Object, OpResult};
use super::{Owner, Registry};
use crate::broker::Responder;
use crate::rules::handles_in;

/// What happened to a handle found in a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// Stored in the container.
    Added,
    /// Dropped by the container (deleted, overwritten, cleared).
    Removed,
    /// Taken out and handed to the caller (popped): the caller holds it from now on.
    Taken,
}

/// The reference changes an operation on a dict or list made, applied by the broker once
/// the operation is done.
#[derive(Debug, Default)]
pub(crate) struct RefLog {
    /// Each handle found in a value stored, removed or taken, in order.
    changes: Vec<(Handle, Change)>,
}

impl RefLog {
    /// A value (or key) was stored in the container: the objects it names are held by it.
    pub fn added(&mut self, value: &[u8]) {
        self.log(value, Change::Added);
    }

    /// A value (or key) left the container and is dropped (deleted, overwritten, cleared):
    /// the objects it names are no longer held by it.
    pub fn removed(&mut self, value: &[u8]) {
        self.log(value, Change::Removed);
    }

    /// A value (or key) left the container for the caller, who is answered it (a pop): the
    /// container's references pass to the caller, so nothing is freed in between (a worker
    /// then holds the objects until it exits, the host program while it keeps the handles).
    pub fn taken(&mut self, value: &[u8]) {
        self.log(value, Change::Taken);
    }

    fn log(&mut self, value: &[u8], change: Change) {
        for h in handles_in(value) {
            self.changes.push((h, change));
        }
    }

    fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }
}

impl Object {
    /// Every handle the object's stored values (and keys) hold, as counted when they were
    /// stored: what it lets go of when it is freed.
    fn contents(&self) -> Vec<Handle> {
        self.state.contents()
    }
}

impl Registry {
    /// Applies the reference changes the last operation on container `id`, by `owner`,
    /// logged (see [`RefLog`]), freeing what is no longer reachable.
    pub(super) fn apply_refs(
        &mut self,
        id: u64,
        owner: Owner,
        out: &mut Vec<(Responder, OpResult)>,
    ) {
        let Some(log) = self
            .objects
            .get_mut(&id)
            .filter(|o| !o.refs.is_empty())
            .map(|o| std::mem::take(&mut o.refs))
        else {
            return;
        };
        let mut maybe_dead = Vec::new();
        for (h, change) in log.changes {
            if change == Change::Taken {
                self.hand_to(owner, id, h);
            }
            if let Some(target) = self.adjust_contained(id, h, change == Change::Added, out) {
                maybe_dead.push(target);
            }
        }
        self.free(maybe_dead, out);
    }

    /// One reference of container `container` to the object `h` names, taken or let go;
    /// answers the object's id when it was let go of. A container's references to itself,
    /// and handles of objects that are gone (or never were), count nothing.
    fn adjust_contained(
        &mut self,
        container: u64,
        h: Handle,
        up: bool,
        out: &mut Vec<(Responder, OpResult)>,
    ) -> Option<u64> {
        let (obj_id, end) = (h.id & !1, usize::from((h.id & 1) as u8));
        if obj_id == container {
            return None;
        }
        let obj = self
            .objects
            .get_mut(&obj_id)
            .filter(|o| o.tokens[end] == h.token && (end == 0 || o.kind == Kind::Connection))?;
        if up {
            obj.contained[end] += 1;
            return None;
        }
        obj.contained[end] = obj.contained[end].saturating_sub(1);
        // A pipe end no one holds any more is closed: its peer's receivers hear so.
        obj.pump(out);
        Some(obj_id)
    }

    /// `owner` takes the reference to `h` that container `container` gave up: a worker
    /// holds the object from now on; the host program holds it as a copy of its handle,
    /// which the handle it decodes from the answer adopts (see [`super::adopted`]).
    fn hand_to(&mut self, owner: Owner, container: u64, h: Handle) {
        let (obj_id, end) = (h.id & !1, usize::from((h.id & 1) as u8));
        if obj_id == container {
            return;
        }
        let Some(obj) = self
            .objects
            .get_mut(&obj_id)
            .filter(|o| o.tokens[end] == h.token && (end == 0 || o.kind == Kind::Connection))
        else {
            return;
        };
        match owner {
            Owner::Pid(pid) => {
                obj.holds[end]
                    .entry(super::object::Hold::Pid(pid))
                    .or_insert(1);
            }
            Owner::Host(_) => {
                obj.host_refs[end] += 1;
                super::adopt_later(h);
            }
        }
    }

    /// Frees each of `ids` that nothing can reach any more, and then what the dicts and
    /// lists among them held that nothing else reaches, and so on.
    pub(super) fn free(&mut self, mut ids: Vec<u64>, out: &mut Vec<(Responder, OpResult)>) {
        while let Some(id) = ids.pop() {
            if !self.objects.get(&id).is_some_and(Object::unreachable) {
                continue;
            }
            let Some(obj) = self.objects.remove(&id) else {
                continue;
            };
            for h in obj.contents() {
                if let Some(target) = self.adjust_contained(id, h, false, out) {
                    ids.push(target);
                }
            }
        }
    }

    /// Frees every object nothing can reach any more (and what only they held).
    pub(super) fn sweep(&mut self, out: &mut Vec<(Responder, OpResult)>) {
        let dead: Vec<u64> = self
            .objects
            .iter()
            .filter(|(_, o)| o.unreachable())
            .map(|(&id, _)| id)
            .collect();
        self.free(dead, out);
    }
}
