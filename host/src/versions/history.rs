//! The record of accepted components, kept across restarts.
//!
//! One concept, in one file: what is written (with its schema) and what
//! `restore` decides from it belong together. Its tests, one per rule
//! below, are in `history/tests.rs`.
//!
//! Every version that starts serving (at start, by a swap from any source,
//! by a rollback) is recorded in a directory of keybust's state: the
//! component's bytes under their digest, and `state.json` naming the
//! version serving, the one before it (the rollback target), and what the
//! configured source (`--component`) held when it was last read. Each file
//! is replaced atomically; blobs no longer named are removed.
//!
//! At start, [`History::restore`] decides what serves:
//! * the recorded version, when the configured source is the same one it
//!   was recorded under (the same `--component` value) and still holds what
//!   it held then: a swap made through the admin API, or a followed tag,
//!   survives a restart, and so does the rollback target;
//! * the configured source otherwise: a new `--component` value, or new
//!   content under the same one (a file replaced or a new build with a new
//!   embedded component while the process was down), is the operator's
//!   newer word. When new versions earn their traffic first (the shadow
//!   stage or the canary is on), new content under the same value is a
//!   new version like any other: the recorded version serves, and the new
//!   content waits as the candidate.
//!
//! The candidate waiting when the process stopped is recorded too (its
//! bytes, and the configured source's content when it came from there):
//! at start it goes through the stages again, never straight into service.

use crate::digest::hex_digest;
use crate::private_files::{
    DirLock, check_owned, create_private_dir, lock_dir, read_private, write_private,
};
use serde::{Deserialize, Serialize};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// The name of the state file in the history directory.
const STATE_FILE: &str = "state.json";

/// The layout of `state.json` this keybust writes. A file without a
/// `schema` (written before it was recorded) has the same layout. A newer
/// one, left by a later keybust before a downgrade, stops the start rather
/// than being read wrongly or overwritten with less than it holds.
pub const STATE_SCHEMA: u32 = 1;

/// Why the history cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The directory or a file in it cannot be created, read or trusted.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        source: io::Error,
    },
    /// Another live keybust process uses the same state directory: two
    /// would each rewrite the record from their own view and lose the
    /// other's versions.
    #[error("{path} is in use by another keybust process; give each process its own --state-dir")]
    InUse {
        /// The state directory.
        path: String,
    },
    /// `state.json` was written by a newer keybust, in a layout this one
    /// does not know.
    #[error(
        "{path} has schema {found}, newer than the {known} this keybust reads (a newer keybust wrote it): \
         run that version, or move the state directory aside to start a new record"
    )]
    NewerSchema {
        /// The state file.
        path: String,
        /// The schema it says it has.
        found: u32,
        /// The newest schema this keybust reads.
        known: u32,
    },
}

/// One recorded version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    /// SHA-256 of the component's bytes, lower-case hex.
    pub digest: String,
    /// Where the bytes came from: `embedded`, a file path, `admin`, an
    /// `oci://` reference.
    pub source: String,
    /// When it started serving, in seconds since the Unix epoch.
    pub accepted_at: u64,
    /// Whether it was pulled with its signature checked (`--verify-key`).
    #[serde(default)]
    pub signed: bool,
    /// The identity of the key its signature was checked with
    /// (`VerifyKey::id`): a version is restored as signed only under the
    /// same key, so rotating `--verify-key` drops what only the old key
    /// signed. Absent from records made without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl Accepted {
    /// A version accepted now.
    pub fn now(digest: &str, source: &str) -> Self {
        Accepted {
            digest: digest.to_owned(),
            source: source.to_owned(),
            accepted_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |since| since.as_secs()),
            signed: false,
            key: None,
        }
    }

    /// The same, noting whether its signature was checked.
    pub fn signed(mut self, signed: bool) -> Self {
        self.signed = signed;
        self
    }

    /// Whether it may serve when signatures are required, checked with
    /// the key `key`: checked with that key, or the component built into
    /// keybust.
    fn trusted_when_signatures_are_required(&self, key: Option<&str>) -> bool {
        (self.signed && self.key.as_deref() == key) || self.source == "embedded"
    }
}

/// What `state.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct State {
    /// The layout ([`STATE_SCHEMA`]); 0 for a file written before it was
    /// recorded, which has the same layout as 1.
    #[serde(default)]
    schema: u32,
    /// The `--component` value the record belongs to.
    configured: Option<String>,
    /// The digest of what the configured source held when last read.
    configured_digest: Option<String>,
    /// The version serving.
    current: Option<Accepted>,
    /// The rollback target.
    previous: Option<Accepted>,
    /// The version waiting as the candidate, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    candidate: Option<Accepted>,
}

/// A version to load at start: its bytes and where they came from.
pub struct Restored {
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// Its source, as recorded.
    pub source: String,
    /// Whether its signature was checked when it was pulled.
    pub signed: bool,
}

/// What serves at start, as [`History::restore`] decides.
pub struct Start {
    /// The version to serve.
    pub current: Restored,
    /// The rollback target, when one was recorded and its bytes are intact.
    pub previous: Option<Restored>,
    /// The candidate recorded when the process stopped, to go through the
    /// stages again.
    pub candidate: Option<Restored>,
    /// Whether the configured source's content is new since it was last
    /// read, and waits as the candidate (in place of a recorded one).
    pub configured_waits: bool,
}

/// The history directory and the state it holds; see the module docs.
/// Writes are made under a lock, one at a time (they come from the slot's
/// swaps, which are serialized already).
pub struct History {
    dir: PathBuf,
    state: Mutex<State>,
    /// The identity of the key signatures are checked with now; stamped on
    /// signed records, and asked of them at restore.
    key: Option<String>,
    /// Whether new content under the configured source waits as the
    /// candidate at start (the shadow stage or the canary is on).
    new_versions_wait: bool,
    /// Held for as long as the history is open: one process per directory.
    _lock: DirLock,
}

impl History {
    /// Opens (creating it owner-only if needed) the history in `dir`. A
    /// state file that cannot be parsed is ignored, with a warning (the
    /// configured source serves), and replaced at the next record.
    pub fn open(dir: &Path) -> Result<Self, HistoryError> {
        let io_error = |path: &Path| {
            let path = path.display().to_string();
            move |source| HistoryError::Io { path, source }
        };
        create_private_dir(dir).map_err(io_error(dir))?;
        check_owned(dir, true).map_err(io_error(dir))?;
        let lock = lock_dir(dir).map_err(|err| match err.kind() {
            io::ErrorKind::WouldBlock => HistoryError::InUse {
                path: dir.display().to_string(),
            },
            _ => io_error(dir)(err),
        })?;
        let path = dir.join(STATE_FILE);
        let state = match read_private(&path) {
            Ok(bytes) => {
                // The schema first: a newer layout may not parse as this
                // one, and must not be taken for a damaged file.
                #[derive(Deserialize)]
                struct Schema {
                    #[serde(default)]
                    schema: u32,
                }
                if let Ok(Schema { schema }) = serde_json::from_slice::<Schema>(&bytes)
                    && schema > STATE_SCHEMA
                {
                    return Err(HistoryError::NewerSchema {
                        path: path.display().to_string(),
                        found: schema,
                        known: STATE_SCHEMA,
                    });
                }
                serde_json::from_slice(&bytes).unwrap_or_else(|err| {
                    tracing::warn!(path = %path.display(), error = %err, "unreadable component history; starting a new one");
                    State::default()
                })
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => State::default(),
            Err(err) => return Err(io_error(&path)(err)),
        };
        Ok(History {
            dir: dir.to_owned(),
            state: Mutex::new(state),
            key: None,
            new_versions_wait: false,
            _lock: lock,
        })
    }

    /// New versions earn their traffic before they serve (the shadow
    /// stage or the canary is on): at start, new content under the
    /// configured source waits as the candidate while the recorded version
    /// serves, as it would had it arrived while the process ran.
    pub fn new_versions_wait(mut self, wait: bool) -> Self {
        self.new_versions_wait = wait;
        self
    }

    /// Signatures are checked with the key whose identity is `key`
    /// (`VerifyKey::id`): signed versions are recorded as checked with it,
    /// and only those are restored as signed.
    pub fn verified_with(mut self, key: Option<String>) -> Self {
        self.key = key;
        self
    }

    /// What to serve at start instead of the configured source
    /// (`configured`, the `--component` value, whose bytes now have
    /// `configured_digest`, or cannot be read now: none); none when the
    /// configured source serves. See the module docs for the rule. A
    /// recorded version whose bytes are missing or do not match their
    /// digest is passed over, with a warning.
    ///
    /// With `signed_only` (`--verify-key`), recorded versions whose
    /// signature was not checked are passed over too.
    pub fn restore(
        &self,
        configured: &str,
        configured_digest: Option<&str>,
        signed_only: bool,
    ) -> Option<Start> {
        let state = self.lock().clone();
        if state.configured.as_deref() != Some(configured) {
            if state.current.is_some() {
                tracing::info!(
                    configured,
                    recorded = state.configured.as_deref().unwrap_or_default(),
                    "--component changed since the last run: serving it, not the recorded version"
                );
            }
            return None;
        }
        let mut configured_waits = false;
        if configured_digest.is_none() {
            tracing::warn!(
                configured,
                "the configured component cannot be read now: serving the last accepted version"
            );
        } else if state.configured_digest.as_deref() != configured_digest {
            if !self.new_versions_wait {
                tracing::info!(
                    configured,
                    "the configured component changed since the last run: serving it, not the recorded version"
                );
                return None;
            }
            configured_waits = true;
        }
        let trusted = |entry: &&Accepted| {
            let trusted =
                !signed_only || entry.trusted_when_signatures_are_required(self.key.as_deref());
            if !trusted {
                tracing::warn!(
                    digest = entry.digest,
                    "a recorded component was not signature-checked with this --verify-key; passing it over"
                );
            }
            trusted
        };
        let recorded = state.current.as_ref().filter(trusted)?;
        let current = self.read(recorded)?;
        let previous = state
            .previous
            .as_ref()
            .filter(trusted)
            .and_then(|entry| self.read(entry));
        let candidate = state
            .candidate
            .as_ref()
            .filter(|_| !configured_waits)
            .filter(|entry| entry.digest != recorded.digest)
            .filter(trusted)
            .and_then(|entry| self.read(entry));
        tracing::info!(
            digest = recorded.digest,
            source = current.source,
            "serving the last accepted component"
        );
        Some(Start {
            current,
            previous,
            candidate,
            configured_waits,
        })
    }

    /// Records `candidate` (with its bytes) as the version waiting, or
    /// none. `configured` is the `--component` value: a candidate read
    /// from it notes what it holds now, so that a restart takes it for
    /// known, not new.
    pub fn record_candidate(
        &self,
        configured: &str,
        candidate: Option<(Accepted, &[u8])>,
    ) -> Result<(), HistoryError> {
        let mut state = self.lock();
        let mut next = state.clone();
        next.candidate = None;
        if let Some((entry, bytes)) = candidate {
            let entry = self.stamp(entry);
            self.write_blob(&entry.digest, bytes)?;
            if entry.source == configured && next.configured.as_deref() == Some(configured) {
                next.configured_digest = Some(entry.digest.clone());
            }
            next.candidate = Some(entry);
        }
        self.write_state(&mut state, next)
    }

    /// Records that `current` serves now (its `bytes` are stored unless
    /// already kept) with `previous` as the rollback target. `configured`
    /// is the `--component` value; when `current` was just read from it
    /// (`just_read`: at start, by the file watch, by following a tag; not
    /// by a rollback), what it holds is noted too.
    pub fn record(
        &self,
        configured: &str,
        current: Accepted,
        bytes: Option<&[u8]>,
        previous: Option<Accepted>,
        just_read: bool,
    ) -> Result<(), HistoryError> {
        let (current, previous) = (self.stamp(current), previous.map(|entry| self.stamp(entry)));
        let mut state = self.lock();
        if let Some(bytes) = bytes {
            self.write_blob(&current.digest, bytes)?;
        }
        let mut next = state.clone();
        if next.configured.as_deref() != Some(configured) {
            next.configured = Some(configured.to_owned());
            next.configured_digest = None;
        }
        if just_read && current.source == configured {
            next.configured_digest = Some(current.digest.clone());
        }
        // The candidate that now serves waits no more.
        if next.candidate.as_ref().map(|entry| &entry.digest) == Some(&current.digest) {
            next.candidate = None;
        }
        next.current = Some(current);
        next.previous = previous;
        self.write_state(&mut state, next)
    }

    /// Stamps a signed entry with the key it was checked with.
    fn stamp(&self, mut entry: Accepted) -> Accepted {
        entry.key = entry.signed.then(|| self.key.clone()).flatten();
        entry
    }

    /// Stores a version's bytes under their digest, unless kept already.
    fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<(), HistoryError> {
        let blob = self.blob(digest);
        if blob.exists() {
            return Ok(());
        }
        write_private(&blob, bytes).map_err(|source| HistoryError::Io {
            path: blob.display().to_string(),
            source,
        })
    }

    /// Replaces `state.json` with `next` (atomically), then `state`, and
    /// removes the blobs no longer named.
    fn write_state(&self, state: &mut State, next: State) -> Result<(), HistoryError> {
        let path = self.dir.join(STATE_FILE);
        let next = State {
            schema: STATE_SCHEMA,
            ..next
        };
        let json = serde_json::to_vec_pretty(&next).expect("the state serializes");
        write_private(&path, &json).map_err(|source| HistoryError::Io {
            path: path.display().to_string(),
            source,
        })?;
        *state = next;
        self.remove_unnamed_blobs(state);
        Ok(())
    }

    /// The recorded version serving, if any.
    pub fn current(&self) -> Option<Accepted> {
        self.lock().current.clone()
    }

    /// The recorded rollback target, if any.
    pub fn previous(&self) -> Option<Accepted> {
        self.lock().previous.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("sha256-{digest}.wasm"))
    }

    /// The bytes of a recorded version, when they are there and intact.
    fn read(&self, entry: &Accepted) -> Option<Restored> {
        let path = self.blob(&entry.digest);
        let bytes = read_private(&path)
            .map_err(|err| {
                tracing::warn!(path = %path.display(), error = %err, "a recorded component cannot be read; passing it over");
            })
            .ok()?;
        if hex_digest(&bytes) != entry.digest {
            tracing::warn!(path = %path.display(), "a recorded component does not match its digest; passing it over");
            return None;
        }
        Some(Restored {
            bytes,
            source: entry.source.clone(),
            signed: entry.signed,
        })
    }

    /// Removes the blobs the state no longer names (best effort).
    fn remove_unnamed_blobs(&self, state: &State) {
        let named: Vec<String> = [&state.current, &state.previous, &state.candidate]
            .into_iter()
            .flatten()
            .map(|entry| format!("sha256-{}.wasm", entry.digest))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("sha256-") && !named.contains(&name) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}

#[cfg(test)]
mod tests;
