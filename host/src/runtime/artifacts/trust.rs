//! Whether a file in the artifact cache may be trusted with native code.
//!
//! A precompiled component is machine code that keybust maps and runs in
//! the process that holds every secret. An entry is used only when:
//! * the directory and the entry belong to this process's user, are
//!   writable by nobody else, and are not symbolic links
//!   ([`crate::private_files::check_owned`]);
//! * its HMAC-SHA256, keyed by an [`ArtifactKey`] kept outside the cache
//!   directory, matches: a checksum alone can be recomputed by whoever
//!   plants an entry, a MAC cannot without the key.

use crate::private_files::{check_owned, create_private, create_private_dir, read_private};
use aws_lc_rs::hmac;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The secret that authenticates cache entries; see the module docs.
#[derive(Clone)]
pub struct ArtifactKey(hmac::Key);

impl std::fmt::Debug for ArtifactKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArtifactKey(..)")
    }
}

/// Bytes in a key file.
const KEY_BYTES: usize = 32;

impl ArtifactKey {
    /// Reads the key in `path`, or creates it (owner-only, `0600`) with
    /// fresh random bytes. The file and its directory must pass
    /// `check_owned`: a key others can write is no key.
    pub fn load_or_create(path: &Path) -> io::Result<Self> {
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            create_private_dir(dir)?;
            check_owned(dir, true)?;
        }
        let bytes = match read_private(path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => create_key_file(path)?,
            Err(err) => return Err(err),
        };
        if bytes.len() != KEY_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a keybust artifact key", path.display()),
            ));
        }
        Ok(ArtifactKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// A key for this process alone: entries written by other processes
    /// do not verify and are rebuilt.
    pub fn ephemeral() -> io::Result<Self> {
        let mut bytes = [0u8; KEY_BYTES];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("no system randomness"))?;
        Ok(ArtifactKey(hmac::Key::new(hmac::HMAC_SHA256, &bytes)))
    }

    /// The MAC of an entry: its name and its bytes, so an entry cannot be
    /// moved to another name either.
    pub(super) fn sign(&self, name: &str, bytes: &[u8]) -> Vec<u8> {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(name.as_bytes());
        context.update(&[0]);
        context.update(bytes);
        context.sign().as_ref().to_vec()
    }

    /// Whether `tag` is the MAC of this entry (compared in constant time).
    pub(super) fn verify(&self, name: &str, bytes: &[u8], tag: &[u8]) -> bool {
        let mut message = Vec::with_capacity(name.len() + 1 + bytes.len());
        message.extend_from_slice(name.as_bytes());
        message.push(0);
        message.extend_from_slice(bytes);
        hmac::verify(&self.0, &message, tag).is_ok()
    }
}

/// Creates the key file with fresh bytes, or reads the one another
/// process created first. The key is written whole under a name of this
/// process's own and then linked into place, which fails if the name is
/// taken: a process that loses the race reads a complete key, never the
/// winner's half-written one.
fn create_key_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; KEY_BYTES];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("no system randomness"))?;
    let mut nonce = [0u8; 8];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| io::Error::other("no system randomness"))?;
    let tmp = path.with_extension(format!(
        "new{}-{}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    let mut file = create_private(&tmp)?;
    let written = file
        .write_all(&bytes)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::hard_link(&tmp, path));
    drop(file);
    let _ = fs::remove_file(&tmp);
    match written {
        Ok(()) => Ok(bytes),
        // Another process linked its key first: use theirs.
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => read_private(path),
        Err(err) => Err(err),
    }
}

/// The default place for the key: the user's state directory
/// (`$XDG_STATE_HOME/keybust`, else the local data directory), which is
/// not the cache directory.
pub fn default_key_path() -> Option<PathBuf> {
    dirs::state_dir()
        .or_else(dirs::data_local_dir)
        .map(|dir| dir.join("keybust").join("artifact.key"))
}

#[cfg(test)]
mod tests {
    use super::ArtifactKey;

    /// Processes that start together on a fresh machine all create the key
    /// at once: each gets a key, and all get the same one.
    #[test]
    fn creating_the_key_at_once_gives_everyone_the_same_whole_key() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state").join("artifact.key");
            let keys: Vec<_> = std::thread::scope(|scope| {
                let racers: Vec<_> = (0..8)
                    .map(|_| scope.spawn(|| ArtifactKey::load_or_create(&path)))
                    .collect();
                racers
                    .into_iter()
                    .map(|racer| racer.join().unwrap())
                    .collect()
            });
            let tags: Vec<Vec<u8>> = keys
                .into_iter()
                .map(|key| {
                    key.unwrap_or_else(|err| panic!("round {round}: {err}"))
                        .sign("entry", b"bytes")
                })
                .collect();
            assert!(
                tags.windows(2).all(|pair| pair[0] == pair[1]),
                "round {round}"
            );
            let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
                .unwrap()
                .map(|entry| entry.unwrap().file_name())
                .collect();
            assert_eq!(left, ["artifact.key"], "round {round}");
        }
    }
}
