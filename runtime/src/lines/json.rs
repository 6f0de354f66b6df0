//! [`Json`], any value a task may store, as JSON; and the same conversion under a byte budget,
//! which the object report uses so that a huge value costs no more than the report shows.

use std::cell::Cell;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Any value a task may store, as JSON: MessagePack maps whose keys are not strings get
/// them as JSON text (`{1: "x"}` is `{"1":"x"}`, as Python's `json.dumps` writes it),
/// binary data is an array of its bytes, and NaN and the infinities are `null`. It
/// serializes as the JSON value it holds, so it is the value type of the objects of an
/// [`Objects`](super::Objects) table.
///
/// ```
/// use wasmpool::lines::Json;
///
/// // {1: "x", "b": b"\x01\x02"} in MessagePack.
/// let bytes = [0x82, 0x01, 0xa1, b'x', 0xa1, b'b', 0xc4, 0x02, 0x01, 0x02];
/// let Json(value) = rmp_serde::from_slice(&bytes).unwrap();
/// assert_eq!(value, serde_json::json!({"1": "x", "b": [1, 2]}));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Json(pub Value);

impl Serialize for Json {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget::new(usize::MAX);
        Seed(&budget).deserialize(d).map(Json)
    }
}

/// The most bytes of JSON a [`Bounded`] value converts to before it gives up.
pub(super) const BOUND: usize = super::REPORT_BYTES;

/// A value as [`Json`] has it, or `TooLarge` when its JSON would be longer than [`BOUND`]
/// bytes. The conversion stops building as soon as it knows, so a value of any size costs
/// at most about `BOUND` bytes of JSON's worth of memory (a constant times it), besides its
/// MessagePack.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Bounded {
    Value(Value),
    TooLarge,
}

impl Serialize for Bounded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Bounded::Value(v) => v.serialize(s),
            Bounded::TooLarge => Err(serde::ser::Error::custom(
                "a value too large to report is not sent back",
            )),
        }
    }
}

impl<'de> Deserialize<'de> for Bounded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let budget = Budget::new(BOUND);
        let value = Seed(&budget).deserialize(d)?;
        Ok(if budget.exceeded.get() {
            Bounded::TooLarge
        } else {
            Bounded::Value(value)
        })
    }
}

/// How many more bytes of JSON may be built, at least. What is charged for each value is a
/// lower bound of its compact JSON's length (1 for any scalar, a string's bytes and its
/// quotes, brackets and commas), so a value within the budget is whole, and one that is not
/// could never fit.
struct Budget {
    left: Cell<usize>,
    exceeded: Cell<bool>,
}

impl Budget {
    fn new(bytes: usize) -> Self {
        Budget {
            left: Cell::new(bytes),
            exceeded: Cell::new(false),
        }
    }

    /// Takes `n` bytes; `false` (and the budget is spent for good) if they are not there.
    fn charge(&self, n: usize) -> bool {
        if self.exceeded.get() {
            return false;
        }
        match self.left.get().checked_sub(n) {
            Some(left) => {
                self.left.set(left);
                true
            }
            None => {
                self.exceeded.set(true);
                false
            }
        }
    }

    /// Gives back `n` bytes charged for what the value no longer holds.
    fn credit(&self, n: usize) {
        self.left.set(self.left.get().saturating_add(n));
    }
}

/// What [`Budget::charge`] took for `value`, recomputed from the value built.
fn charged(value: &Value) -> usize {
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 1,
        Value::String(s) => s.len() + 2,
        Value::Array(items) => 2 + items.iter().map(charged).sum::<usize>() + commas(items.len()),
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(k, v)| k.len() + 3 + charged(v))
                .sum::<usize>()
                + commas(map.len())
        }
    }
}

fn commas(n: usize) -> usize {
    n.saturating_sub(1)
}

/// Builds a value's [`Value`], charging its [`Budget`]; once the budget is spent it reads
/// the rest without building anything (and the value built is not to be used).
#[derive(Clone, Copy)]
struct Seed<'b>(&'b Budget);

impl<'de> DeserializeSeed<'de> for Seed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl Seed<'_> {
    /// `value` if its `cost` fits the budget, else `null` (never looked at).
    fn scalar(self, cost: usize, value: impl FnOnce() -> Value) -> Value {
        if self.0.charge(cost) {
            value()
        } else {
            Value::Null
        }
    }
}

impl<'de> Visitor<'de> for Seed<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any MessagePack value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(self.scalar(1, || Value::Bool(v)))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(self.scalar(1, || Value::from(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(self.scalar(1, || Value::from(v)))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        // NaN and the infinities have no JSON form: null, as serde_json writes them.
        Ok(self.scalar(1, || {
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
        }))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(self.scalar(v.len().saturating_add(2), || Value::String(v.to_string())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(self.scalar(v.len().saturating_add(2), || Value::String(v)))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        // An array of numbers, charged before any of it is built.
        let cost = 2 + v.len().saturating_add(commas(v.len()));
        Ok(self.scalar(cost, || {
            Value::Array(v.iter().map(|&b| Value::from(b)).collect())
        }))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.scalar(1, || Value::Null))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(self.scalar(1, || Value::Null))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let budget = self.0;
        let mut items = Vec::new();
        if budget.charge(2) {
            items.reserve(seq.size_hint().unwrap_or(0).min(4096));
            while !budget.exceeded.get() {
                let Some(item) = seq.next_element_seed(self)? else {
                    break;
                };
                if !items.is_empty() && !budget.charge(1) {
                    break;
                }
                items.push(item);
            }
        }
        // Spent: the rest is read and dropped as it is read.
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let budget = self.0;
        let mut out = serde_json::Map::new();
        if budget.charge(2) {
            while !budget.exceeded.get() {
                let Some(key) = map.next_key_seed(self)? else {
                    break;
                };
                let key = match key {
                    Value::String(s) => s,
                    // The key's JSON text, quoted: charged as that string instead of the
                    // value it was.
                    other => {
                        let text = other.to_string();
                        budget.credit(charged(&other));
                        budget.charge(text.len() + 2);
                        text
                    }
                };
                // A key written twice keeps its last value (as JSON objects do): the entry
                // it replaces (its quoted key, colon, value and a comma) is given back
                // before the new value is read, so only what the map holds is charged.
                if let Some(old) = out.get_mut(&key) {
                    budget.credit(key.len() + 4 + charged(old));
                    *old = Value::Null;
                }
                // The colon, and the comma before all but the first entry.
                let separators = if out.is_empty() { 1 } else { 2 };
                let value = map.next_value_seed(self)?;
                if !budget.charge(separators) {
                    break;
                }
                out.insert(key, value);
                if budget.exceeded.get() {
                    break;
                }
            }
        }
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Object(out))
    }
}
