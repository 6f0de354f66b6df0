//! Rules about the values that travel in requests, which the broker and shared memory
//! (`crate::shm`) both apply: the layer under both, so neither imports the other for them.
//! (The message size limit's refusal, `too_large`, is `wasmpool_objects::wire`'s.)

use wasmpool_objects::wire::{Handle, Kind, ObjectError, Request};

/// Adds `delta` to a MessagePack integer; `None` if `bytes` is not one or it overflows.
pub(crate) fn add_to_int(bytes: Option<&[u8]>, delta: i64) -> Result<(i64, Vec<u8>), ObjectError> {
    let current = match bytes {
        None => 0,
        Some(b) => rmp_serde::from_slice::<i64>(b).map_err(|_| {
            ObjectError::Invalid("increment: the value is not an integer".to_string())
        })?,
    };
    let new = current
        .checked_add(delta)
        .ok_or_else(|| ObjectError::Invalid("increment: integer overflow".to_string()))?;
    let encoded = rmp_serde::to_vec(&new).map_err(|e| ObjectError::Encode(e.to_string()))?;
    Ok((new, encoded))
}

/// The object kinds, by the tag their handles travel with.
fn kind_of_tag(tag: &[u8]) -> Option<Kind> {
    const KINDS: [Kind; 10] = [
        Kind::Queue,
        Kind::Connection,
        Kind::Lock,
        Kind::RLock,
        Kind::Semaphore,
        Kind::Event,
        Kind::Barrier,
        Kind::Condition,
        Kind::Dict,
        Kind::List,
    ];
    KINDS.into_iter().find(|k| k.tag().as_bytes() == tag)
}

/// Reads a MessagePack unsigned integer at `at`; answers it and the bytes after it.
fn uint_at(v: &[u8], at: usize) -> Option<(u64, usize)> {
    let b = *v.get(at)?;
    let n = match b {
        0x00..=0x7f => return Some((u64::from(b), at + 1)),
        0xcc => 1,
        0xcd => 2,
        0xce => 4,
        0xcf => 8,
        _ => return None,
    };
    let bytes = v.get(at + 1..at + 1 + n)?;
    Some((
        bytes.iter().fold(0u64, |x, &b| x << 8 | u64::from(b)),
        at + 1 + n,
    ))
}

/// Reads a MessagePack string at `at`; answers its bytes and the offset after it.
fn str_at(v: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let b = *v.get(at)?;
    let (len, start) = match b {
        0xa0..=0xbf => (usize::from(b & 0x1f), at + 1),
        0xd9 => (usize::from(*v.get(at + 1)?), at + 2),
        _ => return None,
    };
    Some((v.get(start..start + len)?, start + len))
}

/// The handles a MessagePack value holds, wherever they are in it: every array of three
/// whose first item is a kind's tag and whose others are unsigned integers. Linear in the
/// value's items; the bytes of strings and binaries are skipped, not read. A value that is
/// not well-formed MessagePack answers the handles found before the fault.
pub(crate) fn handles_in(v: &[u8]) -> Vec<Handle> {
    let mut found = Vec::new();
    let mut at = 0usize;
    // Items still to read: each container adds its items.
    let mut left: u64 = 1;
    while left > 0 {
        left -= 1;
        let Some(&b) = v.get(at) else { break };
        // [tag, id, token]
        if b == 0x93
            && let Some((tag, next)) = str_at(v, at + 1)
            && kind_of_tag(tag).is_some()
            && let Some((id, next)) = uint_at(v, next)
            && let Some((token, next)) = uint_at(v, next)
        {
            found.push(Handle { id, token });
            at = next;
            continue;
        }
        let be = |from: usize, n: usize| -> Option<u64> {
            let bytes = v.get(from..from + n)?;
            Some(bytes.iter().fold(0u64, |x, &b| x << 8 | u64::from(b)))
        };
        // (header bytes, items it adds, payload bytes after the header)
        let step: Option<(usize, u64, u64)> = match b {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => Some((1, 0, 0)),
            0x80..=0x8f => Some((1, 2 * u64::from(b & 0x0f), 0)),
            0x90..=0x9f => Some((1, u64::from(b & 0x0f), 0)),
            0xa0..=0xbf => Some((1, 0, u64::from(b & 0x1f))),
            0xc4 | 0xd9 => be(at + 1, 1).map(|n| (2, 0, n)),
            0xc5 | 0xda => be(at + 1, 2).map(|n| (3, 0, n)),
            0xc6 | 0xdb => be(at + 1, 4).map(|n| (5, 0, n)),
            0xc7 => be(at + 1, 1).map(|n| (3, 0, n)),
            0xc8 => be(at + 1, 2).map(|n| (4, 0, n)),
            0xc9 => be(at + 1, 4).map(|n| (6, 0, n)),
            0xca => Some((1, 0, 4)),
            0xcb => Some((1, 0, 8)),
            0xcc | 0xd0 => Some((1, 0, 1)),
            0xcd | 0xd1 => Some((1, 0, 2)),
            0xce | 0xd2 => Some((1, 0, 4)),
            0xcf | 0xd3 => Some((1, 0, 8)),
            0xd4 => Some((2, 0, 1)),
            0xd5 => Some((2, 0, 2)),
            0xd6 => Some((2, 0, 4)),
            0xd7 => Some((2, 0, 8)),
            0xd8 => Some((2, 0, 16)),
            0xdc => be(at + 1, 2).map(|n| (3, n, 0)),
            0xdd => be(at + 1, 4).map(|n| (5, n, 0)),
            0xde => be(at + 1, 2).map(|n| (3, 2 * n, 0)),
            0xdf => be(at + 1, 4).map(|n| (5, 2 * n, 0)),
            // 0xc1 is never used.
            _ => None,
        };
        let Some((header, items, payload)) = step else {
            break;
        };
        let Some(next) = usize::try_from(payload)
            .ok()
            .and_then(|p| at.checked_add(header)?.checked_add(p))
        else {
            break;
        };
        at = next;
        left = left.saturating_add(items);
    }
    found
}

/// Whether a request stores a value that holds a handle: such a request goes to the
/// broker, which counts the references, even on a dict used in place.
pub(crate) fn stores_handles(req: &Request) -> bool {
    use wasmpool_objects::wire::Request::*;
    let has = |v: &[u8]| !handles_in(v).is_empty();
    match req {
        DictSet((k, v)) | DictSetdefault((k, v)) => has(k) || has(v),
        DictUpdate(entries) => entries.iter().any(|(k, v)| has(k) || has(v)),
        DictCompareAndSwap { key, new, .. } => has(key) || has(new),
        DictIncrement(k, _) => has(k),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(v).unwrap()
    }

    #[test]
    fn handles_are_found_anywhere_in_a_value_and_nowhere_else() {
        let h = ("wasmpool:queue", 42u64, u64::MAX);
        let p = ("wasmpool:connection", 7u64, 300u64);
        assert_eq!(
            handles_in(&encode(&h)),
            [Handle {
                id: 42,
                token: u64::MAX
            }]
        );
        let nested = encode(&(
            "x",
            vec![Some(h), None],
            std::collections::BTreeMap::from([("k", p)]),
            serde_bytes_like(),
        ));
        assert_eq!(handles_in(&nested).len(), 2);
        // Not a handle: a wrong tag, a signed id, four items.
        assert!(handles_in(&encode(&("wasmpool:nope", 1u64, 2u64))).is_empty());
        assert!(handles_in(&encode(&("wasmpool:queue", -1i64, 2u64))).is_empty());
        assert!(handles_in(&encode(&("wasmpool:queue", 1u64, 2u64, 3u64))).is_empty());
        // Truncated or malformed input answers what it found before, and never panics.
        let whole = encode(&vec![h, h]);
        for cut in 0..whole.len() {
            assert!(handles_in(&whole[..cut]).len() <= 1);
        }
        assert!(handles_in(&[0xdd, 0xff, 0xff, 0xff, 0xff]).is_empty());
        assert!(handles_in(&[0xc1, 0x93]).is_empty());
    }

    /// A string whose bytes look like a handle: skipped, not read.
    fn serde_bytes_like() -> String {
        String::from_utf8_lossy(&encode(&("wasmpool:queue", 1u64, 2u64))).into_owned()
    }
}
