//! Manager `dict` and `list`, with atomic `increment` and `compare_and_swap` beyond Python.

use std::marker::PhantomData;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::handle::{decode, encode, handle_type, unexpected};
use crate::queue::{count, flag, unit};
use crate::wire::{Kind, ObjectError, Request, Response};

handle_type!(
    /// A dict owned by the host. Keys compare by their MessagePack encoding, so use one key
    /// type per dict. Every operation is atomic; `increment` and `compare_and_swap` make a
    /// shared counter without a lock.
    Dict<K, V>,
    Kind::Dict
);

fn values<T: DeserializeOwned>(r: Response) -> Result<Vec<T>, ObjectError> {
    match r {
        Response::Values(vs) => vs.iter().map(|v| decode(v)).collect(),
        r => Err(unexpected(r)),
    }
}

fn maybe<T: DeserializeOwned>(r: Response) -> Result<Option<T>, ObjectError> {
    match r {
        Response::Maybe(Some(v)) | Response::Value(v) => decode(&v).map(Some),
        Response::Maybe(None) => Ok(None),
        r => Err(unexpected(r)),
    }
}

impl<K: Serialize + DeserializeOwned, V: Serialize + DeserializeOwned> Dict<K, V> {
    /// The value for `key`, if any.
    pub fn get(&self, key: &K) -> Result<Option<V>, ObjectError> {
        maybe(self.raw.call(Request::DictGet(encode(key)?), None)?)
    }

    /// Sets `key` to `value` (Python's `d[key] = value`).
    pub fn set(&self, key: &K, value: &V) -> Result<(), ObjectError> {
        unit(
            self.raw
                .call(Request::DictSet((encode(key)?, encode(value)?)), None)?,
        )
    }

    /// Deletes `key`; `Missing` if it is absent (Python's `del d[key]`).
    pub fn delete(&self, key: &K) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::DictDelete(encode(key)?), None)?)
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &K) -> Result<bool, ObjectError> {
        flag(self.raw.call(Request::DictContains(encode(key)?), None)?)
    }

    /// The keys, in insertion order.
    pub fn keys(&self) -> Result<Vec<K>, ObjectError> {
        values(self.raw.call(Request::DictKeys, None)?)
    }

    /// The values, in insertion order.
    pub fn values(&self) -> Result<Vec<V>, ObjectError> {
        values(self.raw.call(Request::DictValues, None)?)
    }

    /// The entries, in insertion order.
    pub fn items(&self) -> Result<Vec<(K, V)>, ObjectError> {
        match self.raw.call(Request::DictItems, None)? {
            Response::Entries(es) => es
                .iter()
                .map(|(k, v)| Ok((decode(k)?, decode(v)?)))
                .collect(),
            r => Err(unexpected(r)),
        }
    }

    /// Sets every entry, atomically.
    pub fn update<'a, I>(&self, entries: I) -> Result<(), ObjectError>
    where
        I: IntoIterator<Item = (&'a K, &'a V)>,
        K: 'a,
        V: 'a,
    {
        let entries = entries
            .into_iter()
            .map(|(k, v)| Ok((encode(k)?, encode(v)?)))
            .collect::<Result<Vec<_>, ObjectError>>()?;
        unit(self.raw.call(Request::DictUpdate(entries), None)?)
    }

    /// The value for `key`, inserting `default` first if it is absent.
    pub fn setdefault(&self, key: &K, default: &V) -> Result<V, ObjectError> {
        let req = Request::DictSetdefault((encode(key)?, encode(default)?));
        match maybe(self.raw.call(req, None)?)? {
            Some(v) => Ok(v),
            None => Err(ObjectError::Invalid("setdefault answered nothing".into())),
        }
    }

    /// Removes `key` and answers its value, if it was present.
    pub fn pop(&self, key: &K) -> Result<Option<V>, ObjectError> {
        maybe(self.raw.call(Request::DictPop(encode(key)?), None)?)
    }

    /// Removes and answers the entry inserted last (Python's `dict.popitem()`, LIFO);
    /// `Missing` if the dict is empty.
    pub fn popitem(&self) -> Result<(K, V), ObjectError> {
        match self.raw.call(Request::DictPopitem, None)? {
            Response::Entries(es) => match es.as_slice() {
                [(k, v)] => Ok((decode(k)?, decode(v)?)),
                _ => Err(ObjectError::Invalid(format!(
                    "popitem answered {} entries",
                    es.len()
                ))),
            },
            r => Err(unexpected(r)),
        }
    }

    /// Replaces the value of `key` with `new` if it currently is `expected` (`None`: if the
    /// key is absent), atomically; answers whether it did.
    pub fn compare_and_swap(
        &self,
        key: &K,
        expected: Option<&V>,
        new: &V,
    ) -> Result<bool, ObjectError> {
        let req = Request::DictCompareAndSwap {
            key: encode(key)?,
            expected: expected.map(encode).transpose()?,
            new: encode(new)?,
        };
        flag(self.raw.call(req, None)?)
    }
}

impl<K: Serialize, V> Dict<K, V> {
    /// Adds `delta` to the integer at `key` (a missing key counts as 0) atomically, and
    /// answers the new value: a shared counter without a lock.
    pub fn increment(&self, key: &K, delta: i64) -> Result<i64, ObjectError> {
        match self
            .raw
            .call(Request::DictIncrement(encode(key)?, delta), None)?
        {
            Response::Int(n) => Ok(n),
            r => Err(unexpected(r)),
        }
    }
}

impl<K, V> Dict<K, V> {
    /// The number of entries.
    pub fn len(&self) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::DictLen, None)?)
    }

    /// Whether the dict is empty.
    pub fn is_empty(&self) -> Result<bool, ObjectError> {
        Ok(self.len()? == 0)
    }

    /// Removes every entry (Python's `dict.clear()`).
    pub fn clear(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::DictClear, None)?)
    }
}

handle_type!(
    /// A list owned by the host. Indexes may be negative, counting from the end, as in Python.
    List<T>,
    Kind::List
);

impl<T: Serialize + DeserializeOwned> List<T> {
    /// Appends `value`.
    pub fn append(&self, value: &T) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ListAppend(encode(value)?), None)?)
    }

    /// Appends every value, atomically.
    pub fn extend<'a, I: IntoIterator<Item = &'a T>>(&self, values: I) -> Result<(), ObjectError>
    where
        T: 'a,
    {
        let values = values
            .into_iter()
            .map(encode)
            .collect::<Result<Vec<_>, ObjectError>>()?;
        unit(self.raw.call(Request::ListExtend(values), None)?)
    }

    /// The value at `index`; `Missing` if out of range.
    pub fn get(&self, index: i64) -> Result<T, ObjectError> {
        match self.raw.call(Request::ListGet(index), None)? {
            Response::Value(v) => decode(&v),
            r => Err(unexpected(r)),
        }
    }

    /// Replaces the value at `index`; `Missing` if out of range.
    pub fn set(&self, index: i64, value: &T) -> Result<(), ObjectError> {
        unit(
            self.raw
                .call(Request::ListSet(index, encode(value)?), None)?,
        )
    }

    /// Removes and answers the value at `index` (`None`: the last); `Missing` if empty or
    /// out of range.
    pub fn pop(&self, index: Option<i64>) -> Result<T, ObjectError> {
        match self.raw.call(Request::ListPop(index), None)? {
            Response::Value(v) => decode(&v),
            r => Err(unexpected(r)),
        }
    }

    /// The index of the first item equal to `value`; `Missing` if there is none.
    pub fn index(&self, value: &T) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::ListIndex(encode(value)?), None)?)
    }

    /// Every value, in order.
    pub fn items(&self) -> Result<Vec<T>, ObjectError> {
        values(self.raw.call(Request::ListItems, None)?)
    }

    /// Inserts `value` before `index` (Python's `list.insert`): a negative index counts
    /// from the end, and one out of range inserts at the start or the end.
    pub fn insert(&self, index: i64, value: &T) -> Result<(), ObjectError> {
        unit(
            self.raw
                .call(Request::ListInsert(index, encode(value)?), None)?,
        )
    }

    /// Removes the first item equal to `value` (Python's `list.remove`); `Missing` if
    /// there is none.
    pub fn remove(&self, value: &T) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ListRemove(encode(value)?), None)?)
    }

    /// The values from `start` up to `stop`, as Python's `l[start:stop]`: `None` is the
    /// list's start or end, a negative index counts from the end, and indexes out of range
    /// are clamped (an empty range answers nothing, never an error).
    pub fn slice(&self, start: Option<i64>, stop: Option<i64>) -> Result<Vec<T>, ObjectError> {
        values(self.raw.call(Request::ListSlice(start, stop), None)?)
    }
}

impl<T> List<T> {
    /// The number of values.
    pub fn len(&self) -> Result<usize, ObjectError> {
        count(self.raw.call(Request::ListLen, None)?)
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> Result<bool, ObjectError> {
        Ok(self.len()? == 0)
    }

    /// Removes every value (Python's `list.clear()`).
    pub fn clear(&self) -> Result<(), ObjectError> {
        unit(self.raw.call(Request::ListClear, None)?)
    }
}

#[allow(dead_code)]
struct AssertSendSync(PhantomData<(Dict<String, String>, List<String>)>);
