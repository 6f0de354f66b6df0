//! The untyped core of every handle: its kind and wire handle, how it travels inside
//! MessagePack arguments (`[tag, id, token]`), and the reference counting the host does.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::transport;
use crate::wire::{Handle, Kind, ObjectError, Request, Response};

/// A handle of a known kind. Clones and drops are reported to the transport, so the host
/// knows how long its program still holds an object.
#[derive(Debug)]
pub(crate) struct RawHandle {
    pub kind: Kind,
    pub handle: Handle,
}

impl RawHandle {
    #[allow(dead_code)]
    pub(crate) fn new(kind: Kind, handle: Handle) -> Self {
        RawHandle { kind, handle }
    }

    pub(crate) fn call(
        &self,
        req: Request,
        timeout: Option<Duration>,
    ) -> Result<Response, ObjectError> {
        transport::current()?.invoke(self.handle, req, timeout)
    }

    pub(crate) fn deserialize_kind<'de, D: Deserializer<'de>>(
        d: D,
        kind: Kind,
    ) -> Result<Self, D::Error> {
        let (tag, id, token) = <(String, u64, u64)>::deserialize(d)?;
        if tag != kind.tag() {
            return Err(serde::de::Error::custom(format!(
                "expected a {} handle, found {tag:?}",
                kind.name()
            )));
        }
        let handle = Handle { id, token };
        if let Ok(t) = transport::current() {
            t.retain(handle);
        }
        Ok(RawHandle { kind, handle })
    }
}

impl Clone for RawHandle {
    fn clone(&self) -> Self {
        if let Ok(t) = transport::current() {
            t.retain(self.handle);
        }
        RawHandle {
            kind: self.kind,
            handle: self.handle,
        }
    }
}

impl Drop for RawHandle {
    fn drop(&mut self) {
        if let Ok(t) = transport::current() {
            t.release(self.handle);
        }
    }
}

impl Serialize for RawHandle {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if let Ok(t) = transport::current() {
            t.granted(self.handle);
        }
        (self.kind.tag(), self.handle.id, self.handle.token).serialize(s)
    }
}

pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, ObjectError> {
    rmp_serde::to_vec_named(value).map_err(|e| ObjectError::Encode(e.to_string()))
}

pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ObjectError> {
    rmp_serde::from_slice(bytes).map_err(|e| ObjectError::Decode(e.to_string()))
}

pub(crate) fn unexpected(r: Response) -> ObjectError {
    ObjectError::Invalid(format!("unexpected answer from the broker: {r:?}"))
}

/// Defines a typed handle: a newtype over [`RawHandle`] that travels as the kind's tag.
macro_rules! handle_type {
    ($(#[$m:meta])* $name:ident $(<$($g:ident),+>)?, $kind:expr) => {
        $(#[$m])*
        pub struct $name $(<$($g),+>)? {
            pub(crate) raw: $crate::handle::RawHandle,
            _types: ::std::marker::PhantomData<fn() -> ($($($g,)+)?)>,
        }

        impl $(<$($g),+>)? $name $(<$($g),+>)? {
            #[allow(dead_code)]
            pub(crate) fn from_raw(raw: $crate::handle::RawHandle) -> Self {
                $name { raw, _types: ::std::marker::PhantomData }
            }

            /// Wraps a handle the host's broker just created (its one reference is this value).
            #[cfg(feature = "host")]
            #[doc(hidden)]
            pub fn __from_created(handle: $crate::wire::Handle) -> Self {
                Self::from_raw($crate::handle::RawHandle::new($kind, handle))
            }

            /// The wire handle (id and token) behind this object.
            pub fn handle(&self) -> $crate::wire::Handle {
                self.raw.handle
            }
        }

        impl $(<$($g),+>)? Clone for $name $(<$($g),+>)? {
            fn clone(&self) -> Self {
                $name { raw: self.raw.clone(), _types: ::std::marker::PhantomData }
            }
        }

        impl $(<$($g),+>)? ::std::fmt::Debug for $name $(<$($g),+>)? {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                write!(f, "{}({})", stringify!($name), self.raw.handle.id)
            }
        }

        impl $(<$($g),+>)? ::serde::Serialize for $name $(<$($g),+>)? {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                self.raw.serialize(s)
            }
        }

        impl<'de $($(, $g)+)?> ::serde::Deserialize<'de> for $name $(<$($g),+>)? {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                $crate::handle::RawHandle::deserialize_kind(d, $kind).map(Self::from_raw)
            }
        }
    };
}
pub(crate) use handle_type;
