//! `Connection`: one end of Python's `multiprocessing.Pipe`.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handle::{decode, encode, handle_type, unexpected};
use crate::queue::{flag, unit};
use crate::wire::{Kind, ObjectError, Request, Response};

handle_type!(
    /// One end of a pipe. An end is open while anyone holds it: the host program until it
    /// closes or drops its copy, and each process it was given to until that process closes
    /// it or exits. `recv` on an end whose other end is closed everywhere, once drained, is
    /// end of file (`Closed`), never a hang.
    Connection<T>,
    Kind::Connection
);

impl<T: Serialize + DeserializeOwned> Connection<T> {
    /// Sends `value` to the other end; `Closed` if the other end is closed.
    pub fn send(&self, value: &T) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ConnSend(encode(value)?), None)?)
    }

    /// Receives the next value, blocking until one arrives; `Closed` at end of file.
    pub fn recv(&self) -> Result<T, ObjectError> {
        self.recv_timeout(None)
    }

    /// As [`recv`](Self::recv), giving up with `Timeout` after `timeout`.
    pub fn recv_timeout(&self, timeout: Option<Duration>) -> Result<T, ObjectError> {
        match self.raw.call(Request::ConnRecv, timeout)? {
            Response::Value(bytes) => decode(&bytes),
            r => Err(unexpected(r)),
        }
    }
}

impl<T> Connection<T> {
    /// Whether `recv` would not block: a value is waiting or the other end is closed. Waits
    /// at most `timeout` (`Some(ZERO)`: just looks; `None`: until one of them happens).
    pub fn poll(&self, timeout: Option<Duration>) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::ConnPoll, timeout)?)
    }

    /// Closes this process's copy of the end.
    pub fn close(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ConnClose, None)?)
    }
}
