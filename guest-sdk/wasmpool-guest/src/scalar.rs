//! MessagePack fast paths for scalar arguments and results (integers, floats, booleans).
//!
//! A batch of tiny tasks spends most of its time in serde's generic machinery for values that
//! are one marker byte and a few bytes of payload. For the scalar types these functions read
//! and write the bytes directly; the choice is made per type at compile time (`TypeId` of a
//! monomorphised type is a constant), so other types pay nothing. They write exactly what
//! `rmp_serde` writes (the most compact integer form), and a value they cannot read (a
//! marker of another kind, or an integer out of the type's range) is left to serde, which
//! reads it or reports the error.

use std::any::{Any, TypeId};

/// `value` as a `T`, when `A` and `T` are the same type.
fn cast<A: 'static, T: 'static>(value: A) -> Option<T> {
    let mut slot = Some(value);
    (&mut slot as &mut dyn Any)
        .downcast_mut::<Option<T>>()
        .and_then(Option::take)
}

/// A MessagePack integer at the start of `bytes`, and its encoded length.
#[inline]
fn read_int(bytes: &[u8]) -> Option<(i128, usize)> {
    let (&marker, rest) = bytes.split_first()?;
    fn be<const N: usize>(rest: &[u8]) -> Option<[u8; N]> {
        rest.get(..N)?.try_into().ok()
    }
    Some(match marker {
        0x00..=0x7f => (i128::from(marker), 1),
        0xe0..=0xff => (i128::from(marker as i8), 1),
        0xcc => (i128::from(u8::from_be_bytes(be(rest)?)), 2),
        0xcd => (i128::from(u16::from_be_bytes(be(rest)?)), 3),
        0xce => (i128::from(u32::from_be_bytes(be(rest)?)), 5),
        0xcf => (i128::from(u64::from_be_bytes(be(rest)?)), 9),
        0xd0 => (i128::from(i8::from_be_bytes(be(rest)?)), 2),
        0xd1 => (i128::from(i16::from_be_bytes(be(rest)?)), 3),
        0xd2 => (i128::from(i32::from_be_bytes(be(rest)?)), 5),
        0xd3 => (i128::from(i64::from_be_bytes(be(rest)?)), 9),
        _ => return None,
    })
}

/// Reads a `T` from the front of `rest` and advances past it, if `T` is a scalar type and
/// the bytes hold a value of it; `None` (with `rest` untouched) otherwise.
#[inline]
pub(crate) fn decode<T: 'static>(rest: &mut &[u8]) -> Option<T> {
    let id = TypeId::of::<T>();
    macro_rules! ints {
        ($($t:ty),*) => {$(
            if id == TypeId::of::<$t>() {
                let (value, len) = read_int(rest)?;
                let value = <$t>::try_from(value).ok()?;
                *rest = rest.get(len..)?;
                return cast(value);
            }
        )*};
    }
    ints!(u64, u32, u16, u8, usize, i64, i32, i16, i8, isize);
    if id == TypeId::of::<bool>() {
        let value = match rest.first()? {
            0xc2 => false,
            0xc3 => true,
            _ => return None,
        };
        *rest = rest.get(1..)?;
        return cast(value);
    }
    if id == TypeId::of::<f64>() {
        let (value, len) = match rest.split_first()? {
            (0xcb, b) => (f64::from_be_bytes(b.get(..8)?.try_into().ok()?), 9),
            (0xca, b) => {
                let v = f32::from_be_bytes(b.get(..4)?.try_into().ok()?);
                // As serde widens it: a NaN keeps its sign, which wasm's promotion may not.
                let sign = if v.is_sign_positive() { 1.0 } else { -1.0 };
                (f64::from(v).copysign(sign), 5)
            }
            _ => return None,
        };
        *rest = rest.get(len..)?;
        return cast(value);
    }
    if id == TypeId::of::<f32>() {
        let value = match rest.split_first()? {
            (0xca, b) => f32::from_be_bytes(b.get(..4)?.try_into().ok()?),
            _ => return None,
        };
        *rest = rest.get(5..)?;
        return cast(value);
    }
    None
}

/// Appends `value` to `out` if `T` is a scalar type; returns whether it did. The bytes are
/// written by `rmp` itself, as `rmp_serde` writes them; only serde's dispatch is skipped.
#[inline]
pub(crate) fn encode<T: 'static>(value: &T, out: &mut Vec<u8>) -> bool {
    use rmp::encode;
    let value = value as &dyn Any;
    macro_rules! ints {
        ($write:ident as $wide:ty: $($t:ty),*) => {$(
            if let Some(&v) = value.downcast_ref::<$t>() {
                return encode::$write(out, v as $wide).is_ok();
            }
        )*};
    }
    ints!(write_uint as u64: u64, u32, u16, u8, usize);
    ints!(write_sint as i64: i64, i32, i16, i8, isize);
    if let Some(&v) = value.downcast_ref::<bool>() {
        return encode::write_bool(out, v).is_ok();
    }
    if let Some(&v) = value.downcast_ref::<f64>() {
        return encode::write_f64(out, v).is_ok();
    }
    if let Some(&v) = value.downcast_ref::<f32>() {
        return encode::write_f32(out, v).is_ok();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value round-trips and is written byte for byte as `rmp_serde` writes it.
    fn same_as_serde<T>(values: &[T])
    where
        T: 'static + Copy + PartialEq + std::fmt::Debug + serde::Serialize,
        T: serde::de::DeserializeOwned,
    {
        for &v in values {
            let mut ours = Vec::new();
            assert!(encode(&v, &mut ours), "{v:?} takes the fast path");
            let serde = rmp_serde::to_vec(&v).expect("encode");
            assert_eq!(ours, serde, "{v:?} is encoded as rmp_serde encodes it");
            let mut rest = &serde[..];
            assert_eq!(decode::<T>(&mut rest), Some(v), "{v:?} decodes");
            assert!(rest.is_empty(), "{v:?}: the whole value is read");
        }
    }

    #[test]
    fn integers_floats_and_booleans_match_rmp_serde() {
        same_as_serde(&[
            0u64,
            1,
            127,
            128,
            255,
            256,
            65535,
            65536,
            u32::MAX as u64,
            u64::MAX,
        ]);
        same_as_serde(&[0u8, 127, 128, 255]);
        same_as_serde(&[0u32, 300, u32::MAX]);
        same_as_serde(&[
            0i64,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32768,
            -32769,
            i64::MIN,
            i64::MAX,
        ]);
        same_as_serde(&[i8::MIN, -1, 0, i8::MAX]);
        same_as_serde(&[i32::MIN, -70000, 70000, i32::MAX]);
        same_as_serde(&[0usize, 1 << 20]);
        same_as_serde(&[true, false]);
        same_as_serde(&[0.0f64, -1.5, f64::MAX, f64::INFINITY]);
        same_as_serde(&[0.0f32, 2.5, f32::MIN]);
    }

    #[test]
    fn what_the_fast_path_cannot_read_is_left_untouched() {
        // Out of range for the type: serde reports it.
        let bytes = rmp_serde::to_vec(&300u64).expect("encode");
        let mut rest = &bytes[..];
        assert_eq!(decode::<u8>(&mut rest), None);
        assert_eq!(rest, &bytes[..]);
        // Negative into an unsigned type.
        let bytes = rmp_serde::to_vec(&-1i64).expect("encode");
        let mut rest = &bytes[..];
        assert_eq!(decode::<u64>(&mut rest), None);
        // Another kind of value, a truncated value, nothing at all.
        for bytes in [&b"\xa1x"[..], &b"\xcd\x01"[..], &b""[..], &b"\xcb\0\0"[..]] {
            let mut rest = bytes;
            assert_eq!(decode::<u64>(&mut rest), None, "{bytes:?}");
            assert_eq!(decode::<f64>(&mut rest), None, "{bytes:?}");
            assert_eq!(decode::<bool>(&mut rest), None, "{bytes:?}");
            assert_eq!(rest, bytes);
        }
        // Not a scalar type: no fast path either way.
        let mut rest = &b"\x01"[..];
        assert_eq!(decode::<String>(&mut rest), None);
        assert!(!encode(&"text".to_string(), &mut Vec::new()));
    }
}
