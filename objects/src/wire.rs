//! The operations on shared objects, as they travel from a task (or the host program) to the
//! host's broker. They mirror the `objects` interface of the WIT world one to one; values are
//! MessagePack bytes, exactly as the caller encoded them.

use serde::{Deserialize, Serialize};

/// A reference to one host-owned object: its id and the secret that proves the holder was
/// given it. Handles are unforgeable in practice (the token is 64 random bits) and scoped to
/// the host that created the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Handle {
    /// The object's id (for a pipe, the low bit names the end).
    pub id: u64,
    /// The secret that proves the holder was given the handle.
    pub token: u64,
}

/// A dict key and value, MessagePack-encoded.
pub type Entry = (Vec<u8>, Vec<u8>);

/// One operation on one object; the object's kind decides which are allowed.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    QueuePut(Vec<u8>),
    QueueGet,
    QueueQsize,
    QueueMaxsize,
    QueueClose,
    QueueTaskDone,
    QueueJoin,
    ConnSend(Vec<u8>),
    ConnRecv,
    ConnPoll,
    ConnClose,
    Acquire,
    Release,
    SemaphoreValue,
    EventSet,
    EventClear,
    EventIsSet,
    EventWait,
    BarrierWait,
    BarrierAbort,
    BarrierReset,
    BarrierNWaiting,
    ConditionWait,
    ConditionNotify(u32),
    ConditionNotifyAll,
    DictGet(Vec<u8>),
    DictSet(Entry),
    DictDelete(Vec<u8>),
    DictContains(Vec<u8>),
    DictKeys,
    DictValues,
    DictItems,
    DictLen,
    DictUpdate(#[serde(deserialize_with = "capped::items")] Vec<Entry>),
    DictSetdefault(Entry),
    DictPop(Vec<u8>),
    DictIncrement(Vec<u8>, i64),
    DictCompareAndSwap {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    ListAppend(Vec<u8>),
    ListExtend(#[serde(deserialize_with = "capped::items")] Vec<Vec<u8>>),
    ListGet(i64),
    ListSet(i64, Vec<u8>),
    ListLen,
    ListPop(Option<i64>),
    ListIndex(Vec<u8>),
    ListItems,
    /// Whether a `Lock` or `RLock` is held by anyone (Python's `locked()`).
    Locked,
    BarrierParties,
    BarrierBroken,
    /// As `BarrierWait`, offering to run the round's action: answers `RunAction(index)`
    /// to the one party that runs it, `Int(index)` to the others once it succeeded.
    BarrierWaitAction,
    /// The party told to run the action ran it: `true` if it succeeded (the round's
    /// parties are released), `false` if it failed (the barrier breaks).
    BarrierActionDone(bool),
    DictPopitem,
    DictClear,
    ListInsert(i64, Vec<u8>),
    ListRemove(Vec<u8>),
    ListClear,
    ListSlice(Option<i64>, Option<i64>),
}

/// What one stored item (a queued message, a list item, a dict entry) costs on top of its
/// bytes, in the broker's accounting: empty items are not free, so a flood of them is bounded
/// by the same byte limits as any other.
pub const ITEM_OVERHEAD: usize = 32;

/// The most items one `ListExtend` or `DictUpdate` may carry: as many as fit the largest
/// message any host accepts (60 MiB) at [`ITEM_OVERHEAD`] each. Decoding refuses more before
/// allocating for them, so a request of millions of empty items costs the decoder nothing.
pub const MAX_REQUEST_ITEMS: usize = MESSAGE_CAP / ITEM_OVERHEAD;

/// The largest message any host accepts (60 MiB): its configurable limit is capped here,
/// below the largest frame between host and worker.
pub const MESSAGE_CAP: usize = 60 << 20;

/// Decoding a many-item request with at most [`MAX_REQUEST_ITEMS`] items.
mod capped {
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, Error, SeqAccess, Visitor};

    use super::MAX_REQUEST_ITEMS;

    struct Items<T>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>> Visitor<'de> for Items<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a sequence of at most {MAX_REQUEST_ITEMS} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > MAX_REQUEST_ITEMS {
                return Err(A::Error::invalid_length(announced, &self));
            }
            let mut items = Vec::with_capacity(announced.min(4096));
            while let Some(item) = seq.next_element()? {
                if items.len() == MAX_REQUEST_ITEMS {
                    return Err(A::Error::invalid_length(items.len() + 1, &self));
                }
                items.push(item);
            }
            Ok(items)
        }
    }

    pub fn items<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
        d.deserialize_seq(Items(PhantomData))
    }
}

impl Request {
    /// The size of this request's message, as the message size limit counts it: the
    /// [`payload_size`] of each value it carries, with [`ITEM_OVERHEAD`] for each item of a
    /// many-item request (`ListExtend`, `DictUpdate`).
    pub fn payload_len(&self) -> usize {
        use Request::*;
        let size = |v: &Vec<u8>| payload_size(v);
        match self {
            QueuePut(v)
            | ConnSend(v)
            | DictGet(v)
            | DictDelete(v)
            | DictContains(v)
            | DictPop(v)
            | ListAppend(v)
            | ListIndex(v)
            | ListSet(_, v)
            | ListInsert(_, v)
            | ListRemove(v)
            | DictIncrement(v, _) => size(v),
            DictSet((k, v)) | DictSetdefault((k, v)) => size(k) + size(v),
            DictUpdate(entries) => entries
                .iter()
                .map(|(k, v)| size(k) + size(v) + ITEM_OVERHEAD)
                .sum(),
            ListExtend(items) => items.iter().map(|v| size(v) + ITEM_OVERHEAD).sum(),
            DictCompareAndSwap { key, expected, new } => {
                size(key) + expected.as_ref().map_or(0, size) + size(new)
            }
            _ => 0,
        }
    }
}

/// The size of one MessagePack value as the message size limit counts it: what the caller
/// sent. For bytes (`Connection::send_bytes`) and text, that is their own length, without
/// the MessagePack header in front of them, so a message of exactly the limit is accepted,
/// as Python accepts it; for any other value, its whole encoding.
pub fn payload_size(value: &[u8]) -> usize {
    let header = match value.first() {
        Some(0xa0..=0xbf) => 1,
        Some(0xc4 | 0xd9) => 2,
        Some(0xc5 | 0xda) => 3,
        Some(0xc6 | 0xdb) => 5,
        _ => return value.len(),
    };
    let Some(len) = value.get(1..header).map(|b| match b.len() {
        0 => usize::from(value[0] & 0x1f),
        _ => b.iter().fold(0usize, |n, &b| n << 8 | usize::from(b)),
    }) else {
        return value.len();
    };
    if header + len == value.len() {
        len
    } else {
        value.len()
    }
}

/// The refusal of a message of `len` bytes (as [`payload_size`] counts them) over the
/// message size limit `max`: the one error every path (a queue's put, a pipe's send, a
/// dict's or list's store, in the host or in a task) gives.
pub fn too_large(len: usize, max: usize) -> ObjectError {
    ObjectError::TooLarge(format!(
        "a message of {len} bytes is over the message size limit of {max} bytes"
    ))
}

/// What an operation answers.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Unit,
    Value(Vec<u8>),
    Maybe(Option<Vec<u8>>),
    Values(Vec<Vec<u8>>),
    Entries(Vec<Entry>),
    Count(u64),
    Int(i64),
    Flag(bool),
    /// Every party of a barrier's round has arrived, and this one (its arrival index) runs
    /// the round's action now, then answers `BarrierActionDone`.
    RunAction(u32),
}

/// Why an operation on a shared object failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ObjectError {
    /// The timeout passed.
    #[error("timed out")]
    Timeout,
    /// `get` found nothing in time (Python's `queue.Empty`).
    #[error("the queue is empty")]
    Empty,
    /// `put` found no room in time (Python's `queue.Full`).
    #[error("the queue is full")]
    Full,
    /// End of file on a pipe, or a closed queue or connection.
    #[error("{0}")]
    Closed(String),
    /// The barrier is broken (Python's `BrokenBarrierError`).
    #[error("the barrier is broken")]
    Broken,
    /// Released a lock the caller does not hold, or a bounded semaphore too often.
    #[error("{0}")]
    NotOwner(String),
    /// A missing key, an out-of-range index, a value not in a list.
    #[error("{0}")]
    Missing(String),
    /// The operation does not apply to this object or its value.
    #[error("{0}")]
    Invalid(String),
    /// The message is larger than the host allows.
    #[error("{0}")]
    TooLarge(String),
    /// The handle names no live object the caller may use.
    #[error("{0}")]
    Stale(String),
    /// A value could not be encoded as MessagePack.
    #[error("cannot encode the value: {0}")]
    Encode(String),
    /// A stored value could not be decoded as the handle's type.
    #[error("cannot decode the value: {0}")]
    Decode(String),
    /// What keeps the object (a cluster's Redis) cannot be reached now: not the caller's
    /// fault; the same operation may be tried again once it is back (one whose answer was
    /// lost with the connection may have been done). A task's guest sees it as `stale`,
    /// the WIT world having no case of its own for it.
    #[error("{0}")]
    Unavailable(String),
}

impl ObjectError {
    /// Whether the operation may succeed if tried again unchanged: what keeps the object
    /// could not be reached ([`ObjectError::Unavailable`]).
    pub fn is_retryable(&self) -> bool {
        matches!(self, ObjectError::Unavailable(_))
    }
}

/// The kinds of shared object, and the name each travels under inside task arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `Queue`, `JoinableQueue`, `SimpleQueue`.
    Queue,
    /// One end of a `Pipe`.
    Connection,
    /// `Lock`.
    Lock,
    /// `RLock`.
    RLock,
    /// `Semaphore`, `BoundedSemaphore`.
    Semaphore,
    /// `Event`.
    Event,
    /// `Barrier`.
    Barrier,
    /// `Condition`.
    Condition,
    /// Manager `dict`.
    Dict,
    /// Manager `list`.
    List,
}

impl Kind {
    /// The tag that marks a handle of this kind inside MessagePack arguments.
    pub fn tag(self) -> &'static str {
        match self {
            Kind::Queue => "wasmpool:queue",
            Kind::Connection => "wasmpool:connection",
            Kind::Lock => "wasmpool:lock",
            Kind::RLock => "wasmpool:rlock",
            Kind::Semaphore => "wasmpool:semaphore",
            Kind::Event => "wasmpool:event",
            Kind::Barrier => "wasmpool:barrier",
            Kind::Condition => "wasmpool:condition",
            Kind::Dict => "wasmpool:dict",
            Kind::List => "wasmpool:list",
        }
    }

    /// Python's name for the kind, for error messages.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Queue => "Queue",
            Kind::Connection => "Connection",
            Kind::Lock => "Lock",
            Kind::RLock => "RLock",
            Kind::Semaphore => "Semaphore",
            Kind::Event => "Event",
            Kind::Barrier => "Barrier",
            Kind::Condition => "Condition",
            Kind::Dict => "dict",
            Kind::List => "list",
        }
    }
}
