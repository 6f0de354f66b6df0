//! A component's bytes as a [`Module`](crate::Module) keeps them: in memory, or, for a
//! large component loaded from a file whose digest the compile cache had recorded for
//! exactly that file (see `stamps`), in the file itself, read only when something needs
//! them (a compile the cache cannot answer, an upload to a cluster). A Python component is
//! ~19 MB: reading it cost a new program's run more than the rest of its host side.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::stamps::Stamp;

/// The bytes of one component (see the module's documentation).
pub(crate) struct ComponentBytes {
    inner: Inner,
}

enum Inner {
    Held(Vec<u8>),
    /// The file as opened when the module was loaded (a file put at its path since is
    /// another file, and changes nothing here), its stamp then, and its SHA-256.
    InFile {
        file: File,
        stamp: Stamp,
        digest: [u8; 32],
        read: OnceLock<Vec<u8>>,
    },
}

impl ComponentBytes {
    /// Bytes in memory.
    pub(crate) fn held(bytes: Vec<u8>) -> ComponentBytes {
        ComponentBytes {
            inner: Inner::Held(bytes),
        }
    }

    /// The bytes of `file`, whose stamp is `stamp` and whose content has the SHA-256
    /// `digest`, read when first asked for.
    pub(crate) fn in_file(file: File, stamp: Stamp, digest: [u8; 32]) -> ComponentBytes {
        ComponentBytes {
            inner: Inner::InFile {
                file,
                stamp,
                digest,
                read: OnceLock::new(),
            },
        }
    }

    /// The bytes: read the first time from the file they are in, which must still hold
    /// what it held when the module was loaded (an error naming `origin` otherwise).
    pub(crate) fn get(&self, origin: &Path) -> Result<&[u8]> {
        let (file, stamp, digest, read) = match &self.inner {
            Inner::Held(bytes) => return Ok(bytes),
            Inner::InFile {
                file,
                stamp,
                digest,
                read,
            } => (file, stamp, digest, read),
        };
        if let Some(bytes) = read.get() {
            return Ok(bytes);
        }
        let changed = || Error::BadModule {
            path: origin.to_path_buf(),
            message: "was changed in place since it was loaded; load it again".into(),
        };
        let unreadable = |e: std::io::Error| Error::BadModule {
            path: origin.to_path_buf(),
            message: format!("cannot read: {e}"),
        };
        let now = Stamp::of(&file.metadata().map_err(unreadable)?);
        if now != *stamp {
            return Err(changed());
        }
        let mut bytes = vec![0u8; usize::try_from(stamp.len()).map_err(|_| changed())?];
        file.read_exact_at(&mut bytes, 0).map_err(unreadable)?;
        // Its stamp says it is the file that was hashed; the bytes are checked all the same,
        // as what is read here is compiled or sent on.
        if Sha256::digest(&bytes).as_slice() != digest {
            return Err(changed());
        }
        // Two threads reading at once both read the same bytes; one keeps them.
        let _ = read.set(bytes);
        read.get().map(Vec::as_slice).ok_or_else(changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_in_a_file_are_read_when_asked_for_and_refused_once_changed_in_place() {
        let dir = std::env::temp_dir().join(format!("wasmpool-cbytes-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("c.wasm");
        std::fs::write(&path, b"component bytes").expect("write");
        let open = || {
            let file = File::open(&path).expect("open");
            let stamp = Stamp::of(&file.metadata().expect("meta"));
            let digest: [u8; 32] = Sha256::digest(b"component bytes").into();
            ComponentBytes::in_file(file, stamp, digest)
        };
        let lazy = open();
        assert_eq!(lazy.get(&path).expect("read"), b"component bytes");
        let changed = open();
        std::fs::write(&path, b"component BYTES").expect("write");
        let err = changed
            .get(&path)
            .expect_err("changed in place")
            .to_string();
        assert!(err.contains("changed in place"), "{err}");
        // What was read before stays.
        assert_eq!(lazy.get(&path).expect("kept"), b"component bytes");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
