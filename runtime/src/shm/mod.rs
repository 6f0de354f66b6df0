//! Shared memory between the host and its workers: where a pipe's messages travel, so that
//! neither a send nor a receive is a round trip through the host's broker.
//!
//! A [`SharedPipe`] is one sealed memfd segment per pipe ([`segment`]), holding a ring per
//! direction ([`ring`]); waits are futexes on words of the segment ([`futex`]). The broker
//! creates the segment with the pipe and hands its descriptor to each worker that uses an
//! end (over the worker's socket, with the answer to its `Attach`); it keeps deciding who
//! holds which end, and clears the ring mutex of a worker that died inside it.
//!
//! Everything read from a segment is checked: a worker that scribbles on it can corrupt
//! only the pipes it was given, and a reader that finds nonsense reports it as an error.

mod futex;
mod pipe;
mod ring;
mod segment;

pub(crate) use pipe::{Local, SharedPipe};
