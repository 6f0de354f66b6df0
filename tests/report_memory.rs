//! The end-of-run object report's memory: a queue, list or pipe holding a 16 MiB binary
//! item (what a task storing `bytes` puts) is reported with that item counted as omitted,
//! and the host's heap grows by little more than the item's own MessagePack while the
//! report reads it, not by the half a gibibyte its JSON tree (an array of 16 million
//! numbers) would take.
//!
//! A test binary of its own: its allocator counts the whole process, and the message size
//! limit it raises is process-wide.

// A failed unwrap is a failed test, with its location: what a test should do.
#![allow(clippy::unwrap_used)]

mod util;

use std::sync::atomic::{AtomicIsize, Ordering};

use wasmpool::lines::{Object, Objects};
use wasmpool::{Connection, List, Manager, Queue};

static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

/// Counts the bytes the whole process holds, and the most it held.
fn count(delta: isize) {
    let now = LIVE.fetch_add(delta, Ordering::Relaxed) + delta;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: util::CountingAlloc = util::CountingAlloc(count);

/// The item: 16 MiB of binary data.
const ITEM_BYTES: usize = 16 << 20;

/// The most heap the report may take beyond what the process held before it: the item's
/// MessagePack as it is fetched (a copy or two of 16 MiB) and the report's 1 MiB of JSON,
/// with room to spare. Converting the item to a JSON tree first would take 512 MiB.
const PEAK_BUDGET: isize = 96 << 20;

/// A value as a task stores it: a number, or binary data (MessagePack `bin`).
enum Item {
    Int(u64),
    Bin(Vec<u8>),
}

impl serde::Serialize for Item {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Item::Int(n) => s.serialize_u64(*n),
            Item::Bin(b) => s.serialize_bytes(b),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Only put here, never read back as this type.
        serde::de::IgnoredAny::deserialize(d).map(|_| Item::Int(0))
    }
}

/// The same object's handle with another value type (a new reference to it, through the
/// handle's wire form), to put what a task would put.
fn retyped<T: serde::Serialize, U: serde::de::DeserializeOwned>(handle: &T) -> U {
    rmp_serde::from_slice(&rmp_serde::to_vec(handle).unwrap()).unwrap()
}

#[test]
fn a_huge_binary_item_is_omitted_from_the_report_in_bounded_memory() {
    // Room for the item and its framing.
    wasmpool::set_max_message_bytes(ITEM_BYTES + (1 << 20));
    let manager = Manager::new();
    let mut objects = Objects::new();
    for (name, kind) in [("q", "queue"), ("l", "list"), ("p", "pipe")] {
        objects.create(&manager, name, kind).unwrap();
    }
    let (Some(Object::Queue(q)), Some(Object::List(l)), Some(Object::Pipe(a, _))) =
        (objects.get("q"), objects.get("l"), objects.get("p"))
    else {
        panic!("the objects were not made");
    };
    let (q, l, a): (Queue<Item>, List<Item>, Connection<Item>) =
        (retyped(q), retyped(l), retyped(a));
    for item in [Item::Int(1), Item::Bin(vec![200; ITEM_BYTES]), Item::Int(2)] {
        q.put(&item).unwrap();
        l.append(&item).unwrap();
        a.send(&item).unwrap();
    }

    // Each object's report is measured on its own: one holds the item at a time.
    let mut lines = Vec::new();
    for name in ["q", "l", "p"] {
        let mut one = Objects::new();
        let object = objects.get(name).unwrap().clone();
        one.insert(name, object).unwrap();
        let mut out = Vec::with_capacity(4 << 10);
        let before = LIVE.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        one.report(&mut out).unwrap();
        let peak = PEAK.load(Ordering::Relaxed) - before;
        assert!(
            peak < PEAK_BUDGET,
            "reporting `{name}` took {} MiB of heap at its peak",
            peak >> 20
        );
        lines.push(String::from_utf8(out).unwrap());
    }
    // A queue's and a list's listing stop at the item that does not fit, counting it and
    // those after it; a pipe end's counts it alone.
    assert_eq!(
        lines,
        [
            "{\"contents\":[1],\"kind\":\"queue\",\"object\":\"q\",\"omitted\":2}\n",
            "{\"contents\":[1],\"kind\":\"list\",\"object\":\"l\",\"omitted\":2}\n",
            "{\"contents\":{\"0\":[],\"1\":[1,2]},\"kind\":\"pipe\",\"object\":\"p\",\"omitted\":1}\n",
        ]
    );
}
