//! Everything that travels between the host and a worker process.

mod codec;

pub(crate) use self::codec::*;
pub use self::codec::{Limits, Stream, fuzzing};
