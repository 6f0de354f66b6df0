//! Everything that travels between the host and a worker process: the frames
//! ([`frames`]), their codec and reader ([`codec`]), the limits a task runs under
//! ([`limits`]), the batches of items and answers inside frames ([`packed`]), and the
//! fuzzing entry points ([`fuzzing`]).
//!
//! The layer under the host and the worker: it depends on nothing above it (the broker,
//! the pool, the worker, spawning), only on the objects' wire types, grants and the kinds
//! of shared segments.

mod codec;
mod frames;
#[doc(hidden)]
pub mod fuzzing;
mod limits;
pub(crate) mod packed;

pub(crate) use self::codec::{
    MAX_FRAME, MAX_RESULT, PART_BYTES, WorkerReader, decode_frame, encode_frame, read_frame,
    write_frame,
};
pub use self::frames::Stream;
pub(crate) use self::frames::{
    CANCELLED_EXIT, CallEvent, CallRequest, Control, EXIT_STATUS, FromWorker, Load, ObjectAnswer,
    ObjectCall, Outcome, Status, ToWorker, WATCHDOG_EXIT,
};
pub use self::limits::Limits;
pub(crate) use self::limits::describe_bytes;
