//! A MessagePack fast path on the host for scalar arguments (booleans, integers, floats,
//! strings), which is what tiny tasks take.
//!
//! `rmp_serde` sets up a serializer per value and dispatches through it: encoding a `map`'s
//! 200k integers took ~16 ns each on the thread that submits them, and this takes ~7. The
//! writer here writes scalars with `rmp`'s own functions, so the bytes are exactly those of
//! `rmp_serde`, and refuses anything else, which `rmp_serde` then encodes. It works for any
//! serde type: no `'static` bound is needed to tell a scalar apart, as serde itself says
//! which kind of value it is. (Decoding results the same way was slower than `rmp_serde`,
//! which reads a number in ~6 ns.)

use serde::ser::{Impossible, Serialize, Serializer};

/// Appends `value`'s MessagePack encoding to `buf` if it is a scalar; returns whether it
/// did. Otherwise `buf` is left as it was, for `rmp_serde` to encode the value: a value
/// that is not a scalar has its `serialize` called twice (the first call stops at once), so
/// one whose output changes from call to call is not supported.
pub(crate) fn encode_scalar<T: Serialize + ?Sized>(buf: &mut Vec<u8>, value: &T) -> bool {
    let start = buf.len();
    if value.serialize(ScalarWriter(buf)).is_ok() {
        return true;
    }
    buf.truncate(start);
    false
}

/// The value is not a scalar (or cannot be written here): `rmp_serde` is to encode it.
#[derive(Debug)]
struct NotScalar;

impl std::fmt::Display for NotScalar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not a scalar")
    }
}

impl std::error::Error for NotScalar {}

impl serde::ser::Error for NotScalar {
    fn custom<T: std::fmt::Display>(_: T) -> Self {
        NotScalar
    }
}

/// Writes a scalar as `rmp_serde` does (with `rmp`'s own writers); refuses anything else.
struct ScalarWriter<'a>(&'a mut Vec<u8>);

type Refused = Impossible<(), NotScalar>;

impl Serializer for ScalarWriter<'_> {
    type Ok = ();
    type Error = NotScalar;
    type SerializeSeq = Refused;
    type SerializeTuple = Refused;
    type SerializeTupleStruct = Refused;
    type SerializeTupleVariant = Refused;
    type SerializeMap = Refused;
    type SerializeStruct = Refused;
    type SerializeStructVariant = Refused;

    fn serialize_bool(self, v: bool) -> Result<(), NotScalar> {
        rmp::encode::write_bool(self.0, v).map_err(|_| NotScalar)
    }
    fn serialize_i8(self, v: i8) -> Result<(), NotScalar> {
        self.serialize_i64(v.into())
    }
    fn serialize_i16(self, v: i16) -> Result<(), NotScalar> {
        self.serialize_i64(v.into())
    }
    fn serialize_i32(self, v: i32) -> Result<(), NotScalar> {
        self.serialize_i64(v.into())
    }
    fn serialize_i64(self, v: i64) -> Result<(), NotScalar> {
        rmp::encode::write_sint(self.0, v)
            .map(drop)
            .map_err(|_| NotScalar)
    }
    fn serialize_u8(self, v: u8) -> Result<(), NotScalar> {
        self.serialize_u64(v.into())
    }
    fn serialize_u16(self, v: u16) -> Result<(), NotScalar> {
        self.serialize_u64(v.into())
    }
    fn serialize_u32(self, v: u32) -> Result<(), NotScalar> {
        self.serialize_u64(v.into())
    }
    fn serialize_u64(self, v: u64) -> Result<(), NotScalar> {
        rmp::encode::write_uint(self.0, v)
            .map(drop)
            .map_err(|_| NotScalar)
    }
    fn serialize_f32(self, v: f32) -> Result<(), NotScalar> {
        rmp::encode::write_f32(self.0, v).map_err(|_| NotScalar)
    }
    fn serialize_f64(self, v: f64) -> Result<(), NotScalar> {
        rmp::encode::write_f64(self.0, v).map_err(|_| NotScalar)
    }
    fn serialize_char(self, v: char) -> Result<(), NotScalar> {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), NotScalar> {
        rmp::encode::write_str(self.0, v).map_err(|_| NotScalar)
    }
    fn serialize_bytes(self, _: &[u8]) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_none(self) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, _: &T) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_unit(self) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
    ) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<(), NotScalar> {
        Err(NotScalar)
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple(self, _: usize) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Refused, NotScalar> {
        Err(NotScalar)
    }
    fn is_human_readable(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `encode_scalar` writes what `rmp_serde` writes, or leaves the value to it.
    fn encodes_as_rmp<T: Serialize>(value: &T, scalar: bool) {
        let mut buf = vec![0x91];
        assert_eq!(encode_scalar(&mut buf, value), scalar);
        if scalar {
            let expected = rmp_serde::to_vec(value).expect("encode");
            assert_eq!(buf[1..], expected[..]);
        } else {
            assert_eq!(buf, [0x91], "left as it was");
        }
    }

    #[test]
    fn scalars_are_written_as_rmp_serde_writes_them_and_the_rest_is_left_to_it() {
        for v in [0u64, 127, 128, 255, 256, 65535, 65536, 1 << 32, u64::MAX] {
            encodes_as_rmp(&v, true);
        }
        for v in [
            0i64,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            -2147483648,
            -2147483649,
            i64::MIN,
            i64::MAX,
        ] {
            encodes_as_rmp(&v, true);
        }
        encodes_as_rmp(&7u8, true);
        encodes_as_rmp(&-7i16, true);
        encodes_as_rmp(&true, true);
        encodes_as_rmp(&1.5f32, true);
        encodes_as_rmp(&-2.25f64, true);
        encodes_as_rmp(&'é', true);
        encodes_as_rmp(&"", true);
        encodes_as_rmp(&"x".repeat(40), true);
        encodes_as_rmp(&"y".repeat(70_000), true);
        encodes_as_rmp(&Some(3u8), false);
        encodes_as_rmp(&(1u8, 2u8), false);
        encodes_as_rmp(&vec![1u8], false);
        encodes_as_rmp(&(), false);
    }

    #[test]
    fn a_one_argument_call_is_encoded_as_its_tuple_would_be() {
        fn same<A: Serialize>(arg: A) {
            let mut ours = vec![0xee];
            crate::values::encode_arg_into(&mut ours, &arg).expect("encode");
            let mut tuple = vec![0xee];
            crate::values::encode_args_into(&mut tuple, &(arg,)).expect("encode");
            assert_eq!(ours, tuple);
        }
        same(42u64);
        same(-5i32);
        same("word");
        same(Some(1.5f64));
        same(vec![1u8, 2, 3]);
        same(());
    }
}
