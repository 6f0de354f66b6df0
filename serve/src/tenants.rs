//! The tenants file: who may call the service, with what weight and under which quotas.
//!
//! ```toml
//! [[tenant]]
//! name = "alice"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! weight = 2
//! [tenant.quotas]
//! running = 4            # tasks (or map items) running at once
//! queued = 1000          # tasks and map items accepted and not yet finished
//! rate = 50.0            # submissions per second (a burst of one second's worth)
//! max_memory_mib = 256   # the most a submission may ask for, and its default
//! max_timeout_s = 60.0
//! max_output_mib = 16
//! max_fuel = 1000000000  # optional: when set, every task is metered (default: this)
//! result_ttl_s = 86400   # how long results are kept
//! max_objects = 16       # shared objects held at once (each holds at most 256 MiB)
//! object_calls = 16      # operations on them in progress at once (blocked ones count)
//! ```
//!
//! Only the SHA-256 of each token is in the file. A request's token is hashed and its digest
//! compared with every tenant's in constant time.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::ServeError;

/// The quotas of one tenant. Every field has a default, so a tenant may give none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quotas {
    /// Tasks (map items count one each) running at once.
    pub running: u32,
    /// Tasks and map items accepted and not yet finished.
    pub queued: u32,
    /// Submissions per second, with a burst of one second's worth (at least one).
    pub rate: f64,
    /// The most memory a submission may ask for, in MiB (also its default).
    pub max_memory_mib: u64,
    /// The longest time limit a submission may ask for, in seconds (also its default).
    pub max_timeout_s: f64,
    /// The most output (stdout and stderr) a task may write, in MiB (also its default).
    pub max_output_mib: u64,
    /// The most fuel a submission may ask for; when set, every task of this tenant is
    /// metered and runs with at most this much (also its default).
    pub max_fuel: Option<u64>,
    /// How long a finished task's result is kept, in seconds.
    pub result_ttl_s: u64,
    /// The most shared objects the tenant may hold at once (`/v1/objects`). The library caps
    /// what one object stores at 256 MiB, so this bounds the host memory a tenant's objects
    /// can take.
    pub max_objects: u32,
    /// The most operations on the tenant's objects in progress at once (one blocked in a
    /// `get` or an `acquire` counts until it is answered).
    pub object_calls: u32,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            running: 4,
            queued: 1000,
            rate: 100.0,
            max_memory_mib: 256,
            max_timeout_s: 60.0,
            max_output_mib: 16,
            max_fuel: None,
            result_ttl_s: 86_400,
            max_objects: 16,
            object_calls: 16,
        }
    }
}

/// One tenant, as the file names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantEntry {
    /// Its name: unique, shown in its usage, never to other tenants.
    pub name: String,
    /// The SHA-256 of its bearer token, in hex.
    pub token_sha256: String,
    /// Its share of the workers under contention (default 1).
    #[serde(default = "one")]
    pub weight: u32,
    /// Its quotas.
    #[serde(default)]
    pub quotas: Quotas,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantsToml {
    #[serde(default)]
    tenant: Vec<TenantEntry>,
}

/// A tenant the service knows, with its token's digest decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// The entry in the file.
    pub entry: TenantEntry,
    /// The token's digest.
    pub digest: [u8; 32],
    /// The tenant's id for the pool's fair queue (from its name).
    pub id: u64,
}

impl Tenant {
    /// Its name.
    pub fn name(&self) -> &str {
        &self.entry.name
    }

    /// Its quotas.
    pub fn quotas(&self) -> &Quotas {
        &self.entry.quotas
    }
}

/// Parses a tenants file's text; every tenant is checked (a unique name, a 64-digit hex
/// digest, a weight of at least 1, quotas in range).
pub fn parse(text: &str, origin: &Path) -> Result<Vec<Tenant>, ServeError> {
    let bad = |message: String| ServeError::Tenants {
        path: origin.to_path_buf(),
        message,
    };
    let file: TenantsToml = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut seen = HashMap::new();
    let mut tenants = Vec::with_capacity(file.tenant.len());
    for entry in file.tenant {
        if entry.name.is_empty() || entry.name.len() > 128 {
            return Err(bad(format!(
                "tenant name {:?}: must be 1 to 128 bytes",
                entry.name
            )));
        }
        if seen.insert(entry.name.clone(), ()).is_some() {
            return Err(bad(format!("tenant {:?} is named twice", entry.name)));
        }
        let digest = decode_digest(&entry.token_sha256).ok_or_else(|| {
            bad(format!(
                "tenant {:?}: token_sha256 must be 64 hex digits",
                entry.name
            ))
        })?;
        if entry.weight == 0 || entry.weight > wasmpool::Tenant::MAX_WEIGHT {
            return Err(bad(format!(
                "tenant {:?}: weight must be from 1 to {}",
                entry.name,
                wasmpool::Tenant::MAX_WEIGHT
            )));
        }
        check_quotas(&entry.quotas).map_err(|m| bad(format!("tenant {:?}: {m}", entry.name)))?;
        let id = u64::from_be_bytes(
            Sha256::digest(entry.name.as_bytes())[..8]
                .try_into()
                .unwrap_or([0; 8]),
        );
        tenants.push(Tenant { entry, digest, id });
    }
    Ok(tenants)
}

fn check_quotas(q: &Quotas) -> Result<(), String> {
    if q.running == 0 {
        return Err("quotas.running must be at least 1".into());
    }
    if !(q.rate.is_finite() && q.rate > 0.0) {
        return Err("quotas.rate must be a number of submissions per second above 0".into());
    }
    let max_memory_mib = wasmpool::Limits::MAX_MEMORY_BYTES >> 20;
    if q.max_memory_mib == 0 || q.max_memory_mib > max_memory_mib {
        return Err(format!(
            "quotas.max_memory_mib must be from 1 to {max_memory_mib}"
        ));
    }
    let max_timeout = wasmpool::Limits::MAX_TIMEOUT.as_secs_f64();
    if !(q.max_timeout_s.is_finite() && q.max_timeout_s > 0.0 && q.max_timeout_s <= max_timeout) {
        return Err(format!(
            "quotas.max_timeout_s must be above 0 and at most {max_timeout}"
        ));
    }
    if q.max_output_mib == 0 || q.max_output_mib > (u64::MAX >> 20) {
        return Err("quotas.max_output_mib must be at least 1".into());
    }
    if q.max_fuel == Some(0) {
        return Err("quotas.max_fuel must be at least 1 (or left out)".into());
    }
    if q.result_ttl_s == 0 {
        return Err("quotas.result_ttl_s must be at least 1".into());
    }
    if q.object_calls == 0 {
        return Err("quotas.object_calls must be at least 1".into());
    }
    Ok(())
}

/// The SHA-256 of `token`.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

fn decode_digest(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let digit = |c: u8| char::from(c).to_digit(16);
        let (hi, lo) = (digit(pair[0])?, digit(pair[1])?);
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

/// Whether two digests are equal, in time that does not depend on where they differ.
pub fn digests_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// The tenants in force, replaced whole on a reload.
#[derive(Debug)]
pub struct Registry {
    path: PathBuf,
    current: RwLock<Arc<Vec<Tenant>>>,
    mtime: RwLock<Option<SystemTime>>,
    /// Whether tenant names must also be cluster tenant names (`serve --cluster`).
    cluster_names: bool,
}

impl Registry {
    /// Loads `path`.
    pub fn load(path: &Path) -> Result<Registry, ServeError> {
        Registry::load_checked(path, false)
    }

    /// Loads `path`; with `cluster_names`, every tenant's name (on this load and every
    /// reload) must also name a tenant on a cluster
    /// ([`wasmpool::cluster::check_tenant_name`]), as `serve --cluster` runs each tenant's
    /// work as that cluster tenant.
    pub fn load_checked(path: &Path, cluster_names: bool) -> Result<Registry, ServeError> {
        let (tenants, mtime) = read(path, cluster_names)?;
        Ok(Registry {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(tenants)),
            mtime: RwLock::new(mtime),
            cluster_names,
        })
    }

    /// The tenants now.
    pub fn all(&self) -> Arc<Vec<Tenant>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The tenant whose token is `token`: its digest is compared with every tenant's, each in
    /// constant time, and every tenant is looked at whichever matches.
    pub fn authenticate(&self, token: &str) -> Option<Tenant> {
        let digest = token_digest(token);
        let mut found = None;
        for t in self.all().iter() {
            if digests_equal(&t.digest, &digest) {
                found = Some(t.clone());
            }
        }
        found
    }

    /// The tenant named `name`.
    pub fn by_name(&self, name: &str) -> Option<Tenant> {
        self.all().iter().find(|t| t.name() == name).cloned()
    }

    /// Reads the file again if its modification time changed (or `force`); returns whether
    /// the tenants were replaced. A file that does not parse leaves the tenants as they were
    /// and is the error.
    pub fn reload_if_changed(&self, force: bool) -> Result<bool, ServeError> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let last = *self.mtime.read().unwrap_or_else(|p| p.into_inner());
        if !force && mtime == last {
            return Ok(false);
        }
        // Remembered first: a bad file is reported once, not every second.
        *self.mtime.write().unwrap_or_else(|p| p.into_inner()) = mtime;
        let (tenants, _) = read(&self.path, self.cluster_names)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(tenants);
        Ok(true)
    }
}

fn read(path: &Path, cluster_names: bool) -> Result<(Vec<Tenant>, Option<SystemTime>), ServeError> {
    let text = std::fs::read_to_string(path).map_err(|e| ServeError::Tenants {
        path: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let tenants = parse(&text, path)?;
    if cluster_names {
        for t in &tenants {
            wasmpool::cluster::check_tenant_name(t.name()).map_err(|e| ServeError::Tenants {
                path: path.to_path_buf(),
                message: format!("with --cluster, {e}"),
            })?;
        }
    }
    Ok((tenants, mtime))
}

/// Adds tenant `name` with `weight` (and default quotas) to the tenants file at `path`
/// (created if missing) and returns its fresh token, which is written nowhere: only its
/// SHA-256 goes in the file. The file is replaced atomically (written beside, then renamed),
/// so a service reloading it never reads half of it.
pub fn add_tenant(path: &Path, name: &str, weight: u32) -> Result<String, ServeError> {
    let bad = |message: String| ServeError::Tenants {
        path: path.to_path_buf(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(bad(format!("cannot read: {e}"))),
    };
    let existing = parse(&text, path)?;
    if existing.iter().any(|t| t.name() == name) {
        return Err(bad(format!("a tenant named {name:?} is already there")));
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| bad(format!("no random bytes for a token: {e}")))?;
    let token = format!("wp_{}", hex(&raw));
    let entry = TenantEntry {
        name: name.to_string(),
        token_sha256: hex(&token_digest(&token)),
        weight,
        quotas: Quotas::default(),
    };
    let mut addition = toml::to_string(&TenantsToml {
        tenant: vec![entry],
    })
    .map_err(|e| bad(e.to_string()))?;
    if !text.is_empty() && !text.ends_with('\n') {
        addition.insert(0, '\n');
    }
    let new_text = format!(
        "{text}{}{addition}",
        if text.is_empty() { "" } else { "\n" }
    );
    // The whole file must still parse: checked before it is written.
    parse(&new_text, path)?;
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, &new_text).map_err(|e| bad(format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| bad(format!("cannot replace: {e}")))?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_file_parses_with_defaults_and_a_bad_one_names_what_is_wrong() {
        let digest = hex(&token_digest("secret"));
        let text = format!(
            "[[tenant]]\nname = \"a\"\ntoken_sha256 = \"{digest}\"\n[tenant.quotas]\nrunning = 2\n"
        );
        let tenants = parse(&text, Path::new("t.toml")).unwrap();
        assert_eq!(tenants[0].entry.weight, 1);
        assert_eq!(tenants[0].quotas().running, 2);
        assert_eq!(tenants[0].quotas().queued, Quotas::default().queued);
        let e = parse(&text.replace("running", "runing"), Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("runing"), "{e}");
        let e = parse(&text.replace(&digest, "abc"), Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("64 hex digits"), "{e}");
    }

    #[test]
    fn only_the_right_token_authenticates() {
        let dir = std::env::temp_dir().join(format!("wp-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tenants.toml");
        let _ = std::fs::remove_file(&path);
        let a = add_tenant(&path, "a", 1).unwrap();
        let b = add_tenant(&path, "b", 3).unwrap();
        assert!(add_tenant(&path, "a", 1).is_err());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&a) && !text.contains(&b),
            "tokens are not stored"
        );
        let reg = Registry::load(&path).unwrap();
        assert_eq!(reg.authenticate(&a).unwrap().name(), "a");
        assert_eq!(reg.authenticate(&b).unwrap().entry.weight, 3);
        assert!(reg.authenticate("wp_nope").is_none());
        assert!(reg.authenticate(&a[..a.len() - 1]).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
