//! Capabilities granted to guests. A guest gets clocks, randomness and captured stdio, and
//! nothing else: no files, no environment, no network, no stdin. `Grants` opens a directory
//! or sets an environment variable for the tasks of one pool or process.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a pool's or a process's tasks may reach beyond clocks, randomness and their output:
/// host directories (read-only or read-write) and environment variables. Deny by default: a
/// guest reaching for anything not granted gets a WASI error inside the guest.
///
/// ```
/// use wasmpool::Grants;
/// let grants = Grants::new()
///     .dir_read_only(".", "/data")
///     .env("GREETING", "hello");
/// assert!(!grants.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Grants {
    dirs: Vec<DirGrant>,
    env: Vec<(String, String)>,
}

/// One host directory, as the guest sees it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
struct DirGrant {
    host: PathBuf,
    guest: String,
    read_only: bool,
}

impl Grants {
    /// No capabilities (the default).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the host directory `host` to the guest, read-write, at the path `guest`.
    pub fn dir(self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.with_dir(host.into(), guest.into(), false)
    }

    /// Opens the host directory `host` to the guest at `guest`; the guest can read it and
    /// nothing more.
    pub fn dir_read_only(self, host: impl Into<PathBuf>, guest: impl Into<String>) -> Self {
        self.with_dir(host.into(), guest.into(), true)
    }

    fn with_dir(mut self, host: PathBuf, guest: String, read_only: bool) -> Self {
        self.dirs.push(DirGrant {
            host,
            guest,
            read_only,
        });
        self
    }

    /// Sets the environment variable `key` to `value` for the guest.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Parses the CLI's directory form, `HOST[:GUEST][:ro]` (the guest path defaults to the
    /// host path), and adds it.
    ///
    /// ```
    /// let g = wasmpool::Grants::new().parse_dir("/srv/data:/data:ro")?;
    /// assert!(!g.is_empty());
    /// # Ok::<(), wasmpool::Error>(())
    /// ```
    pub fn parse_dir(self, spec: &str) -> Result<Self> {
        let (rest, read_only) = match spec.strip_suffix(":ro") {
            Some(rest) => (rest, true),
            None => (spec.strip_suffix(":rw").unwrap_or(spec), false),
        };
        let (host, guest) = match rest.split_once(':') {
            Some((host, guest)) => (host, guest),
            None => (rest, rest),
        };
        if host.is_empty() || guest.is_empty() {
            return Err(Error::BadArgs(format!(
                "a directory grant looks like HOST[:GUEST][:ro], not `{spec}`"
            )));
        }
        Ok(self.with_dir(host.into(), guest.into(), read_only))
    }

    /// Parses the CLI's environment form, `KEY=VALUE`, and adds it.
    pub fn parse_env(self, spec: &str) -> Result<Self> {
        match spec.split_once('=') {
            Some((key, value)) if !key.is_empty() => Ok(self.env(key, value)),
            _ => Err(Error::BadArgs(format!(
                "an environment grant looks like KEY=VALUE, not `{spec}`"
            ))),
        }
    }

    /// The granted host directories, each with whether it is read-only.
    pub(crate) fn host_dirs(&self) -> impl Iterator<Item = (&Path, bool)> {
        self.dirs.iter().map(|d| (d.host.as_path(), d.read_only))
    }

    /// Whether nothing is granted.
    pub fn is_empty(&self) -> bool {
        self.dirs.is_empty() && self.env.is_empty()
    }

    /// Checks the grants on the host and makes every host path absolute (workers need not
    /// share this process's working directory), so a bad grant fails before any task runs.
    pub(crate) fn resolved(&self) -> Result<Grants> {
        self.check_shape()?;
        let mut out = self.clone();
        for dir in &mut out.dirs {
            dir.host = canonical_dir(&dir.host, "grant")?;
        }
        Ok(out)
    }

    /// Checks what does not depend on the host that opens the directories: each guest path
    /// is absolute, each variable's name valid.
    fn check_shape(&self) -> Result<()> {
        for dir in &self.dirs {
            if !dir.guest.starts_with('/') && dir.guest != "." {
                return Err(Error::BadArgs(format!(
                    "the guest path of a directory grant must be absolute, not `{}`",
                    dir.guest
                )));
            }
        }
        for (key, _) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(Error::BadArgs(format!(
                    "`{key}` is not a valid environment variable name"
                )));
            }
        }
        Ok(())
    }

    /// Checks grants that travel to a cluster's hosts, where the directories are theirs:
    /// as [`resolved`](Grants::resolved) does, but without opening anything here, and each
    /// host path must be absolute (a relative one would name a host's working directory).
    pub(crate) fn check_for_cluster(&self) -> Result<()> {
        self.check_shape()?;
        for dir in &self.dirs {
            if !dir.host.is_absolute() {
                return Err(Error::BadArgs(format!(
                    "a directory granted on a cluster names an absolute path on its hosts, not `{}`",
                    dir.host.display()
                )));
            }
        }
        Ok(())
    }

    /// The same grants with each directory's host path replaced by what `admit` answers
    /// for it (its path and whether the grant is read-only), or the first error.
    pub(crate) fn with_host_dirs(
        &self,
        mut admit: impl FnMut(&Path, bool) -> Result<PathBuf>,
    ) -> Result<Grants> {
        let mut out = self.clone();
        for dir in &mut out.dirs {
            dir.host = admit(&dir.host, dir.read_only)?;
        }
        Ok(out)
    }

    /// Adds the grants to a guest's WASI context (in the worker).
    pub(crate) fn apply(
        &self,
        wasi: &mut wasmtime_wasi::WasiCtxBuilder,
    ) -> std::result::Result<(), String> {
        for (key, value) in &self.env {
            wasi.env(key, value);
        }
        for dir in &self.dirs {
            let perms = if dir.read_only {
                wasmtime_wasi::FsPerms::ReadOnly
            } else {
                wasmtime_wasi::FsPerms::ReadWrite
            };
            wasi.preopened_dir(&dir.host, &dir.guest, perms)
                .map_err(|e| format!("cannot open {}: {e:#}", dir.host.display()))?;
        }
        Ok(())
    }
}

/// The canonical path of the directory `host`, or an error saying it cannot be given as
/// `verb` says (`grant`, `allow`): it is missing, or not a directory.
pub(crate) fn canonical_dir(host: &Path, verb: &str) -> Result<PathBuf> {
    let path = host.canonicalize().map_err(|e| {
        Error::BadArgs(format!(
            "cannot {verb} the directory {}: {e}",
            host.display()
        ))
    })?;
    if !path.is_dir() {
        return Err(Error::BadArgs(format!(
            "cannot {verb} {}: not a directory",
            host.display()
        )));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::Grants;

    #[test]
    fn cli_forms_parse() {
        let g = Grants::new().parse_dir("/tmp").unwrap();
        assert_eq!(g.dirs[0].guest, "/tmp");
        assert!(!g.dirs[0].read_only);
        let g = Grants::new().parse_dir("/tmp:/data:ro").unwrap();
        assert_eq!(
            (g.dirs[0].guest.as_str(), g.dirs[0].read_only),
            ("/data", true)
        );
        assert!(Grants::new().parse_dir(":/data").is_err());
        let g = Grants::new().parse_env("A=b=c").unwrap();
        assert_eq!(g.env[0], ("A".to_string(), "b=c".to_string()));
        assert!(Grants::new().parse_env("novalue").is_err());
        assert!(Grants::new().parse_env("=x").is_err());
    }

    #[test]
    fn missing_directories_are_refused_on_the_host() {
        let err = Grants::new()
            .dir("/no/such/dir/anywhere", "/data")
            .resolved()
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/dir/anywhere"), "{err}");
        assert!(Grants::new().dir("/tmp", "data").resolved().is_err());
    }
}
