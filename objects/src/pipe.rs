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
    /// Sends `buf` as one message of bytes, as Python's `send_bytes`; `Closed` if the other
    /// end is closed. The message size limit counts `buf`'s own length, so a message of
    /// exactly the limit is sent. Receive it with [`recv_bytes`](Self::recv_bytes).
    pub fn send_bytes(&self, buf: &[u8]) -> Result<(), ObjectError> {
        unit(
            self.raw
                .call(Request::ConnSend(encode(&Bytes(buf))?), None)?,
        )
    }

    /// Receives the next message sent with [`send_bytes`](Self::send_bytes), blocking until
    /// one arrives, as Python's `recv_bytes`; `Closed` at end of file, `Decode` if the
    /// message is not bytes.
    pub fn recv_bytes(&self) -> Result<Vec<u8>, ObjectError> {
        self.recv_bytes_timeout(None)
    }

    /// As [`recv_bytes`](Self::recv_bytes), giving up with `Timeout` after `timeout`.
    pub fn recv_bytes_timeout(&self, timeout: Option<Duration>) -> Result<Vec<u8>, ObjectError> {
        match self.raw.call(Request::ConnRecv, timeout)? {
            Response::Value(bytes) => decode::<ByteBuf>(&bytes).map(|b| b.0),
            r => Err(unexpected(r)),
        }
    }

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

/// Bytes encoded as one MessagePack `bin` (not an array of integers).
struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Bytes decoded from one MessagePack `bin`.
struct ByteBuf(Vec<u8>);

impl<'de> serde::Deserialize<'de> for ByteBuf {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl serde::de::Visitor<'_> for Visit {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a message of bytes (sent with send_bytes)")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
        }
        d.deserialize_byte_buf(Visit)
    }
}
