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
/// text, binary becomes an array of bytes, NaN and infinities become `null`. A string that is
/// not valid UTF-8 is an error, never a silent substitution.
///
/// This builds a [`serde_json::Value`] tree, which takes many times the MessagePack's size
/// for a large result, and its [`Error::Decode`] names no task; [`write_json`] writes the
/// same JSON text without a tree, and names the task.
pub fn msgpack_to_json(bytes: &[u8]) -> Result<serde_json::Value> {
    let decode_error = |message: String| Error::Decode {
        task: String::new(),
        ty: "JSON",
        message,
    };
    let mut slice = bytes;
    let value = rmpv::decode::read_value(&mut slice).map_err(|e| decode_error(e.to_string()))?;
    to_json(value).map_err(decode_error)
}

fn to_json(value: rmpv::Value) -> std::result::Result<serde_json::Value, String> {
    use rmpv::Value as M;
    use serde_json::Value as J;
    Ok(match value {
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
        M::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => return Err(NOT_UTF8.to_string()),
        },
        M::Binary(b) => J::Array(b.into_iter().map(J::from).collect()),
        M::Array(items) => J::Array(items.into_iter().map(to_json).collect::<Result<_, _>>()?),
        M::Map(entries) => {
            let mut map = serde_json::Map::new();
            for (k, v) in entries {
                let key = match to_json(k)? {
                    J::String(s) => s,
                    other => other.to_string(),
                };
                map.insert(key, to_json(v)?);
            }
            J::Object(map)
        }
        M::Ext(_, data) => J::Array(data.into_iter().map(J::from).collect()),
    })
}

const NOT_UTF8: &str = "a string in the result is not valid UTF-8 (a task returns bytes as \
                        `Vec<u8>`, which becomes an array of numbers)";

/// The deepest nesting of arrays and maps [`write_json`] follows (as `rmpv`'s decoder).
pub const MAX_JSON_DEPTH: usize = 1024;

/// Writes task `task`'s MessagePack result to `out` as one JSON text, streaming: no tree of
/// values is built, so the host needs no memory beyond the result's bytes and `out`'s buffer,
/// however many values the result holds.
///
/// The JSON is as [`msgpack_to_json`]'s, except that map entries keep the order the task
/// wrote them in (and a key written twice appears twice). The whole result is checked before
/// anything is written: on [`Error::Decode`] (malformed MessagePack, a string that is not
/// valid UTF-8, nesting deeper than [`MAX_JSON_DEPTH`], bytes after the value), naming the
/// task, nothing has been written; [`Error::Io`] is a failure of `out`.
pub fn write_json<W: std::io::Write + ?Sized>(task: &str, bytes: &[u8], out: &mut W) -> Result<()> {
    check_json(task, bytes)?;
    write_checked_json(task, bytes, out)
}

/// As [`write_json`], for a result [`check_json`] has passed: it is not checked again (a
/// result that fails after all may leave part of its JSON written).
pub(crate) fn write_checked_json<W: std::io::Write + ?Sized>(
    task: &str,
    bytes: &[u8],
    out: &mut W,
) -> Result<()> {
    let decode_error = |message: String| Error::Decode {
        task: task.to_string(),
        ty: "JSON",
        message,
    };
    transcode_all(bytes, out).map_err(|e| match e {
        Fail::Decode(m) => decode_error(m),
        Fail::Io(e) => Error::io(format!("writing the result of task `{task}`"), e),
    })
}

/// Checks that task `task`'s MessagePack result converts to JSON (see [`write_json`]),
/// writing nothing: [`Error::Decode`], naming the task, if it does not.
pub fn check_json(task: &str, bytes: &[u8]) -> Result<()> {
    transcode_all(bytes, &mut std::io::sink()).map_err(|e| Error::Decode {
        task: task.to_string(),
        ty: "JSON",
        message: match e {
            Fail::Decode(m) => m,
            Fail::Io(e) => e.to_string(),
        },
    })
}

enum Fail {
    Decode(String),
    Io(std::io::Error),
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail::Io(e)
    }
}

fn transcode_all<W: std::io::Write + ?Sized>(bytes: &[u8], out: &mut W) -> Result<(), Fail> {
    let mut r = Reader { bytes, pos: 0 };
    transcode(&mut r, out, 0)?;
    if r.pos != bytes.len() {
        return Err(Fail::Decode(format!(
            "{} bytes follow the end of the value at byte {}",
            bytes.len() - r.pos,
            r.pos
        )));
    }
    Ok(())
}

/// A cursor over MessagePack bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Fail> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end.and_then(|e| self.bytes.get(self.pos..e)) {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => Err(Fail::Decode(format!(
                "the result ends early: {n} bytes expected at byte {} of {}",
                self.pos,
                self.bytes.len()
            ))),
        }
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Fail> {
        let s = self.take(N)?;
        let mut a = [0; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Fail> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<usize, Fail> {
        Ok(usize::from(u16::from_be_bytes(self.array()?)))
    }

    fn u32(&mut self) -> Result<usize, Fail> {
        Ok(u32::from_be_bytes(self.array()?) as usize)
    }
}

fn write_number<W: std::io::Write + ?Sized, N: Serialize>(out: &mut W, n: N) -> Result<(), Fail> {
    serde_json::to_writer(out, &n).map_err(|e| Fail::Io(e.into()))
}

fn write_float<W: std::io::Write + ?Sized>(out: &mut W, f: f64) -> Result<(), Fail> {
    if f.is_finite() {
        write_number(out, f)
    } else {
        Ok(out.write_all(b"null")?)
    }
}

fn write_str<W: std::io::Write + ?Sized>(out: &mut W, raw: &[u8], at: usize) -> Result<(), Fail> {
    let s = std::str::from_utf8(raw).map_err(|e| {
        Fail::Decode(format!(
            "the string at byte {at} is not valid UTF-8 ({e}); a task returns bytes as \
             `Vec<u8>`, which becomes an array of numbers"
        ))
    })?;
    serde_json::to_writer(out, s).map_err(|e| Fail::Io(e.into()))
}

fn write_bytes<W: std::io::Write + ?Sized>(out: &mut W, data: &[u8]) -> Result<(), Fail> {
    out.write_all(b"[")?;
    for (i, b) in data.iter().enumerate() {
        if i > 0 {
            out.write_all(b",")?;
        }
        let digits = [b / 100, b / 10 % 10, b % 10].map(|d| b'0' + d);
        let skip = if *b >= 100 {
            0
        } else if *b >= 10 {
            1
        } else {
            2
        };
        out.write_all(&digits[skip..])?;
    }
    Ok(out.write_all(b"]")?)
}

/// Reads one MessagePack value from `r` and writes it to `out` as JSON.
fn transcode<W: std::io::Write + ?Sized>(
    r: &mut Reader<'_>,
    out: &mut W,
    depth: usize,
) -> Result<(), Fail> {
    let at = r.pos;
    let marker = r.u8()?;
    match marker {
        0x00..=0x7f => write_number(out, marker),
        0xe0..=0xff => write_number(out, marker as i8),
        0xc0 => Ok(out.write_all(b"null")?),
        0xc2 => Ok(out.write_all(b"false")?),
        0xc3 => Ok(out.write_all(b"true")?),
        0xcc => write_number(out, r.u8()?),
        0xcd => write_number(out, u16::from_be_bytes(r.array()?)),
        0xce => write_number(out, u32::from_be_bytes(r.array()?)),
        0xcf => write_number(out, u64::from_be_bytes(r.array()?)),
        0xd0 => write_number(out, i8::from_be_bytes(r.array()?)),
        0xd1 => write_number(out, i16::from_be_bytes(r.array()?)),
        0xd2 => write_number(out, i32::from_be_bytes(r.array()?)),
        0xd3 => write_number(out, i64::from_be_bytes(r.array()?)),
        0xca => write_float(out, f64::from(f32::from_be_bytes(r.array()?))),
        0xcb => write_float(out, f64::from_be_bytes(r.array()?)),
        0xa0..=0xbf | 0xd9..=0xdb => {
            let len = match marker {
                0xd9 => usize::from(r.u8()?),
                0xda => r.u16()?,
                0xdb => r.u32()?,
                _ => usize::from(marker & 0x1f),
            };
            write_str(out, r.take(len)?, at)
        }
        0xc4..=0xc6 => {
            let len = match marker {
                0xc4 => usize::from(r.u8()?),
                0xc5 => r.u16()?,
                _ => r.u32()?,
            };
            write_bytes(out, r.take(len)?)
        }
        // Extension types: their data as bytes (the type is dropped).
        0xc7..=0xc9 | 0xd4..=0xd8 => {
            let len = match marker {
                0xc7 => usize::from(r.u8()?),
                0xc8 => r.u16()?,
                0xc9 => r.u32()?,
                _ => 1 << (marker - 0xd4),
            };
            r.u8()?;
            write_bytes(out, r.take(len)?)
        }
        0x90..=0x9f | 0xdc | 0xdd | 0x80..=0x8f | 0xde | 0xdf => {
            if depth >= MAX_JSON_DEPTH {
                return Err(Fail::Decode(format!(
                    "arrays and maps nest deeper than {MAX_JSON_DEPTH} levels at byte {at}"
                )));
            }
            let is_map = matches!(marker, 0x80..=0x8f | 0xde | 0xdf);
            let len = match marker {
                0xdc | 0xde => r.u16()?,
                0xdd | 0xdf => r.u32()?,
                _ => usize::from(marker & 0x0f),
            };
            out.write_all(if is_map { b"{" } else { b"[" })?;
            for i in 0..len {
                if i > 0 {
                    out.write_all(b",")?;
                }
                if is_map {
                    write_key(r, out, depth + 1)?;
                    out.write_all(b":")?;
                }
                transcode(r, out, depth + 1)?;
            }
            Ok(out.write_all(if is_map { b"}" } else { b"]" })?)
        }
        _ => Err(Fail::Decode(format!(
            "byte {at} is not a MessagePack value (marker {marker:#04x})"
        ))),
    }
}

/// Writes a map key: a string as itself, any other value as its JSON text, quoted.
fn write_key<W: std::io::Write + ?Sized>(
    r: &mut Reader<'_>,
    out: &mut W,
    depth: usize,
) -> Result<(), Fail> {
    let start = r.pos;
    if let Some(&marker) = r.bytes.get(start)
        && matches!(marker, 0xa0..=0xbf | 0xd9..=0xdb)
    {
        return transcode(r, out, depth);
    }
    let mut text = Vec::new();
    transcode(r, &mut text, depth)?;
    let text = String::from_utf8(text)
        .map_err(|_| Fail::Decode(format!("the map key at byte {start} is not text")))?;
    serde_json::to_writer(out, &text).map_err(|e| Fail::Io(e.into()))
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

    fn streamed(bytes: &[u8]) -> Result<String> {
        let mut out = Vec::new();
        let r = write_json("t", bytes, &mut out);
        if r.is_err() {
            assert!(
                out.is_empty(),
                "nothing is written for a result that does not decode"
            );
        }
        r.map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_string_that_is_not_utf8_is_an_error_naming_the_task() {
        // fixstr of 2 bytes: 0xff 0xfe.
        let bytes = [0x91, 0xa2, 0xff, 0xfe];
        let e = msgpack_to_json(&bytes).unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
        match streamed(&bytes) {
            Err(Error::Decode { task, message, .. }) => {
                assert_eq!(task, "t");
                assert!(message.contains("byte 1 is not valid UTF-8"), "{message}");
            }
            other => panic!("expected a decode error, got {other:?}"),
        }
    }

    #[test]
    fn streamed_json_is_the_same_json() {
        let mut keyed = std::collections::BTreeMap::new();
        keyed.insert(-3i64, vec![1u8, 2]);
        let values = [
            rmp_serde::to_vec_named(&serde_json::json!({
                "a": [0, 1, 127, 128, 255, 256, 65535, 65536, u64::MAX, -1, -32, -33, -128,
                      -129, -32768, -32769, i64::MIN, 2.5, -0.0, 1e300, "x\"\n\u{1}é", null,
                      true, false, {}, [], {"deep": [[[{"k": "v"}]]]}],
                "": "",
            }))
            .unwrap(),
            rmp_serde::to_vec(&keyed).unwrap(),
            {
                let mut v = rmp_serde::to_vec(&(0.1f32, f64::NAN, f64::INFINITY)).unwrap();
                v[0] = 0x94;
                rmp::encode::write_bin(&mut v, &[0, 9, 10, 99, 100, 255]).unwrap();
                v
            },
            rmp_serde::to_vec(&"y".repeat(70_000)).unwrap(),
            rmp_serde::to_vec(&vec![7u8; 70_000]).unwrap(),
            // fixext 4 and ext 8: their data.
            vec![0x92, 0xd6, 0x01, 1, 2, 3, 4, 0xc7, 0x02, 0x05, 8, 9],
        ];
        for bytes in values {
            let text = streamed(&bytes).unwrap();
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(parsed, msgpack_to_json(&bytes).unwrap(), "{text}");
        }
    }

    #[test]
    fn malformed_results_are_decode_errors_and_write_nothing() {
        let cases: [(&[u8], &str); 6] = [
            (&[0xd9], "ends early"),
            (&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x01], "ends early"),
            (&[0x01, 0x02], "1 bytes follow the end"),
            (&[0x91, 0xc1], "not a MessagePack value"),
            (&[], "ends early"),
            (&[0x81, 0x91, 0xa1, 0xff, 0x01], "not valid UTF-8"),
        ];
        for (bytes, needle) in cases {
            let e = streamed(bytes).unwrap_err();
            assert!(e.to_string().contains("task `t`"), "{e}");
            assert!(e.to_string().contains(needle), "{bytes:?}: {e}");
        }
        let deep = [vec![0x91; MAX_JSON_DEPTH + 1], vec![0xc0]].concat();
        let e = streamed(&deep).unwrap_err();
        assert!(e.to_string().contains("deeper than 1024"), "{e}");
        let ok = [vec![0x91; MAX_JSON_DEPTH], vec![0xc0]].concat();
        assert!(streamed(&ok).is_ok());
    }

    #[test]
    fn non_string_keys_are_quoted_json_text() {
        // {1: 2, [1]: 3, nil: 4}
        let bytes = [0x83, 0x01, 0x02, 0x91, 0x01, 0x03, 0xc0, 0x04];
        assert_eq!(streamed(&bytes).unwrap(), r#"{"1":2,"[1]":3,"null":4}"#);
    }
}
