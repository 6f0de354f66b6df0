//! A batch's items and results as packed native arrays (the WIT world's `batch-packed`
//! export): a batch whose every item is one number goes to the guest as one array of them,
//! and results the guest packed as one array are written out as each item's MessagePack.
//!
//! The results are written by `rmp`'s own functions, as `rmp_serde` (and so the Rust guest
//! SDK, and the Python item codec, which is tested against it) writes the same value: an
//! integer in its most compact form (positive or negative fixint, then the smallest of
//! uint8..64 or int8..64 by value), a float as float64 with its bits as they are (NaN
//! payloads, -0.0), booleans and nil in their one byte. An item is packed only when the
//! array holds exactly the value the guest would decode from it.

use crate::protocol::packed::Packed;

/// Batches of fewer items cross encoded (as the Python SDK's `_MIN_RUN`: below it a batch
/// runs item by item anyway).
const MIN_PACKED_ITEMS: usize = 16;

/// A batch's items as one array: each item's one argument, little-endian.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Items {
    /// An s64 an item.
    Ints(Vec<u8>),
    /// An f64 an item.
    Floats(Vec<u8>),
}

/// `items` as one array when each is `[x]` with `x` an integer that fits an s64 (in any of
/// MessagePack's integer forms) or each a float64, and there are enough of them; else `None`
/// (they cross encoded).
pub(crate) fn pack_items(items: &Packed) -> Option<Items> {
    if items.len() < MIN_PACKED_ITEMS {
        return None;
    }
    let mut out = Vec::with_capacity(items.len() * 8);
    let floats = matches!(single(items.get(0)?)?, Single::Float(_));
    for item in items.iter() {
        match single(item)? {
            Single::Int(v) if !floats => out.extend_from_slice(&v.to_le_bytes()),
            Single::Float(v) if floats => out.extend_from_slice(&v.to_le_bytes()),
            _ => return None,
        }
    }
    Some(if floats {
        Items::Floats(out)
    } else {
        Items::Ints(out)
    })
}

/// The one argument of an item.
enum Single {
    Int(i64),
    Float(f64),
}

/// The argument of `item` if it is exactly `[x]`, `x` an s64 or a float64.
fn single(item: &[u8]) -> Option<Single> {
    let (&0x91, rest) = item.split_first()? else {
        return None;
    };
    let (&marker, p) = rest.split_first()?;
    // `p` must be exactly the marker's payload: `try_into` refuses another length.
    let int = match marker {
        0x00..=0x7f if p.is_empty() => i64::from(marker),
        0xe0..=0xff if p.is_empty() => i64::from(marker as i8),
        0xcc => i64::from(u8::from_be_bytes(p.try_into().ok()?)),
        0xcd => i64::from(u16::from_be_bytes(p.try_into().ok()?)),
        0xce => i64::from(u32::from_be_bytes(p.try_into().ok()?)),
        0xcf => i64::try_from(u64::from_be_bytes(p.try_into().ok()?)).ok()?,
        0xd0 => i64::from(i8::from_be_bytes(p.try_into().ok()?)),
        0xd1 => i64::from(i16::from_be_bytes(p.try_into().ok()?)),
        0xd2 => i64::from(i32::from_be_bytes(p.try_into().ok()?)),
        0xd3 => i64::from_be_bytes(p.try_into().ok()?),
        0xcb => return Some(Single::Float(f64::from_be_bytes(p.try_into().ok()?))),
        _ => return None,
    };
    Some(Single::Int(int))
}

/// The kind of every result in a packed array, and how many bytes one takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An s64 an item, little-endian.
    Ints,
    /// A u64 an item, little-endian.
    Uints,
    /// An f64 an item, little-endian.
    Floats,
    /// A byte an item: 0 is false, anything else true.
    Bools,
}

impl Kind {
    fn width(self) -> usize {
        match self {
            Kind::Ints | Kind::Uints | Kind::Floats => 8,
            Kind::Bools => 1,
        }
    }
}

/// Each item of `payload` (of `kind`) as its own MessagePack value, at most `limit` of
/// them (what the batch asked for: more are not answers, and a truncated last item is not
/// one either; the caller reports the items left unanswered). The items at `failed`
/// (indices, in any order) are left empty, as the `batch-outcome` of a failed item is.
pub(crate) fn encode(kind: Kind, payload: &[u8], failed: &[u32], limit: usize) -> Packed {
    let items = payload.chunks_exact(kind.width()).take(limit);
    // The widest form of each kind: a marker and the item's bytes.
    let mut out = Packed::with_capacity(items.len(), items.len() * (kind.width() + 1));
    let mut failed = Failed::new(failed);
    for (i, item) in items.enumerate() {
        if !failed.is(i) {
            write(kind, item, &mut out.data);
        }
        out.close_item();
    }
    out
}

/// Nil `count` times (at most `limit`), with the items at `failed` empty.
pub(crate) fn nils(count: u32, failed: &[u32], limit: usize) -> Packed {
    let count = usize::try_from(count).unwrap_or(usize::MAX).min(limit);
    let mut out = Packed::with_capacity(count, count);
    let mut failed = Failed::new(failed);
    for i in 0..count {
        if !failed.is(i) {
            out.data.push(NIL);
        }
        out.close_item();
    }
    out
}

/// The MessagePack nil.
const NIL: u8 = 0xc0;

/// The failed items' indices, asked about in increasing order.
struct Failed(std::iter::Peekable<std::vec::IntoIter<u32>>);

impl Failed {
    fn new(failed: &[u32]) -> Failed {
        let mut sorted = failed.to_vec();
        sorted.sort_unstable();
        Failed(sorted.into_iter().peekable())
    }

    /// Whether item `i` failed; each `i` is asked about once, after every smaller one.
    fn is(&mut self, i: usize) -> bool {
        let mut found = false;
        while self.0.next_if(|&f| f as usize == i).is_some() {
            found = true;
        }
        found
    }
}

/// Appends one item (`kind.width()` bytes) as `rmp` writes it.
fn write(kind: Kind, item: &[u8], out: &mut Vec<u8>) {
    let eight = || {
        let mut b = [0u8; 8];
        b.copy_from_slice(item);
        b
    };
    match kind {
        Kind::Ints => write_sint(i64::from_le_bytes(eight()), out),
        Kind::Uints => write_uint(u64::from_le_bytes(eight()), out),
        Kind::Floats => {
            out.push(0xcb);
            out.extend_from_slice(&f64::from_le_bytes(eight()).to_bits().to_be_bytes());
        }
        Kind::Bools => out.push(if item[0] != 0 { 0xc3 } else { 0xc2 }),
    }
}

/// An integer in the form `rmp::encode::write_sint` picks (the most compact: a negative
/// fixint, then int8..64 by value; a non-negative one as [`write_uint`]), written here
/// rather than by `rmp`, whose writer checks and grows the buffer once for the marker and
/// once for the payload: a `map`'s worker writes one an item.
fn write_sint(v: i64, out: &mut Vec<u8>) {
    if v >= 0 {
        write_uint(v as u64, out);
    } else if v >= -32 {
        out.push(v as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend_from_slice(&[0xd0, v as u8]);
    } else if v >= i64::from(i16::MIN) {
        let [a, b] = (v as i16).to_be_bytes();
        out.extend_from_slice(&[0xd1, a, b]);
    } else if v >= i64::from(i32::MIN) {
        let [a, b, c, d] = (v as i32).to_be_bytes();
        out.extend_from_slice(&[0xd2, a, b, c, d]);
    } else {
        out.push(0xd3);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

/// A non-negative integer in the form `rmp::encode::write_uint` picks: a positive fixint,
/// then the smallest of uint8..64.
fn write_uint(v: u64, out: &mut Vec<u8>) {
    if v < 0x80 {
        out.push(v as u8);
    } else if v <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= u64::from(u16::MAX) {
        let [a, b] = (v as u16).to_be_bytes();
        out.extend_from_slice(&[0xcd, a, b]);
    } else if v <= u64::from(u32::MAX) {
        let [a, b, c, d] = (v as u32).to_be_bytes();
        out.extend_from_slice(&[0xce, a, b, c, d]);
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value as `rmp_serde` encodes it: what a Rust guest answers.
    fn serde_items<T: serde::Serialize>(values: &[T]) -> Packed {
        let mut p = Packed::default();
        for v in values {
            p.push(&rmp_serde::to_vec(v).expect("encode"));
        }
        p
    }

    fn le<T: Copy, const N: usize>(values: &[T], bytes: fn(T) -> [u8; N]) -> Vec<u8> {
        values.iter().flat_map(|&v| bytes(v)).collect()
    }

    const INTS: &[i64] = &[
        0,
        1,
        127,
        128,
        255,
        256,
        65535,
        65536,
        (1 << 32) - 1,
        1 << 32,
        i64::MAX,
        -1,
        -31,
        -32,
        -33,
        -127,
        -128,
        -129,
        -32767,
        -32768,
        -32769,
        -(1 << 31) + 1,
        -(1 << 31),
        -(1 << 31) - 1,
        i64::MIN + 1,
        i64::MIN,
    ];

    #[test]
    fn integers_are_written_byte_for_byte_as_rmp_serde_writes_them() {
        let got = encode(Kind::Ints, &le(INTS, i64::to_le_bytes), &[], usize::MAX);
        assert_eq!(got, serde_items(INTS));
        let uints: &[u64] = &[
            0,
            127,
            128,
            255,
            256,
            65535,
            65536,
            (1 << 32) - 1,
            1 << 32,
            i64::MAX as u64,
            1 << 63,
            u64::MAX,
        ];
        let got = encode(Kind::Uints, &le(uints, u64::to_le_bytes), &[], usize::MAX);
        assert_eq!(got, serde_items(uints));
        // Every boundary and its neighbours, in the Rust SDK's types as well: a non-negative
        // i64 and the same u64 are one encoding.
        for &v in INTS {
            for d in [-1i64, 0, 1] {
                let v = v.saturating_add(d);
                let got = encode(Kind::Ints, &v.to_le_bytes(), &[], 1);
                assert_eq!(got.data, rmp_serde::to_vec(&v).expect("encode"), "{v}");
                if let Ok(u) = u64::try_from(v) {
                    assert_eq!(got.data, rmp_serde::to_vec(&u).expect("encode"), "{v}");
                }
            }
        }
    }

    #[test]
    fn floats_keep_their_bits_and_booleans_and_nil_their_byte() {
        let floats = [
            0.0,
            -0.0,
            1.5,
            -2.25,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
            f64::from_bits(0x7ff0_0000_0000_0001), // a signalling NaN, its payload kept
            f64::from_bits(1),                     // the smallest subnormal
        ];
        let got = encode(
            Kind::Floats,
            &le(&floats, f64::to_le_bytes),
            &[],
            usize::MAX,
        );
        assert_eq!(got, serde_items(&floats));
        assert_eq!(got.get(1), Some(&[0xcb, 0x80, 0, 0, 0, 0, 0, 0, 0][..]));
        let bools = [true, false, true];
        assert_eq!(
            encode(Kind::Bools, &[1, 0, 1], &[], usize::MAX),
            serde_items(&bools)
        );
        assert_eq!(nils(3, &[], usize::MAX), serde_items(&[(), (), ()]));
    }

    #[test]
    fn failed_items_are_empty_and_the_rest_keep_their_place() {
        let values: Vec<i64> = (0..10).map(|i| i * 1000).collect();
        let got = encode(Kind::Ints, &le(&values, i64::to_le_bytes), &[7, 2, 2], 100);
        assert_eq!(got.len(), 10);
        for (i, &v) in values.iter().enumerate() {
            let want = match i {
                2 | 7 => vec![],
                _ => rmp_serde::to_vec(&v).expect("encode"),
            };
            assert_eq!(got.get(i), Some(&want[..]), "item {i}");
        }
        let got = nils(4, &[0, 3], 100);
        assert_eq!(
            got.iter().collect::<Vec<_>>(),
            [&[][..], &[NIL], &[NIL], &[]]
        );
    }

    fn items_of<T: serde::Serialize>(values: &[T]) -> Packed {
        let mut p = Packed::default();
        for v in values {
            p.push(&rmp_serde::to_vec(&(v,)).expect("encode"));
        }
        p
    }

    #[test]
    fn items_of_one_number_pack_to_the_values_they_decode_to() {
        let ints: Vec<i64> = INTS.iter().cycle().take(40).copied().collect();
        assert_eq!(
            pack_items(&items_of(&ints)),
            Some(Items::Ints(le(&ints, i64::to_le_bytes)))
        );
        // u64s up to i64::MAX, in their own forms (uint8..64), read as the same integers.
        let uints: Vec<u64> = [
            0,
            127,
            128,
            255,
            256,
            65535,
            65536,
            1 << 32,
            i64::MAX as u64,
        ]
        .into_iter()
        .cycle()
        .take(20)
        .collect();
        let want: Vec<i64> = uints.iter().map(|&u| u as i64).collect();
        assert_eq!(
            pack_items(&items_of(&uints)),
            Some(Items::Ints(le(&want, i64::to_le_bytes)))
        );
        // Every width of each sign, also where the Rust SDK would not choose it.
        let mut wide = Packed::default();
        for item in [
            &[0x91, 0xcc, 5][..],
            &[0x91, 0xcd, 0, 5],
            &[0x91, 0xce, 0, 0, 0, 5],
            &[0x91, 0xcf, 0, 0, 0, 0, 0, 0, 0, 5],
            &[0x91, 0xd0, 0xfb],
            &[0x91, 0xd1, 0xff, 0xfb],
            &[0x91, 0xd2, 0xff, 0xff, 0xff, 0xfb],
            &[0x91, 0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb],
        ]
        .iter()
        .cycle()
        .take(16)
        {
            wide.push(item);
        }
        let want: Vec<i64> = [5, 5, 5, 5, -5, -5, -5, -5].repeat(2);
        assert_eq!(
            pack_items(&wide),
            Some(Items::Ints(le(&want, i64::to_le_bytes)))
        );
        let floats: Vec<f64> = [0.0, -0.0, 1.5, f64::NAN, f64::INFINITY, f64::MIN]
            .into_iter()
            .cycle()
            .take(18)
            .collect();
        assert_eq!(
            pack_items(&items_of(&floats)),
            Some(Items::Floats(le(&floats, f64::to_le_bytes)))
        );
    }

    #[test]
    fn other_items_cross_encoded() {
        let n = MIN_PACKED_ITEMS;
        assert_eq!(pack_items(&items_of(&vec![1i64; n - 1])), None, "too few");
        assert_eq!(
            pack_items(&items_of(&vec![1u64 << 63; n])),
            None,
            "past s64"
        );
        assert_eq!(pack_items(&items_of(&vec![1.5f32; n])), None, "float32");
        assert_eq!(pack_items(&items_of(&vec![true; n])), None);
        assert_eq!(pack_items(&items_of(&vec!["a"; n])), None);
        assert_eq!(pack_items(&items_of(&vec![(); n])), None);
        // A mix of ints and floats, two arguments, trailing bytes, a short item.
        let mut mixed = items_of(&vec![1i64; n]);
        mixed.push(&rmp_serde::to_vec(&(1.5f64,)).expect("encode"));
        assert_eq!(pack_items(&mixed), None);
        for odd in [
            &[0x92, 1, 2][..],
            &[0x91, 1, 2],
            &[0x91, 0xcd, 1],
            &[0x91],
            &[],
        ] {
            let mut items = items_of(&vec![1i64; n]);
            items.push(odd);
            assert_eq!(pack_items(&items), None, "{odd:?}");
        }
    }

    #[test]
    fn no_more_than_the_batchs_items_and_no_partial_item() {
        let payload = le(&[1i64, 2, 3], i64::to_le_bytes);
        assert_eq!(encode(Kind::Ints, &payload, &[], 2).len(), 2);
        assert_eq!(encode(Kind::Ints, &payload[..20], &[], 9).len(), 2);
        assert_eq!(encode(Kind::Floats, &[], &[], 9).len(), 0);
        // A guest's count is no allocation of its choosing.
        assert_eq!(nils(u32::MAX, &[], 5).len(), 5);
    }
}
