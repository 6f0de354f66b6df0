//! Stamps: what the compile cache remembers of a file it has read and checked in full, so
//! that the next program to use the same file need not read and hash it again.
//!
//! A stamp is what the kernel keeps of one version of a file: its device and inode (a file
//! put in its place by a rename or a copy is another inode), its size, and its modification
//! and change times. Every write to a file, and every change of its times or mode, sets its
//! change time to the current time, which no user can set back (only the system clock
//! moves it). So a file whose stamp is the one recorded when it was checked holds the bytes
//! that were checked, with one exception that [`Stamp::settled`] rules out: a write within
//! the clock's granularity of the previous one can leave the change time as it was (the
//! "racy" entries of git's index), so a stamp is recorded only for a file whose times are
//! well in the past.
//!
//! A record is one line in a file of the cache: the stamp, a value (a digest, or a word)
//! and an HMAC-SHA256 under the cache's key over both, the record's kind and what it is
//! about. A record that does not verify, or whose stamp is not the file's, is ignored.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::module::cache_files::{KEY_BYTES, hmac, open_own, write_atomically};

/// How far in the past a file's times must be for its stamp to be recorded: far beyond any
/// file system's timestamp granularity.
const SETTLE: Duration = Duration::from_secs(2);

/// The longest record read (a record is about 200 bytes).
const MAX_RECORD: u64 = 1024;

/// One version of a file, as the kernel identifies it (see the module's documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    /// The stamp of the file `meta` describes.
    pub(crate) fn of(meta: &fs::Metadata) -> Stamp {
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file's device.
    pub(crate) fn dev(&self) -> u64 {
        self.dev
    }

    /// The file's inode.
    pub(crate) fn ino(&self) -> u64 {
        self.ino
    }

    /// The file's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Whether the file's times were at least [`SETTLE`] before `now` (the time the stamp
    /// was taken, before the file was read): then any later write gives it another change
    /// time, and the stamp may be recorded.
    pub(crate) fn settled(&self, now: SystemTime) -> bool {
        let Ok(now) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let before = |(secs, nanos): (i64, i64)| match (u64::try_from(secs), u32::try_from(nanos)) {
            (Ok(secs), Ok(nanos)) => Duration::new(secs, nanos) + SETTLE <= now,
            _ => false,
        };
        before(self.mtime) && before(self.ctime)
    }

    fn text(&self) -> String {
        format!(
            "{} {} {} {}.{:09} {}.{:09}",
            self.dev, self.ino, self.len, self.mtime.0, self.mtime.1, self.ctime.0, self.ctime.1
        )
    }
}

/// A record's line: the stamp, the value and the HMAC over the kind, the subject, the stamp
/// and the value.
fn line(key: &[u8; KEY_BYTES], kind: &str, subject: &str, stamp: &Stamp, value: &str) -> String {
    let stamp = stamp.text();
    let mac = hmac(
        key,
        &[
            b"wasmpool-stamp-1\0",
            kind.as_bytes(),
            b"\0",
            subject.as_bytes(),
            b"\0",
            stamp.as_bytes(),
            b"\0",
            value.as_bytes(),
        ],
    );
    let mac: String = mac.iter().map(|b| format!("{b:02x}")).collect();
    format!("{stamp} {value} {mac}\n")
}

/// The value of the record of `kind` about `subject` kept at `path`, if there is one for
/// exactly this `stamp` and it verifies under `key`.
pub(crate) fn read(
    key: &[u8; KEY_BYTES],
    path: &Path,
    kind: &str,
    subject: &str,
    stamp: &Stamp,
) -> Option<String> {
    let mut stored = String::new();
    open_own(path)
        .ok()?
        .take(MAX_RECORD)
        .read_to_string(&mut stored)
        .ok()?;
    // The value is the second field from the end; the line is rebuilt from it and compared
    // whole, so a record of another stamp, kind or subject, or under another key, differs.
    let value = stored.trim_end().rsplit(' ').nth(1)?.to_string();
    let want = line(key, kind, subject, stamp, &value);
    // Compared in full whatever differs (no early exit to time).
    let same = stored.len() == want.len()
        && stored
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    same.then_some(value)
}

/// Records `value` for the file of `stamp` at `path` (through a temporary file: a reader
/// never sees half a record). `value` must hold no space or newline. Best effort: a record
/// that cannot be written only means the file is checked in full again next time.
pub(crate) fn write(
    key: &[u8; KEY_BYTES],
    path: &Path,
    kind: &str,
    subject: &str,
    stamp: &Stamp,
    value: &str,
) {
    debug_assert!(!value.contains([' ', '\n']) && !value.is_empty());
    let _ = write_atomically(path, line(key, kind, subject, stamp, value).as_bytes());
}

/// The stamp of the open `file`, and the time it was taken.
pub(crate) fn of_file(file: &File) -> Option<(Stamp, SystemTime)> {
    let now = SystemTime::now();
    Some((Stamp::of(&file.metadata().ok()?), now))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("wasmpool-stamps-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        crate::module::private_dir(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_record_is_read_back_only_for_its_own_stamp_kind_subject_and_key() {
        let dir = temp("records");
        let file = dir.join("file");
        fs::write(&file, b"checked bytes").expect("write");
        let stamp = Stamp::of(&fs::metadata(&file).expect("meta"));
        let key = [7u8; KEY_BYTES];
        let record = dir.join("record");
        write(&key, &record, "kind", "subject", &stamp, "value");
        assert_eq!(
            read(&key, &record, "kind", "subject", &stamp).as_deref(),
            Some("value")
        );
        assert_eq!(read(&key, &record, "other", "subject", &stamp), None);
        assert_eq!(read(&key, &record, "kind", "other", &stamp), None);
        assert_eq!(
            read(&[8u8; KEY_BYTES], &record, "kind", "subject", &stamp),
            None
        );
        // Any write to the file gives it another stamp (its change time, here its size).
        fs::write(&file, b"other bytes, longer").expect("write");
        let changed = Stamp::of(&fs::metadata(&file).expect("meta"));
        assert_ne!(changed, stamp);
        assert_eq!(read(&key, &record, "kind", "subject", &changed), None);
        // A record edited by hand (another value, the same MAC) does not verify.
        let text = fs::read_to_string(&record).expect("record");
        fs::write(&record, text.replace(" value ", " forged ")).expect("write");
        assert_eq!(read(&key, &record, "kind", "subject", &stamp), None);
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_stamp_is_settled_only_when_its_times_are_well_past() {
        let dir = temp("settled");
        let file = dir.join("file");
        fs::write(&file, b"bytes").expect("write");
        let stamp = Stamp::of(&fs::metadata(&file).expect("meta"));
        let now = SystemTime::now();
        assert!(!stamp.settled(now), "just written");
        assert!(stamp.settled(now + Duration::from_secs(3)));
        let _ = fs::remove_dir_all(&dir);
    }
}
