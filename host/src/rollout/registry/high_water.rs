//! The newest signing time seen per tag, under `--verify-key`: what stops
//! whoever can move a tag from rolling a fleet back to an older version
//! that was once signed for it. A pull through a tag whose signature was
//! made before the mark is refused (an operator may force it through the
//! admin API, audited); one made at or after it raises the mark.
//!
//! The marks are kept in the state directory (`signed-high-water.json`,
//! private, written whole and renamed), so a restart does not forget
//! them. One process per state directory (its lock) means no other
//! writer; the mutex orders this process's pulls (a follower and the
//! admin API may pull at once).

use crate::private_files::{read_private, write_private};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

/// The file, in the state directory.
pub const FILE_NAME: &str = "signed-high-water.json";

/// The marks, by `registry/repository:tag`.
#[derive(Debug)]
pub(super) struct HighWater {
    /// Where they are kept; `None` keeps them for this process's life.
    path: Option<PathBuf>,
    /// Tag → the newest `signed-at` taken through it (RFC 3339).
    marks: Mutex<BTreeMap<String, String>>,
}

/// A version signed before the newest one seen for its tag.
#[derive(Debug)]
pub(super) struct Older {
    /// The newest signing time seen for the tag.
    pub newest: String,
}

impl HighWater {
    /// Marks kept for this process's life only (no state directory).
    pub(super) fn in_memory() -> Self {
        HighWater {
            path: None,
            marks: Mutex::default(),
        }
    }

    /// The marks kept at `path`; none when the file is not there yet. A
    /// file that cannot be read or parsed is an error: starting without
    /// the marks would reopen the rollback they close.
    pub(super) fn open(path: PathBuf) -> std::io::Result<Self> {
        let marks = match read_private(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|err| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: {err}", path.display()),
                )
            })?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err),
        };
        Ok(HighWater {
            path: Some(path),
            marks: Mutex::new(marks),
        })
    }

    /// Takes a version signed at `signed_at` through `tag`: refused when
    /// the tag's mark is later (unless `allow_older`), else the mark is
    /// raised to it. A signing time that cannot be read neither passes
    /// nor moves a mark it would have to be compared with.
    pub(super) fn take(&self, tag: &str, signed_at: &str, allow_older: bool) -> Result<(), Older> {
        let Some(at) = parse(signed_at) else {
            return match self.lock().get(tag) {
                Some(newest) if !allow_older => Err(Older {
                    newest: newest.clone(),
                }),
                _ => Ok(()),
            };
        };
        let mut marks = self.lock();
        if let Some(newest) = marks.get(tag)
            && parse(newest).is_some_and(|newest| newest > at)
        {
            return if allow_older {
                Ok(())
            } else {
                Err(Older {
                    newest: newest.clone(),
                })
            };
        }
        marks.insert(tag.to_owned(), signed_at.to_owned());
        let Some(path) = &self.path else {
            return Ok(());
        };
        // Written under the lock, so that two pulls cannot write their
        // maps in the other order.
        let bytes = serde_json::to_vec_pretty(&*marks).expect("a map of strings serializes");
        if let Err(err) = write_private(path, &bytes) {
            tracing::error!(
                path = %path.display(),
                error = %err,
                "cannot keep the signed high-water mark; it holds until a restart"
            );
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        // A panic while holding it cannot leave the map half-written.
        self.marks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn parse(text: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339_weak(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_signature_is_refused_unless_forced_and_the_mark_persists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        let marks = HighWater::open(path.clone()).unwrap();
        marks
            .take("r/k:stable", "2026-12-07T10:00:00Z", false)
            .unwrap();
        marks
            .take("r/k:stable", "2026-12-07T10:00:00Z", false)
            .unwrap();
        let older = marks
            .take("r/k:stable", "2026-12-07T09:00:00Z", false)
            .unwrap_err();
        assert_eq!(older.newest, "2026-12-07T10:00:00Z");
        marks
            .take("r/k:canary", "2026-12-07T09:00:00Z", false)
            .unwrap();
        marks
            .take("r/k:stable", "2026-12-07T09:00:00Z", true)
            .unwrap();
        drop(marks);
        let reopened = HighWater::open(path).unwrap();
        assert!(
            reopened
                .take("r/k:stable", "2026-12-07T09:30:00Z", false)
                .is_err()
        );
        assert!(reopened.take("r/k:stable", "garbage", false).is_err());
        assert!(reopened.take("r/k:other", "garbage", false).is_ok());
    }
}
