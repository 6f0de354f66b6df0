//! The host directories a cluster host lets its chunks' pools open
//! ([`HostBuilder::allow_dir`](crate::cluster::HostBuilder::allow_dir)): a submitter's
//! directory grant names a host path, and a host opens it only if its operator allowed
//! exactly that directory, read-only where the operator said so. Nothing is allowed by
//! default.
//!
//! Only the directories named, not what is under them: a task given one read-write could
//! put a symbolic link there, and a later grant of a path under it would follow the link
//! out. The operator's own path is what the pool opens. For the same reason no allowed
//! directory may be inside a read-write one (a task could replace it with a link, and the
//! pool, which opens it by name, would open what the link names), and a directory whose
//! canonical path is no longer the one recorded when it was allowed is refused.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::grants::{Grants, canonical_dir};

/// One directory an operator allowed.
#[derive(Debug, Clone)]
struct Allowed {
    /// As the operator named it, in its lexical normal form.
    named: PathBuf,
    /// Its canonical path: what a pool opens.
    real: PathBuf,
    read_only: bool,
}

/// The directories a host allows, each read-write or read-only.
#[derive(Debug, Clone, Default)]
pub(crate) struct AllowedDirs {
    dirs: Vec<Allowed>,
}

impl AllowedDirs {
    /// Allows `path` (which must be an existing directory), read-only if asked. Allowed
    /// twice, the read-write allowance wins. Refused when it is inside a directory allowed
    /// read-write, or, read-write, holds one allowed: a task could replace the inner one
    /// with a symbolic link.
    pub fn allow(&mut self, path: &Path, read_only: bool) -> Result<()> {
        let named = normal(path).ok_or_else(|| {
            Error::BadArgs(format!(
                "an allowed directory is an absolute path without `..`, not `{}`",
                path.display()
            ))
        })?;
        let real = canonical_dir(path, "allow")?;
        for a in &self.dirs {
            let (outer, inner) = if real != a.real && real.starts_with(&a.real) && !a.read_only {
                (&a.named, path)
            } else if real != a.real && a.real.starts_with(&real) && !read_only {
                (&named, a.named.as_path())
            } else {
                continue;
            };
            return Err(Error::BadArgs(format!(
                "cannot allow both {} and {}: the first is allowed read-write and holds the \
                 second, which a task could replace with a symbolic link to anywhere on the \
                 host; allow directories side by side, or the outer one read-only",
                outer.display(),
                inner.display()
            )));
        }
        self.dirs.push(Allowed {
            named,
            real,
            read_only,
        });
        Ok(())
    }

    /// `grants` as the pool of host `host` opens them: each directory granted replaced by
    /// the allowed directory it names, or an error saying which grant this host refuses
    /// and why.
    pub fn admit(&self, grants: &Grants, host: &str) -> Result<Grants> {
        grants.with_host_dirs(|path, read_only| {
            let wanted = normal(path);
            let matching: Vec<&Allowed> = self
                .dirs
                .iter()
                .filter(|a| {
                    wanted
                        .as_deref()
                        .is_some_and(|w| w == a.named || w == a.real)
                })
                .collect();
            if let Some(a) = matching.iter().find(|a| read_only || !a.read_only) {
                // The pool opens it by name: it must still be the directory allowed.
                let now = a.real.canonicalize().ok();
                if now.as_deref() != Some(a.real.as_path()) || !a.real.is_dir() {
                    return Err(Error::BadArgs(format!(
                        "host {host} refuses the directory {}: it no longer resolves to the \
                         directory it allowed, {} (now: {}); replaced by a symbolic link?",
                        path.display(),
                        a.real.display(),
                        now.map_or_else(|| "missing".into(), |p| p.display().to_string())
                    )));
                }
                return Ok(a.real.clone());
            }
            let shown = path.display();
            Err(Error::BadArgs(if matching.is_empty() {
                format!(
                    "host {host} does not allow the directory {shown}: a directory granted on \
                     a cluster must be one its hosts allow (`wasmpool worker --allow-dir \
                     {shown}`), and this host allows {}",
                    self.listed()
                )
            } else {
                format!(
                    "host {host} allows the directory {shown} read-only: grant it read-only \
                     (`{shown}:GUEST:ro`, `Grants::dir_read_only`)"
                )
            }))
        })
    }

    /// What is allowed, for an error message.
    fn listed(&self) -> String {
        if self.dirs.is_empty() {
            return "none".into();
        }
        let shown: Vec<String> = self
            .dirs
            .iter()
            .map(|a| {
                let mode = if a.read_only { " (read-only)" } else { "" };
                format!("{}{mode}", a.named.display())
            })
            .collect();
        shown.join(", ")
    }
}

/// `path` without `.` components or a trailing `/`, if it is absolute and has no `..`
/// (which the lexical form cannot resolve without following links).
fn normal(path: &Path) -> Option<PathBuf> {
    if !path.is_absolute() {
        return None;
    }
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir => out.push("/"),
            Component::CurDir => {}
            Component::Normal(part) => out.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "wasmpool-allowed-{}-{}",
            std::process::id(),
            crate::cluster::tag()
        ));
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        dir
    }

    #[test]
    fn only_the_directories_allowed_are_admitted_and_read_only_stays_read_only() {
        let base = temp();
        let (root, ro) = (base.join("rw"), base.join("inner"));
        std::fs::create_dir_all(&root).unwrap();
        let mut allowed = AllowedDirs::default();
        allowed.allow(&root, false).unwrap();
        allowed.allow(&ro, true).unwrap();
        let real = root.canonicalize().unwrap();

        // The path as allowed, in another spelling of the same form, read-write.
        let spelled = format!("{}/./", root.display());
        let g = Grants::new().dir(&spelled, "/data");
        assert_eq!(
            allowed.admit(&g, "h").unwrap(),
            Grants::new().dir(&real, "/data")
        );
        // Read-only where only that is allowed; read-write there is refused.
        let g = Grants::new().dir_read_only(&ro, "/ro");
        assert!(allowed.admit(&g, "h").is_ok());
        let err = allowed
            .admit(&Grants::new().dir(&ro, "/ro"), "h")
            .unwrap_err();
        assert!(err.to_string().contains("read-only"), "{err}");

        // What is under an allowed directory, a `..` way out of it, and anything else are
        // refused, naming the host and what it allows.
        for path in [
            ro.join("x"),
            ro.join(".."),
            root.join("x"),
            PathBuf::from("/etc"),
            PathBuf::from("relative"),
        ] {
            let err = allowed
                .admit(&Grants::new().dir_read_only(&path, "/d"), "h1")
                .unwrap_err()
                .to_string();
            assert!(err.contains("host h1 does not allow"), "{path:?}: {err}");
            assert!(err.contains("--allow-dir"), "{err}");
        }
        // Nothing allowed, nothing admitted; environment variables pass.
        let none = AllowedDirs::default();
        let err = none
            .admit(&Grants::new().dir_read_only(&root, "/d"), "h")
            .unwrap_err();
        assert!(err.to_string().contains("allows none"), "{err}");
        let env = Grants::new().env("A", "b");
        assert_eq!(none.admit(&env, "h").unwrap(), env);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_inside_a_read_write_one_cannot_be_allowed_either_way_round() {
        let root = temp();
        let inner = root.join("inner");
        // Inside one allowed read-write: refused, read-only or not, naming both.
        let mut allowed = AllowedDirs::default();
        allowed.allow(&root, false).unwrap();
        for read_only in [true, false] {
            let err = allowed.allow(&inner, read_only).unwrap_err().to_string();
            assert!(err.contains("symbolic link"), "{err}");
            assert!(err.contains(&*inner.to_string_lossy()), "{err}");
        }
        // Holding one allowed, read-write: refused too.
        let mut allowed = AllowedDirs::default();
        allowed.allow(&inner, true).unwrap();
        let err = allowed.allow(&root, false).unwrap_err().to_string();
        assert!(err.contains("cannot allow both"), "{err}");
        // Read-only around it (no task can write there), or the same directory twice: fine.
        allowed.allow(&root, true).unwrap();
        allowed.allow(&inner, false).unwrap();
        // Nested through a symbolic link's name: the canonical paths tell.
        let link = std::env::temp_dir().join(format!(
            "wasmpool-allowed-link-{}-{}",
            std::process::id(),
            crate::cluster::tag()
        ));
        std::os::unix::fs::symlink(&inner, &link).unwrap();
        let mut allowed = AllowedDirs::default();
        allowed.allow(&root, false).unwrap();
        assert!(allowed.allow(&link, true).is_err());
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_allowed_directory_replaced_by_a_symbolic_link_is_refused() {
        let root = temp();
        let models = root.join("inner");
        let mut allowed = AllowedDirs::default();
        allowed.allow(&models, true).unwrap();
        let g = Grants::new().dir_read_only(&models, "/models");
        assert!(allowed.admit(&g, "h").is_ok());
        // Something with write access to its parent swaps it for a link to `/`.
        std::fs::remove_dir(&models).unwrap();
        std::os::unix::fs::symlink("../..", &models).unwrap();
        let err = allowed.admit(&g, "h").unwrap_err().to_string();
        assert!(err.contains("no longer resolves"), "{err}");
        assert!(err.contains("host h refuses"), "{err}");
        // Gone altogether: refused as well.
        std::fs::remove_file(&models).unwrap();
        let err = allowed.admit(&g, "h").unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_or_relative_directory_cannot_be_allowed() {
        let mut allowed = AllowedDirs::default();
        assert!(
            allowed
                .allow(Path::new("/no/such/dir/anywhere"), true)
                .is_err()
        );
        assert!(allowed.allow(Path::new("rel"), true).is_err());
        assert!(allowed.allow(Path::new("/tmp/../tmp"), true).is_err());
    }
}
