//! Values crossing into and out of guests: MessagePack, from serde types or from JSON.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};

/// Encodes positional arguments, given as a tuple (`(7,)`, `("a", 2)`, or `()` for none),
/// as the MessagePack array a task receives.
pub fn encode_args<A: Serialize + ?Sized>(args: &A) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    encode_args_into(&mut bytes, args)?;
    Ok(bytes)
}

/// As [`encode_args`], appending to `buf` (which is left as it was on error).
pub(crate) fn encode_args_into<A: Serialize + ?Sized>(buf: &mut Vec<u8>, args: &A) -> Result<()> {
    let start = buf.len();
    if let Err(e) = rmp_serde::encode::write_named(buf, args) {
        buf.truncate(start);
        return Err(Error::BadArgs(format!("cannot encode the arguments: {e}")));
    }
    match buf.get(start..) {
        // `()` encodes as nil: no arguments.
        Some([0xc0]) => {
            buf[start] = 0x90;
            Ok(())
        }
        Some([0x90..=0x9f | 0xdc | 0xdd, ..]) => Ok(()),
        _ => {
            buf.truncate(start);
            Err(Error::BadArgs(
                "arguments must be a tuple of positional arguments, e.g. `(7,)` or `()`".into(),
            ))
        }
    }
}

/// As `encode_args_into(buf, &(arg,))`: the arguments of a one-argument task, a scalar
/// written directly (see [`crate::scalars`]).
pub(crate) fn encode_arg_into<A: Serialize + ?Sized>(buf: &mut Vec<u8>, arg: &A) -> Result<()> {
    let start = buf.len();
    buf.push(0x91);
    if crate::scalars::encode_scalar(buf, arg) {
        return Ok(());
    }
    buf.truncate(start);
    encode_args_into(buf, &(arg,))
}

/// Encodes JSON values as positional arguments.
pub fn json_args(args: &[serde_json::Value]) -> Result<Vec<u8>> {
    encode_args(args)
}

/// Decodes a task's MessagePack result into `T`.
pub(crate) fn decode_result<T: DeserializeOwned>(task: &str, bytes: &[u8]) -> Result<T> {
    rmp_serde::from_slice(bytes).map_err(|e| Error::Decode {
        task: task.to_string(),
        ty: std::any::type_name::<T>(),
        message: e.to_string(),
    })
}

/// Converts a MessagePack value to JSON: map keys that are not strings become their JSON
/// text, binary becomes an array of bytes, NaN and infinities become `null`.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<serde_json::Value> {
    let mut slice = bytes;
    let value = rmpv::decode::read_value(&mut slice).map_err(|e| Error::Decode {
        task: String::new(),
        ty: "JSON",
        message: e.to_string(),
    })?;
    Ok(to_json(value))
}

fn to_json(value: rmpv::Value) -> serde_json::Value {
    use rmpv::Value as M;
    use serde_json::Value as J;
    match value {
        M::Nil => J::Null,
        M::Boolean(b) => J::Bool(b),
        M::Integer(i) => {
            if let Some(u) = i.as_u64() {
                J::from(u)
            } else if let Some(s) = i.as_i64() {
                J::from(s)
            } else {
                J::Null
            }
        }
        M::F32(f) => serde_json::Number::from_f64(f64::from(f)).map_or(J::Null, J::Number),
        M::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        M::String(s) => J::String(s.into_str().unwrap_or_default()),
        M::Binary(b) => J::Array(b.into_iter().map(J::from).collect()),
        M::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        M::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match to_json(k) {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        M::Ext(_, data) => J::Array(data.into_iter().map(J::from).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuples_encode_as_arrays_and_unit_as_empty() {
        assert_eq!(encode_args(&(7u64,)).unwrap(), vec![0x91, 7]);
        assert_eq!(encode_args(&()).unwrap(), vec![0x90]);
        assert!(matches!(encode_args(&7u64), Err(Error::BadArgs(_))));
    }

    #[test]
    fn json_round_trip_keeps_structure() {
        let bytes =
            rmp_serde::to_vec_named(&serde_json::json!({"a": [1, -2, 2.5, "x", null, true]}))
                .unwrap();
        assert_eq!(
            msgpack_to_json(&bytes).unwrap(),
            serde_json::json!({"a": [1, -2, 2.5, "x", null, true]})
        );
    }

    #[test]
    fn integer_map_keys_become_strings() {
        let mut map = std::collections::BTreeMap::new();
        map.insert(100u64, 1_000_000u64);
        let bytes = rmp_serde::to_vec(&map).unwrap();
        assert_eq!(
            msgpack_to_json(&bytes).unwrap(),
            serde_json::json!({"100": 1_000_000})
        );
    }

    #[test]
    fn malformed_msgpack_is_an_error() {
        assert!(msgpack_to_json(&[0xd9]).is_err());
    }
}
