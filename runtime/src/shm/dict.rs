//! A Manager `dict` in a shared segment, read and written in place by the host and by every
//! worker given it, under a short mutex: a `get`, a `set` or an `increment` is a hash lookup
//! in shared memory, not a round trip through the broker.
//!
//! The segment holds two *halves*, each an open-addressing table of [`SLOTS`] slots and an
//! arena its keys and values are appended to; one half is active. A slot is a key's hash,
//! where its key and its value lie in the arena, and its insertion number (so `keys()` come
//! in insertion order, as in Python). Every change of an entry commits with one 8-byte
//! store: a new value is written to fresh arena space and then the slot's value word points
//! at it; a new key is written whole before its slot's value word makes it live; a deletion
//! turns the value word into a tombstone. So a process that dies inside the mutex leaves
//! each entry as it was before or after its change, never in between (the broker then
//! recounts the counters the change had not updated yet). An `update` of several entries is
//! atomic to the other processes, but one that dies halfway through leaves the entries
//! before that point changed.
//!
//! When the active half runs out of arena or slots, the live entries are copied into the
//! other half, which then becomes active with one store (a copy cut short by a death is
//! simply never used). A dict too large for a half even then *spills*: the flag is set under
//! the mutex, everyone goes to the broker from then on, and the broker takes the entries
//! over into its own map the first time it is asked.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::Ordering::{Acquire, Relaxed, Release, SeqCst};

use wasmpool_objects::wire::{Entry, ObjectError, Request, Response, too_large};

use super::Local;
use super::mutex::{Held, Mutex};
use super::segment::{Segment, SegmentBudget};
use crate::rules::add_to_int;

/// Slots of a half's table; at most half of them hold live keys.
const SLOTS: usize = 4096;
const SLOT: usize = 32;
const TABLE_BYTES: usize = SLOTS * SLOT;
/// Bytes of a half's arena.
const ARENA: usize = 1 << 20;
const HALF_BYTES: usize = TABLE_BYTES + ARENA;
/// Where the halves start (the header fills the first page).
const HALVES: usize = 4096;
const SEGMENT_BYTES: usize = HALVES + 2 * HALF_BYTES;

/// How long the broker waits for the mutex to take a dict over.
const TAKE_OVER_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// Live keys a half holds at most, and live keys plus tombstones.
const MAX_LIVE: usize = SLOTS / 2;
const MAX_FILLED: usize = SLOTS * 3 / 4;

// Offsets in the segment's header.
const MAGIC: usize = 0;
const MODE: usize = 4;
const MAX_MESSAGE: usize = 8;
const ACTIVE: usize = 16;
const NEXT_SEQ: usize = 24;
const LOCK: usize = 64;
/// Each half's counters, 64 bytes apart: live keys, tombstones, arena bytes used.
const COUNTERS: usize = 128;
const LIVE: usize = 0;
const TOMBS: usize = 8;
const USED: usize = 16;

// Offsets in a slot.
const HASH: usize = 0;
const KEY: usize = 8;
const VAL: usize = 16;
const SEQ: usize = 24;

/// A value word: the slot is live; bits 32..62 are the value's length, 0..32 its offset.
const LIVE_BIT: u64 = 1 << 63;
const TOMB: u64 = 1 << 62;

const SPILLED: u32 = 1;
const MAGIC_VALUE: u32 = u32::from_le_bytes(*b"wpD1");

/// The dict's contents contradict themselves: a process that shares it wrote nonsense.
#[derive(Debug)]
struct Corrupt;

fn corrupt(_: Corrupt) -> ObjectError {
    ObjectError::Invalid("the dict's shared memory was corrupted by a process holding it".into())
}

/// FNV-1a: the same in every process (a dict's keys are hashed by all of them).
fn hash(key: &[u8]) -> u64 {
    key.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn pack(offset: usize, len: usize) -> u64 {
    ((len as u64) << 32) | offset as u64
}

/// A dict's shared segment, mapped.
#[derive(Debug)]
pub(crate) struct SharedDict {
    seg: Segment,
    max_message: usize,
}

/// One half of the segment.
#[derive(Clone, Copy)]
struct Half<'a> {
    seg: &'a Segment,
    at: usize,
    counters: usize,
}

/// Where a key is, or where it would go.
struct Found {
    slot: Option<usize>,
    free: Option<usize>,
}

impl<'a> Half<'a> {
    fn new(seg: &'a Segment, h: usize) -> Self {
        Half {
            seg,
            at: HALVES + (h & 1) * HALF_BYTES,
            counters: COUNTERS + (h & 1) * 64,
        }
    }

    fn counter(&self, which: usize) -> &'a std::sync::atomic::AtomicU64 {
        self.seg.u64(self.counters + which)
    }

    fn field(&self, slot: usize, which: usize) -> &'a std::sync::atomic::AtomicU64 {
        self.seg.u64(self.at + (slot & (SLOTS - 1)) * SLOT + which)
    }

    fn live(&self) -> usize {
        usize::try_from(self.counter(LIVE).load(Relaxed)).unwrap_or(usize::MAX)
    }

    fn filled(&self) -> usize {
        let tombs = usize::try_from(self.counter(TOMBS).load(Relaxed)).unwrap_or(usize::MAX);
        self.live().saturating_add(tombs)
    }

    fn used(&self) -> usize {
        usize::try_from(self.counter(USED).load(Relaxed)).unwrap_or(usize::MAX)
    }

    /// The arena bytes a packed word points at, checked to lie in the arena.
    fn bytes(&self, word: u64) -> Result<Vec<u8>, Corrupt> {
        let (offset, len) = (
            (word & 0xffff_ffff) as usize,
            ((word >> 32) & 0x3fff_ffff) as usize,
        );
        if offset.checked_add(len).is_none_or(|end| end > ARENA) {
            return Err(Corrupt);
        }
        let mut out = vec![0u8; len];
        self.seg.read(self.at + TABLE_BYTES + offset, &mut out);
        Ok(out)
    }

    fn key(&self, slot: usize) -> Result<Vec<u8>, Corrupt> {
        self.bytes(self.field(slot, KEY).load(Relaxed))
    }

    fn value(&self, slot: usize) -> Result<Vec<u8>, Corrupt> {
        self.bytes(self.field(slot, VAL).load(Acquire))
    }

    /// Appends `bytes` to the arena; answers their packed place.
    fn append(&self, bytes: &[u8]) -> Result<u64, Corrupt> {
        let used = self.used();
        if used.checked_add(bytes.len()).is_none_or(|end| end > ARENA) {
            return Err(Corrupt);
        }
        self.seg.write(self.at + TABLE_BYTES + used, bytes);
        self.counter(USED)
            .store((used + bytes.len()) as u64, Relaxed);
        Ok(pack(used, bytes.len()))
    }

    fn find(&self, key: &[u8], h: u64) -> Result<Found, Corrupt> {
        let mut free = None;
        let mut slot = h as usize & (SLOTS - 1);
        for _ in 0..SLOTS {
            match self.field(slot, VAL).load(Acquire) {
                0 => {
                    return Ok(Found {
                        slot: None,
                        free: free.or(Some(slot)),
                    });
                }
                TOMB => {
                    free.get_or_insert(slot);
                }
                v if v & LIVE_BIT != 0 => {
                    let k = self.field(slot, KEY).load(Relaxed);
                    if self.field(slot, HASH).load(Relaxed) == h
                        && (k >> 32) as usize == key.len()
                        && self.bytes(k)? == key
                    {
                        return Ok(Found {
                            slot: Some(slot),
                            free,
                        });
                    }
                }
                _ => return Err(Corrupt),
            }
            slot = (slot + 1) & (SLOTS - 1);
        }
        Ok(Found { slot: None, free })
    }

    /// Points live slot `slot` at a new copy of `value`.
    fn replace(&self, slot: usize, value: &[u8]) -> Result<(), Corrupt> {
        let v = self.append(value)?;
        self.field(slot, VAL).store(LIVE_BIT | v, Release);
        Ok(())
    }

    /// Makes free slot `slot` hold `key` and `value`, inserted `seq`th.
    fn insert(
        &self,
        slot: usize,
        h: u64,
        key: &[u8],
        value: &[u8],
        seq: u64,
    ) -> Result<(), Corrupt> {
        let k = self.append(key)?;
        let v = self.append(value)?;
        let was_tomb = self.field(slot, VAL).load(Relaxed) == TOMB;
        self.field(slot, HASH).store(h, Relaxed);
        self.field(slot, KEY).store(k, Relaxed);
        self.field(slot, SEQ).store(seq, Relaxed);
        // The commit: the slot is live from here on.
        self.field(slot, VAL).store(LIVE_BIT | v, Release);
        let live = self.counter(LIVE);
        live.store(live.load(Relaxed).wrapping_add(1), Relaxed);
        if was_tomb {
            let tombs = self.counter(TOMBS);
            tombs.store(tombs.load(Relaxed).saturating_sub(1), Relaxed);
        }
        Ok(())
    }

    fn remove(&self, slot: usize) {
        self.field(slot, VAL).store(TOMB, Release);
        let live = self.counter(LIVE);
        live.store(live.load(Relaxed).saturating_sub(1), Relaxed);
        let tombs = self.counter(TOMBS);
        tombs.store(tombs.load(Relaxed).wrapping_add(1), Relaxed);
    }

    /// The live entries with their insertion numbers, in insertion order. Their keys and
    /// values, distinct ranges of the arena, add up to at most its size: slots a process
    /// pointed at the same bytes over and over are corrupt, not gigabytes to copy. With
    /// `salvage`, what is corrupt is skipped (and the reading stops at that size) instead.
    fn entries(&self, salvage: bool) -> Result<Vec<(u64, Entry)>, Corrupt> {
        let mut live = Vec::new();
        let mut budget = ARENA;
        for slot in 0..SLOTS {
            let v = self.field(slot, VAL).load(Acquire);
            if v == 0 || v == TOMB {
                continue;
            }
            let (key, value) = match (v & LIVE_BIT != 0, self.key(slot), self.value(slot)) {
                (true, Ok(key), Ok(value)) => (key, value),
                _ if salvage => continue,
                _ => return Err(Corrupt),
            };
            match budget.checked_sub(key.len() + value.len()) {
                Some(left) => budget = left,
                None if salvage => break,
                None => return Err(Corrupt),
            }
            live.push((self.field(slot, SEQ).load(Relaxed), (key, value)));
        }
        live.sort_unstable_by_key(|(seq, _)| *seq);
        Ok(live)
    }

    /// Sets the counters from the table (after a process died halfway through a change).
    fn recount(&self) {
        let (mut live, mut tombs) = (0u64, 0u64);
        for slot in 0..SLOTS {
            match self.field(slot, VAL).load(Acquire) {
                TOMB => tombs += 1,
                v if v & LIVE_BIT != 0 => live += 1,
                _ => {}
            }
        }
        self.counter(LIVE).store(live, Relaxed);
        self.counter(TOMBS).store(tombs, Relaxed);
    }

    /// Empties this half: every slot free, nothing used.
    fn clear(&self) {
        const ZEROS: [u8; 4096] = [0; 4096];
        for chunk in (0..TABLE_BYTES).step_by(ZEROS.len()) {
            self.seg.write(self.at + chunk, &ZEROS);
        }
        for which in [LIVE, TOMBS, USED] {
            self.counter(which).store(0, Relaxed);
        }
    }
}

impl SharedDict {
    /// A new, empty dict's segment.
    pub fn create(max_message: usize, budget: &SegmentBudget) -> io::Result<SharedDict> {
        let seg = Segment::create(c"wasmpool-dict", SEGMENT_BYTES, budget)?;
        seg.u32(MAGIC).store(MAGIC_VALUE, SeqCst);
        seg.u64(MAX_MESSAGE).store(max_message as u64, SeqCst);
        Ok(SharedDict { seg, max_message })
    }

    /// Maps the segment of a dict the host created.
    pub fn open(fd: OwnedFd) -> io::Result<SharedDict> {
        let seg = Segment::open_marked(fd, SEGMENT_BYTES, &[(MAGIC, MAGIC_VALUE)], "dict")?;
        let max_message = usize::try_from(seg.u64(MAX_MESSAGE).load(SeqCst)).unwrap_or(0);
        Ok(SharedDict { seg, max_message })
    }

    /// The descriptor to hand to a worker (`None` in a worker, which only maps it).
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.seg.fd()
    }

    fn mutex(&self) -> Mutex<'_> {
        Mutex::at(&self.seg, LOCK)
    }

    fn lock(&self, tag: u32) -> Result<Held<'_>, ObjectError> {
        self.mutex().lock(tag, None).ok_or_else(|| {
            ObjectError::Invalid(
                "the dict's mutex was held for over a second: a process holding the dict \
                 stopped inside it, or scribbled on it"
                    .into(),
            )
        })
    }

    fn active(&self) -> Half<'_> {
        Half::new(&self.seg, self.seg.u32(ACTIVE).load(Acquire) as usize)
    }

    fn spilled(&self) -> bool {
        self.seg.u32(MODE).load(Acquire) == SPILLED
    }

    /// Process `pid` died: if it was inside the dict's mutex, the counters its change may
    /// have left behind are recounted and the mutex is free again.
    pub fn release_locks_of(&self, pid: u32, host: u32) {
        if self.mutex().take_over(pid, host) {
            self.active().recount();
            self.mutex().release();
        }
    }

    /// Spills the dict, as process `tag`, and answers its entries in insertion order (those
    /// a scribbling process left readable): the broker keeps them from now on. It waits only
    /// briefly for the mutex (the broker calls it under its own lock): `Timeout` if a process
    /// stays inside, and then nothing changed.
    pub fn take_over(&self, tag: u32) -> Result<Vec<Entry>, ObjectError> {
        let deadline = std::time::Instant::now() + TAKE_OVER_WAIT;
        let Some(_held) = self.mutex().lock(tag, Some(deadline)) else {
            return Err(ObjectError::Timeout);
        };
        self.seg.u32(MODE).store(SPILLED, SeqCst);
        let entries = self.active().entries(true).unwrap_or_default();
        Ok(entries.into_iter().map(|(_, entry)| entry).collect())
    }

    /// Makes room in the active half for `bytes` more bytes and `slots` more keys, moving
    /// the live entries to the other half if that is what it takes; `false` if the dict
    /// does not fit a half even then (or would fill it again at once).
    fn room(&self, bytes: usize, slots: usize) -> Result<bool, Corrupt> {
        let half = self.active();
        let fits = |h: Half<'_>, arena: usize, filled: usize| {
            h.used().saturating_add(bytes) <= arena
                && h.filled().saturating_add(slots) <= filled
                && h.live().saturating_add(slots) <= MAX_LIVE
        };
        if fits(half, ARENA, MAX_FILLED) {
            return Ok(true);
        }
        let other = (self.seg.u32(ACTIVE).load(Relaxed) + 1) & 1;
        let to = Half::new(&self.seg, other as usize);
        to.clear();
        for (seq, (key, value)) in half.entries(false)? {
            let h = hash(&key);
            let free = to.find(&key, h)?.free.ok_or(Corrupt)?;
            to.insert(free, h, &key, &value, seq)?;
        }
        self.seg.u32(ACTIVE).store(other, Release);
        // Leave a quarter free, so that a dict near the limit does not copy itself on every
        // change.
        Ok(fits(to, ARENA / 4 * 3, MAX_LIVE))
    }

    /// Sets `key` to `value` in the active half, which has room.
    fn store(
        &self,
        half: Half<'_>,
        found: &Found,
        h: u64,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Corrupt> {
        match (found.slot, found.free) {
            (Some(slot), _) => half.replace(slot, value),
            (None, Some(free)) => {
                let seq = self.seg.u64(NEXT_SEQ).fetch_add(1, Relaxed);
                half.insert(free, h, key, value, seq)
            }
            (None, None) => Err(Corrupt),
        }
    }

    /// Sets `key` to `value`; `false` if the dict had to spill instead.
    fn set(&self, key: &[u8], value: &[u8]) -> Result<bool, Corrupt> {
        let h = hash(key);
        let new = usize::from(self.active().find(key, h)?.slot.is_none());
        if !self.room(key.len() + value.len(), new)? {
            return Ok(false);
        }
        let half = self.active();
        let found = half.find(key, h)?;
        self.store(half, &found, h, key, value)?;
        Ok(true)
    }

    /// Does dict request `req` in place, as process `tag`; `Broker` if the dict is spilled
    /// (or spills now, for want of room), or if `req` is not a dict operation.
    pub fn run(&self, tag: u32, req: &Request) -> Result<Local<Response>, ObjectError> {
        let len = req.payload_len();
        if len > self.max_message {
            return Err(too_large(len, self.max_message));
        }
        if self.spilled() {
            return Ok(Local::Broker);
        }
        let held = self.lock(tag)?;
        if self.spilled() {
            return Ok(Local::Broker);
        }
        let done = self.op(req).map_err(corrupt)?;
        if let Some(Err(ObjectError::Full)) = done {
            // No room: the broker takes the dict over, this request included.
            self.seg.u32(MODE).store(SPILLED, SeqCst);
            return Ok(Local::Broker);
        }
        drop(held);
        Ok(match done {
            Some(result) => Local::Done(result?),
            None => Local::Broker,
        })
    }

    /// The dict operation `req`, under the mutex: `None` if it is not one, `Some(Err(Full))`
    /// if it needs more room than a half has.
    fn op(&self, req: &Request) -> Result<Option<Result<Response, ObjectError>>, Corrupt> {
        let half = self.active();
        let get = |key: &[u8]| -> Result<(Found, Option<Vec<u8>>), Corrupt> {
            let found = half.find(key, hash(key))?;
            let value = found.slot.map(|s| half.value(s)).transpose()?;
            Ok((found, value))
        };
        let full = Ok(Some(Err(ObjectError::Full)));
        let answer = |r: Response| Ok(Some(Ok(r)));
        match req {
            Request::DictGet(k) => answer(Response::Maybe(get(k)?.1)),
            Request::DictContains(k) => answer(Response::Flag(get(k)?.0.slot.is_some())),
            Request::DictLen => answer(Response::Count(half.live() as u64)),
            Request::DictKeys | Request::DictValues | Request::DictItems => {
                let entries = half.entries(false)?.into_iter().map(|(_, e)| e);
                answer(match req {
                    Request::DictKeys => Response::Values(entries.map(|(k, _)| k).collect()),
                    Request::DictValues => Response::Values(entries.map(|(_, v)| v).collect()),
                    _ => Response::Entries(entries.collect()),
                })
            }
            Request::DictSet((k, v)) => match self.set(k, v)? {
                true => answer(Response::Unit),
                false => full,
            },
            Request::DictUpdate(entries) => {
                let bytes = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
                let mut new = 0;
                for (k, _) in entries {
                    new += usize::from(half.find(k, hash(k))?.slot.is_none());
                }
                if !self.room(bytes, new)? {
                    return full;
                }
                for (k, v) in entries {
                    let half = self.active();
                    let h = hash(k);
                    let found = half.find(k, h)?;
                    self.store(half, &found, h, k, v)?;
                }
                answer(Response::Unit)
            }
            Request::DictSetdefault((k, v)) => match get(k)?.1 {
                Some(existing) => answer(Response::Value(existing)),
                None if self.set(k, v)? => answer(Response::Value(v.clone())),
                None => full,
            },
            Request::DictDelete(k) | Request::DictPop(k) => {
                let (found, value) = get(k)?;
                if let Some(slot) = found.slot {
                    half.remove(slot);
                }
                answer(match (req, value) {
                    (Request::DictPop(_), value) => Response::Maybe(value),
                    (_, Some(_)) => Response::Unit,
                    (_, None) => {
                        return Ok(Some(Err(ObjectError::Missing(
                            "KeyError: no such key".into(),
                        ))));
                    }
                })
            }
            Request::DictPopitem => {
                // The live entry inserted last, as Python's LIFO `popitem`.
                let mut last: Option<(u64, usize)> = None;
                for slot in 0..SLOTS {
                    match half.field(slot, VAL).load(Acquire) {
                        0 | TOMB => {}
                        v if v & LIVE_BIT != 0 => {
                            let seq = half.field(slot, SEQ).load(Relaxed);
                            if last.is_none_or(|(s, _)| seq >= s) {
                                last = Some((seq, slot));
                            }
                        }
                        _ => return Err(Corrupt),
                    }
                }
                let Some((_, slot)) = last else {
                    return Ok(Some(Err(ObjectError::Missing(
                        "KeyError: 'popitem(): dictionary is empty'".into(),
                    ))));
                };
                let entry = (half.key(slot)?, half.value(slot)?);
                half.remove(slot);
                answer(Response::Entries(vec![entry]))
            }
            Request::DictClear => {
                // The other half, emptied, becomes the active one with one store: a process
                // that dies halfway leaves the dict as it was.
                let other = (self.seg.u32(ACTIVE).load(Relaxed) + 1) & 1;
                Half::new(&self.seg, other as usize).clear();
                self.seg.u32(ACTIVE).store(other, Release);
                answer(Response::Unit)
            }
            Request::DictIncrement(k, delta) => {
                let (new, encoded) = match add_to_int(get(k)?.1.as_deref(), *delta) {
                    Ok(done) => done,
                    Err(e) => return Ok(Some(Err(e))),
                };
                match self.set(k, &encoded)? {
                    true => answer(Response::Int(new)),
                    false => full,
                }
            }
            Request::DictCompareAndSwap { key, expected, new } => {
                if get(key)?.1 != *expected {
                    return answer(Response::Flag(false));
                }
                match self.set(key, new)? {
                    true => answer(Response::Flag(true)),
                    false => full,
                }
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Shared;
    use super::*;

    fn pair() -> (SharedDict, SharedDict) {
        let host = SharedDict::create(1 << 20, &SegmentBudget::new(4)).unwrap();
        let worker = SharedDict::open(host.fd().unwrap().try_clone_to_owned().unwrap()).unwrap();
        (host, worker)
    }

    fn run(d: &SharedDict, req: Request) -> Result<Response, ObjectError> {
        match d.run(1, &req)? {
            Local::Done(r) => Ok(r),
            Local::Broker => panic!("went to the broker: {req:?}"),
        }
    }

    fn set(d: &SharedDict, k: &str, v: &[u8]) {
        run(d, Request::DictSet((k.as_bytes().to_vec(), v.to_vec()))).unwrap();
    }

    fn keys(d: &SharedDict) -> Vec<String> {
        match run(d, Request::DictKeys).unwrap() {
            Response::Values(ks) => ks
                .into_iter()
                .map(|k| String::from_utf8(k).unwrap())
                .collect(),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn both_mappings_see_sets_deletes_and_insertion_order() {
        let (a, b) = pair();
        set(&a, "x", b"1");
        set(&b, "y", b"2");
        set(&a, "z", b"3");
        set(&b, "x", b"4");
        assert_eq!(keys(&b), ["x", "y", "z"]);
        run(&a, Request::DictDelete(b"y".to_vec())).unwrap();
        set(&a, "y", b"5");
        assert_eq!(keys(&b), ["x", "z", "y"]);
        assert_eq!(
            run(&b, Request::DictGet(b"x".to_vec())),
            Ok(Response::Maybe(Some(b"4".to_vec())))
        );
        assert_eq!(run(&b, Request::DictLen), Ok(Response::Count(3)));
        assert!(matches!(
            run(&b, Request::DictDelete(b"nope".to_vec())),
            Err(ObjectError::Missing(_))
        ));
        assert_eq!(
            run(&a, Request::DictPop(b"z".to_vec())),
            Ok(Response::Maybe(Some(b"3".to_vec())))
        );
        assert_eq!(
            run(&a, Request::DictPop(b"z".to_vec())),
            Ok(Response::Maybe(None))
        );
    }

    #[test]
    fn popitem_is_last_in_first_out_and_clear_empties_both_mappings() {
        let (a, b) = pair();
        set(&a, "x", b"1");
        set(&b, "y", b"2");
        set(&a, "z", b"3");
        // Setting an existing key keeps its place, as in Python.
        set(&b, "y", b"4");
        let pop = |d: &SharedDict| run(d, Request::DictPopitem);
        let entry = |k: &str, v: &[u8]| Ok(Response::Entries(vec![(k.into(), v.to_vec())]));
        assert_eq!(pop(&b), entry("z", b"3"));
        assert_eq!(pop(&a), entry("y", b"4"));
        set(&a, "w", b"5");
        assert_eq!(pop(&b), entry("w", b"5"));
        run(&a, Request::DictClear).unwrap();
        assert_eq!(run(&b, Request::DictLen), Ok(Response::Count(0)));
        assert!(keys(&b).is_empty());
        assert!(matches!(pop(&b), Err(ObjectError::Missing(m)) if m.contains("empty")));
        // The dict works after a clear: the emptied half took over.
        set(&b, "again", b"6");
        assert_eq!(keys(&a), ["again"]);
        assert_eq!(pop(&a), entry("again", b"6"));
    }

    #[test]
    fn increments_and_compare_and_swap_are_exact() {
        let (a, b) = pair();
        let key = b"n".to_vec();
        for i in 1..=1000i64 {
            let d = if i % 2 == 0 { &a } else { &b };
            assert_eq!(
                run(d, Request::DictIncrement(key.clone(), 1)),
                Ok(Response::Int(i))
            );
        }
        let thousand = rmp_serde::to_vec(&1000i64).unwrap();
        let cas = |expected: Option<Vec<u8>>| Request::DictCompareAndSwap {
            key: key.clone(),
            expected,
            new: b"\x07".to_vec(),
        };
        assert_eq!(run(&a, cas(None)), Ok(Response::Flag(false)));
        assert_eq!(run(&a, cas(Some(thousand))), Ok(Response::Flag(true)));
        set(&a, "s", b"\xa1x");
        assert!(matches!(
            run(&b, Request::DictIncrement(b"s".to_vec(), 1)),
            Err(ObjectError::Invalid(_))
        ));
    }

    #[test]
    fn rewriting_one_key_many_times_compacts_and_keeps_everything() {
        let (a, b) = pair();
        set(&a, "first", b"kept");
        let value = vec![9u8; 1000];
        // Far more than one arena's worth of rewrites.
        for i in 0..5000 {
            set(if i % 2 == 0 { &a } else { &b }, "k", &value);
        }
        assert_eq!(keys(&b), ["first", "k"]);
        assert_eq!(
            run(&b, Request::DictGet(b"first".to_vec())),
            Ok(Response::Maybe(Some(b"kept".to_vec())))
        );
        // Deleting and re-adding keys leaves tombstones, which compaction clears too.
        for i in 0..10_000 {
            let k = format!("t{}", i % 7);
            set(&a, &k, b"v");
            run(&a, Request::DictDelete(k.into_bytes())).unwrap();
        }
        assert_eq!(run(&b, Request::DictLen), Ok(Response::Count(2)));
    }

    #[test]
    fn a_dict_too_large_for_a_half_spills_and_hands_over_its_entries_in_order() {
        let (a, b) = pair();
        let mut n = 0;
        loop {
            let req = Request::DictSet((format!("k{n}").into_bytes(), vec![1u8; 100]));
            match b.run(2, &req).unwrap() {
                Local::Done(_) => n += 1,
                Local::Broker => break,
            }
        }
        assert!(n >= MAX_LIVE / 2, "spilled after only {n} keys");
        assert_eq!(a.run(1, &Request::DictLen), Ok(Local::Broker));
        let entries = a.take_over(1).unwrap();
        assert_eq!(entries.len(), n);
        for (i, (k, v)) in entries.iter().enumerate() {
            assert_eq!(k, format!("k{i}").as_bytes());
            assert_eq!(v.len(), 100);
        }
    }

    #[test]
    fn a_process_dying_inside_the_mutex_leaves_it_free_and_the_counts_right() {
        let (a, b) = pair();
        set(&a, "x", b"1");
        // As if process 7 died just after committing a new key, before counting it.
        assert!(b.mutex().acquire(7, std::time::Duration::ZERO, None));
        let half = b.active();
        let found = half.find(b"y", hash(b"y")).unwrap();
        b.store(half, &found, hash(b"y"), b"y", b"2").unwrap();
        half.counter(LIVE).store(1, Relaxed);
        a.release_locks_of(7, 1);
        assert_eq!(run(&a, Request::DictLen), Ok(Response::Count(2)));
        assert_eq!(keys(&a), ["x", "y"]);
    }

    #[test]
    fn updating_every_key_of_a_dict_at_its_key_limit_stays_in_place() {
        let (a, b) = pair();
        let keys: Vec<Vec<u8>> = (0..MAX_LIVE)
            .map(|i| format!("k{i}").into_bytes())
            .collect();
        for k in &keys {
            run(&a, Request::DictSet((k.clone(), b"1".to_vec()))).unwrap();
        }
        let update = Request::DictUpdate(keys.iter().map(|k| (k.clone(), b"2".to_vec())).collect());
        assert_eq!(run(&b, update), Ok(Response::Unit));
        assert_eq!(
            run(&a, Request::DictLen),
            Ok(Response::Count(MAX_LIVE as u64))
        );
        // One key more is one too many: that spills.
        let more = Request::DictUpdate(vec![(b"new".to_vec(), b"3".to_vec())]);
        assert_eq!(b.run(2, &more), Ok(Local::Broker));
    }

    #[test]
    fn slots_pointed_at_the_same_bytes_are_corrupt_not_gigabytes() {
        let (a, b) = pair();
        set(&a, "big", &vec![7u8; ARENA / 2]);
        for i in 0..10 {
            set(&a, &format!("k{i}"), b"v");
        }
        let half = b.active();
        let big = half.field(half.find(b"big", hash(b"big")).unwrap().slot.unwrap(), VAL);
        for i in 0..10 {
            let k = format!("k{i}");
            let slot = half
                .find(k.as_bytes(), hash(k.as_bytes()))
                .unwrap()
                .slot
                .unwrap();
            half.field(slot, VAL).store(big.load(Relaxed), Relaxed);
        }
        assert!(matches!(
            run(&a, Request::DictValues),
            Err(ObjectError::Invalid(_))
        ));
        // The broker salvages what fits the arena, and no more.
        let entries = a.take_over(1).unwrap();
        let bytes: usize = entries.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(!entries.is_empty() && bytes <= ARENA, "{} bytes", bytes);
    }

    #[test]
    fn a_request_of_another_kind_does_not_spill_the_dict() {
        let (a, _b) = pair();
        set(&a, "x", b"1");
        let shared = Shared::Dict(std::sync::Arc::new(a));
        let h = wasmpool_objects::wire::Handle { id: 2, token: 3 };
        assert_eq!(shared.run(h, 1, &Request::Acquire, None), Ok(Local::Broker));
        let Shared::Dict(a) = shared else {
            unreachable!()
        };
        assert_eq!(run(&a, Request::DictLen), Ok(Response::Count(1)));
    }

    #[test]
    fn scribbled_slots_are_reported_not_followed() {
        let (a, b) = pair();
        set(&a, "x", b"1");
        let half = b.active();
        let slot = half.find(b"x", hash(b"x")).unwrap().slot.unwrap();
        half.field(slot, VAL)
            .store(LIVE_BIT | pack(ARENA - 1, 100), Relaxed);
        assert!(matches!(
            run(&a, Request::DictGet(b"x".to_vec())),
            Err(ObjectError::Invalid(_))
        ));
        half.field(slot, VAL).store(12345, Relaxed);
        assert!(matches!(
            run(&a, Request::DictKeys),
            Err(ObjectError::Invalid(_))
        ));
    }
}
