//! The versions refused for how they behave, by component digest: a
//! version the contract gate refused once is refused again at once, from
//! any source, without running it again, and a restart remembers it.
//!
//! Without this record a follower would take a refused version again
//! after each restart (its tag still points there), and a fleet would
//! replay the refusal on every instance at every start. The record sits in
//! the history directory (`refused.json`, private, written whole and
//! renamed), under the history's lock: one process writes it. It only
//! grows with refusals, which come from releases, so it stays small; the
//! oldest entries beyond [`MAX_ENTRIES`] are dropped.

use crate::private_files::{read_private, write_private};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

/// The file, in the history directory.
pub const FILE_NAME: &str = "refused.json";

/// The most refusals kept; the oldest go first.
pub const MAX_ENTRIES: usize = 256;

/// Why one version was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The stage that refused it (`gate`).
    pub stage: String,
    /// Why, as the stage said it.
    pub reason: String,
    /// Where the version came from when it was refused.
    pub source: String,
    /// When, in seconds since the Unix epoch.
    pub at: u64,
}

/// The record: kept in a file, or for this process's life only.
#[derive(Debug, Default)]
pub struct Refused {
    path: Option<PathBuf>,
    /// Digest → why. A `std` mutex: held for a lookup or an insert, and
    /// across the file's write (small, and refusals are rare), never
    /// across an `.await`.
    entries: Mutex<BTreeMap<String, Refusal>>,
}

impl Refused {
    /// A record for this process's life only.
    pub fn in_memory() -> Self {
        Refused::default()
    }

    /// The record kept in `dir`; empty when the file is not there yet. A
    /// file that cannot be parsed is set aside with a warning: losing the
    /// record costs a second run of the gate, not a wrong answer.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let entries = match read_private(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                tracing::warn!(path = %path.display(), error = %err, "unreadable record of refused versions; starting a new one");
                BTreeMap::new()
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(err),
        };
        Ok(Refused {
            path: Some(path),
            entries: Mutex::new(entries),
        })
    }

    /// Why the version with `digest` was refused, if it was.
    pub fn get(&self, digest: &str) -> Option<Refusal> {
        self.lock().get(digest).cloned()
    }

    /// Records that the version with `digest`, from `source`, was refused
    /// at `stage` for `reason`. A failure to write is logged: the refusal
    /// stands, but a restart would run the gate again.
    pub fn record(&self, digest: &str, stage: &str, reason: &str, source: &str) {
        let at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut entries = self.lock();
        entries.insert(
            digest.to_owned(),
            Refusal {
                stage: stage.to_owned(),
                reason: reason.to_owned(),
                source: source.to_owned(),
                at,
            },
        );
        while entries.len() > MAX_ENTRIES {
            let oldest = entries
                .iter()
                .min_by_key(|(_, refusal)| refusal.at)
                .map(|(digest, _)| digest.clone());
            match oldest {
                Some(digest) => entries.remove(&digest),
                None => break,
            };
        }
        let Some(path) = &self.path else {
            return;
        };
        let written = serde_json::to_vec_pretty(&*entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| write_private(path, &bytes));
        if let Err(err) = written {
            tracing::error!(path = %path.display(), error = %err, "the record of refused versions cannot be written: a restart would check this version again");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Refusal>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_survives_reopening_and_the_oldest_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let refused = Refused::open(dir.path()).unwrap();
        assert_eq!(refused.get("aa"), None);
        refused.record("aa", "gate", "contract row E13 (…)", "admin");
        let reopened = Refused::open(dir.path()).unwrap();
        let refusal = reopened.get("aa").unwrap();
        assert_eq!(
            (refusal.stage.as_str(), refusal.source.as_str()),
            ("gate", "admin")
        );
        for n in 0..MAX_ENTRIES + 5 {
            reopened.record(&format!("{n:064x}"), "gate", "why", "admin");
        }
        assert_eq!(reopened.lock().len(), MAX_ENTRIES);
    }
}
