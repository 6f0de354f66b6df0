//! Prints a shared dict as Python prints a dict (shared by the Manager seed examples).

use serde::{Deserialize, Serialize};

/// A key as the seeds use them: `"count"` or an integer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Key {
    /// An integer key.
    Num(u64),
    /// A string key.
    Name(String),
}

/// `{'count': 2000, 100: 1000000}`
pub fn python(items: &[(Key, u64)]) -> String {
    let body: Vec<String> = items
        .iter()
        .map(|(k, v)| match k {
            Key::Num(n) => format!("{n}: {v}"),
            Key::Name(s) => format!("'{s}': {v}"),
        })
        .collect();
    format!("{{{}}}", body.join(", "))
}
