//! Serde helpers for byte buffers in frames. Serde's default for `Vec<u8>` is a sequence,
//! which postcard writes and reads one element at a time; as bytes, a buffer is copied in
//! one go. Use with `#[serde(with = "crate::wire_bytes::bytes")]`.

/// A `Vec<u8>` as bytes.
pub(crate) mod bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Vec<u8>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
            // Bounded by what the peer actually sent, not by a size it claims.
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element()? {
                out.push(b);
            }
            Ok(out)
        }
    }
}

/// A `Vec<u32>` as little-endian bytes.
pub(crate) mod u32s {
    use serde::de::Error;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = v.iter().flat_map(|n| n.to_le_bytes()).collect();
        s.serialize_bytes(&bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
        let bytes = super::bytes::deserialize(d)?;
        if bytes.len() % 4 != 0 {
            return Err(D::Error::custom(
                "a list of u32 whose length is not a multiple of 4",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Both {
        #[serde(with = "super::bytes")]
        data: Vec<u8>,
        #[serde(with = "super::u32s")]
        ends: Vec<u32>,
    }

    #[test]
    fn buffers_round_trip_through_postcard() {
        let v = Both {
            data: (0..=255).collect(),
            ends: vec![0, 1, 70_000, u32::MAX],
        };
        let wire = postcard::to_allocvec(&v).unwrap();
        assert_eq!(postcard::from_bytes::<Both>(&wire).unwrap(), v);
        // A truncated buffer is an error, not a panic.
        assert!(postcard::from_bytes::<Both>(&wire[..wire.len() - 1]).is_err());
    }
}
