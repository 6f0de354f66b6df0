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

use super::object::{Object, OpResult, State};
use super::{Owner, Registry};
use crate::broker::Responder;

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

/// The object kinds, by the tag their handles travel with.
fn kind_of_tag(tag: &[u8]) -> Option<Kind> {
    const KINDS: [Kind; 10] = [
        Kind::Queue,
        Kind::Connection,
        Kind::Lock,
        Kind::RLock,
        Kind::Semaphore,
        Kind::Event,
        Kind::Barrier,
        Kind::Condition,
        Kind::Dict,
        Kind::List,
    ];
    KINDS.into_iter().find(|k| k.tag().as_bytes() == tag)
}

/// Reads a MessagePack unsigned integer at `at`; answers it and the bytes after it.
fn uint_at(v: &[u8], at: usize) -> Option<(u64, usize)> {
    let b = *v.get(at)?;
    let n = match b {
        0x00..=0x7f => return Some((u64::from(b), at + 1)),
        0xcc => 1,
        0xcd => 2,
        0xce => 4,
        0xcf => 8,
        _ => return None,
    };
    let bytes = v.get(at + 1..at + 1 + n)?;
    Some((
        bytes.iter().fold(0u64, |x, &b| x << 8 | u64::from(b)),
        at + 1 + n,
    ))
}

/// Reads a MessagePack string at `at`; answers its bytes and the offset after it.
fn str_at(v: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let b = *v.get(at)?;
    let (len, start) = match b {
        0xa0..=0xbf => (usize::from(b & 0x1f), at + 1),
        0xd9 => (usize::from(*v.get(at + 1)?), at + 2),
        _ => return None,
    };
    Some((v.get(start..start + len)?, start + len))
}

/// The handles a MessagePack value holds, wherever they are in it: every array of three
/// whose first item is a kind's tag and whose others are unsigned integers. Linear in the
/// value's items; the bytes of strings and binaries are skipped, not read. A value that is
/// not well-formed MessagePack answers the handles found before the fault.
pub(crate) fn handles_in(v: &[u8]) -> Vec<Handle> {
    let mut found = Vec::new();
    let mut at = 0usize;
    // Items still to read: each container adds its items.
    let mut left: u64 = 1;
    while left > 0 {
        left -= 1;
        let Some(&b) = v.get(at) else { break };
        // [tag, id, token]
        if b == 0x93
            && let Some((tag, next)) = str_at(v, at + 1)
            && kind_of_tag(tag).is_some()
            && let Some((id, next)) = uint_at(v, next)
            && let Some((token, next)) = uint_at(v, next)
        {
            found.push(Handle { id, token });
            at = next;
            continue;
        }
        let be = |from: usize, n: usize| -> Option<u64> {
            let bytes = v.get(from..from + n)?;
            Some(bytes.iter().fold(0u64, |x, &b| x << 8 | u64::from(b)))
        };
        // (header bytes, items it adds, payload bytes after the header)
        let step: Option<(usize, u64, u64)> = match b {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Some((1, 0, 0)),
            0x80..=0x8f => Some((1, 2 * u64::from(b & 0x0f), 0)),
            0x90..=0x9f => Some((1, u64::from(b & 0x0f), 0)),
            0xa0..=0xbf => Some((1, 0, u64::from(b & 0x1f))),
            0xc4 | 0xd9 => be(at + 1, 1).map(|n| (2, 0, n)),
            0xc5 | 0xda => be(at + 1, 2).map(|n| (3, 0, n)),
            0xc6 | 0xdb => be(at + 1, 4).map(|n| (5, 0, n)),
            0xc7 => be(at + 1, 1).map(|n| (3, 0, n)),
            0xc8 => be(at + 1, 2).map(|n| (4, 0, n)),
            0xc9 => be(at + 1, 4).map(|n| (6, 0, n)),
            0xca => Some((1, 0, 4)),
            0xcb => Some((1, 0, 8)),
            0xcc | 0xd0 => Some((1, 0, 1)),
            0xcd | 0xd1 => Some((1, 0, 2)),
            0xce | 0xd2 => Some((1, 0, 4)),
            0xcf | 0xd3 => Some((1, 0, 8)),
            0xd4 => Some((2, 0, 1)),
            0xd5 => Some((2, 0, 2)),
            0xd6 => Some((2, 0, 4)),
            0xd7 => Some((2, 0, 8)),
            0xd8 => Some((2, 0, 16)),
            0xdc => be(at + 1, 2).map(|n| (3, n, 0)),
            0xdd => be(at + 1, 4).map(|n| (5, n, 0)),
            0xde => be(at + 1, 2).map(|n| (3, 2 * n, 0)),
            0xdf => be(at + 1, 4).map(|n| (5, 2 * n, 0)),
            // 0xc1 is never used.
            _ => None,
        };
        let Some((header, items, payload)) = step else {
            break;
        };
        let Some(next) = usize::try_from(payload)
            .ok()
            .and_then(|p| at.checked_add(header)?.checked_add(p))
        else {
            break;
        };
        at = next;
        left = left.saturating_add(items);
    }
    found
}

/// Whether a request stores a value that holds a handle: such a request goes to the
/// broker, which counts the references, even on a dict used in place.
pub(crate) fn stores_handles(req: &wasmpool_objects::wire::Request) -> bool {
    use wasmpool_objects::wire::Request::*;
    let has = |v: &[u8]| !handles_in(v).is_empty();
    match req {
        DictSet((k, v)) | DictSetdefault((k, v)) => has(k) || has(v),
        DictUpdate(entries) => entries.iter().any(|(k, v)| has(k) || has(v)),
        DictCompareAndSwap { key, new, .. } => has(key) || has(new),
        DictIncrement(k, _) => has(k),
        _ => false,
    }
}

impl Object {
    /// Every handle the object's stored values (and keys) hold, as counted when they were
    /// stored: what it lets go of when it is freed.
    fn contents(&self) -> Vec<Handle> {
        match &self.state {
            State::Dict(map) => map
                .iter()
                .flat_map(|(k, v)| handles_in(k).into_iter().chain(handles_in(v)))
                .collect(),
            State::List(items) => items.iter().flat_map(|v| handles_in(v)).collect(),
            _ => Vec::new(),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn handles_are_found_anywhere_in_a_value_and_nowhere_else() {
        let h = ("wasmpool:queue", 42u64, u64::MAX);
        let p = ("wasmpool:connection", 7u64, 300u64);
        assert_eq!(
            handles_in(&encode(&h)),
            [Handle {
                id: 42,
                token: u64::MAX
            }]
        );
        let nested = encode(&(
            "x",
            vec![Some(h), None],
            std::collections::BTreeMap::from([("k", p)]),
            serde_bytes_like(),
        ));
        assert_eq!(handles_in(&nested).len(), 2);
        // Not a handle: a wrong tag, a signed id, four items.
        assert!(handles_in(&encode(&("wasmpool:nope", 1u64, 2u64))).is_empty());
        assert!(handles_in(&encode(&("wasmpool:queue", -1i64, 2u64))).is_empty());
        assert!(handles_in(&encode(&("wasmpool:queue", 1u64, 2u64, 3u64))).is_empty());
        // Truncated or malformed input answers what it found before, and never panics.
        let whole = encode(&vec![h, h]);
        for cut in 0..whole.len() {
            assert!(handles_in(&whole[..cut]).len() <= 1);
        }
        assert!(handles_in(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(handles_in(&[0xc1, 0x93]).is_empty());
    }

    /// A string whose bytes look like a handle: skipped, not read.
    fn serde_bytes_like() -> String {
        String::from_utf8_lossy(&encode(&("wasmpool:queue", 1u64, 2u64))).into_owned()
    }
}
