//! Precompiled components on disk, so reloading a component seen before
//! (a rollback, a restart, a flip back and forth) skips compilation.
//!
//! An entry is `<component digest>-<engine hash>.cwasm` plus a `.mac` file
//! holding its HMAC. Loading an entry checks, before wasmtime sees a byte,
//! that the directory and the entry are this user's alone and that the MAC
//! verifies under the [`ArtifactKey`] (`trust.rs` says why); wasmtime then
//! checks that the code was made by a compatible engine. An entry failing
//! any check is rebuilt. The cache keeps to a size bound by removing the
//! entries used least recently.

mod trust;

pub use self::trust::{ArtifactKey, default_key_path};

use crate::private_files::{check_owned, create_private_dir, read_private, write_private};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::SystemTime;
use wasmtime::Engine;
use wasmtime::component::Component;

/// How large the cache may grow by default before old entries go.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// Whether a component came from the cache or was compiled just now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Deserialized from a verified cache entry.
    Cached,
    /// Compiled (and, when possible, written to the cache).
    Compiled,
}

/// A directory of precompiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    dir: PathBuf,
    engine_tag: String,
    key: ArtifactKey,
    max_bytes: u64,
}

impl ArtifactCache {
    /// Uses `dir`, creating it owner-only if needed, with entries
    /// authenticated by `key`. A directory that another user owns or may
    /// write to is refused.
    pub fn open(
        dir: impl Into<PathBuf>,
        key: ArtifactKey,
        engine: &Engine,
    ) -> std::io::Result<Self> {
        let dir = dir.into();
        create_private_dir(&dir)?;
        check_owned(&dir, true)?;
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
            key,
            max_bytes: DEFAULT_MAX_BYTES,
        })
    }

    /// Keeps the entries within `max_bytes`, removing the least recently
    /// used first.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    /// The directory this cache writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, digest: &str) -> Entry {
        let name = format!("{digest}-{}", self.engine_tag);
        Entry {
            artifact: self.dir.join(format!("{name}.cwasm")),
            mac: self.dir.join(format!("{name}.mac")),
            name,
        }
    }

    /// The compiled component for `bytes` (whose SHA-256 is `digest`): from
    /// the cache when a verified entry exists, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, Origin)> {
        let entry = self.entry(digest);
        if let Some(component) = self.load_verified(engine, &entry) {
            return Ok((component, Origin::Cached));
        }
        let compiled = engine.precompile_component(bytes)?;
        match self.store(&entry, &compiled) {
            Ok(()) => self.evict(),
            Err(err) => {
                tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write the precompiled component cache")
            }
        }
        // SAFETY: `compiled` was produced by this engine a moment ago and
        // never left this process.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, Origin::Compiled))
    }

    fn load_verified(&self, engine: &Engine, entry: &Entry) -> Option<Component> {
        if !entry.artifact.exists() {
            return None;
        }
        let read = check_owned(&self.dir, true)
            .and_then(|()| Ok((read_private(&entry.artifact)?, read_private(&entry.mac)?)));
        let (bytes, tag) = match read {
            Ok(read) => read,
            Err(err) => {
                tracing::warn!(error = %err, "untrusted precompiled component; rebuilding");
                return None;
            }
        };
        if !self.key.verify(&entry.name, &bytes, &tag) {
            tracing::warn!(entry = %entry.artifact.display(), "precompiled component fails its MAC; rebuilding");
            return None;
        }
        // SAFETY: the bytes carry a MAC that only a holder of this cache's
        // key can make, in a directory and files that only this user can
        // write (both checked above); wasmtime itself refuses code made
        // by an incompatible engine.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => {
                // Mark it used, for the least-recently-used eviction.
                if let Ok(file) = std::fs::File::options().write(true).open(&entry.artifact) {
                    let _ = file.set_modified(SystemTime::now());
                }
                Some(component)
            }
            Err(err) => {
                tracing::warn!(entry = %entry.artifact.display(), error = %format!("{err:#}"), "stale precompiled component; rebuilding");
                None
            }
        }
    }

    /// Writes the artifact and its MAC through temporary files and
    /// renames, so a reader never sees half an entry; the MAC goes last.
    fn store(&self, entry: &Entry, compiled: &[u8]) -> std::io::Result<()> {
        write_private(&entry.artifact, compiled)?;
        write_private(&entry.mac, &self.key.sign(&entry.name, compiled))
    }

    /// Removes the least recently used entries until the rest fit in the
    /// size bound.
    fn evict(&self) {
        let Ok(listing) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut entries: Vec<(SystemTime, u64, PathBuf)> = listing
            .filter_map(Result::ok)
            .filter(|item| item.path().extension().is_some_and(|ext| ext == "cwasm"))
            .filter_map(|item| {
                let meta = item.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), item.path()))
            })
            .collect();
        let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
        entries.sort();
        for (_, len, artifact) in entries {
            if total <= self.max_bytes {
                break;
            }
            let _ = std::fs::remove_file(artifact.with_extension("mac"));
            if std::fs::remove_file(&artifact).is_ok() {
                tracing::info!(entry = %artifact.display(), "evicted from the precompiled component cache");
                total -= len;
            }
        }
    }
}

/// One cache entry's files and the name its MAC covers.
struct Entry {
    name: String,
    artifact: PathBuf,
    mac: PathBuf,
}

/// The default cache directory: `$XDG_CACHE_HOME/keybust` or its platform equivalent.
pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("keybust"))
}

#[cfg(all(test, feature = "embedded-component"))]
mod tests {
    use super::*;
    use crate::digest::hex_digest;

    /// The component the host embeds (the same bytes as
    /// `plugin::EMBEDDED_COMPONENT`).
    static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("KEYBUST_GUEST_WASM"));

    fn setup() -> (tempfile::TempDir, Engine, ArtifactCache, String) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = open(dir.path().join("cache"), &engine);
        (dir, engine, cache, hex_digest(EMBEDDED_COMPONENT))
    }

    fn open(dir: PathBuf, engine: &Engine) -> ArtifactCache {
        let key =
            ArtifactKey::load_or_create(&dir.with_file_name("state").join("artifact.key")).unwrap();
        ArtifactCache::open(dir, key, engine).unwrap()
    }

    fn load(cache: &ArtifactCache, engine: &Engine, digest: &str) -> Origin {
        cache
            .load_or_compile(engine, EMBEDDED_COMPONENT, digest)
            .unwrap()
            .1
    }

    #[test]
    fn second_load_comes_from_the_cache() {
        let (_dir, engine, cache, digest) = setup();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        assert_eq!(load(&cache, &engine, &digest), Origin::Cached);
        // Another process with the same key file trusts the entry too.
        let again = open(cache.dir().to_path_buf(), &engine);
        assert_eq!(load(&again, &engine, &digest), Origin::Cached);
    }

    #[test]
    fn corrupt_entry_is_rebuilt() {
        let (_dir, engine, cache, digest) = setup();
        load(&cache, &engine, &digest);
        let entry = cache.entry(&digest);
        let mut bytes = std::fs::read(&entry.artifact).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        write_private(&entry.artifact, &bytes).unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        assert_eq!(load(&cache, &engine, &digest), Origin::Cached);
    }

    /// Whoever can write the cache directory can recompute a checksum; the
    /// entry planted here is real code for this engine, under the
    /// embedded component's name, with a MAC made under another key.
    #[test]
    fn a_planted_entry_is_rebuilt() {
        let (_dir, engine, cache, digest) = setup();
        let entry = cache.entry(&digest);
        // An empty component: the preamble alone.
        let planted = engine
            .precompile_component(b"\0asm\x0d\x00\x01\x00")
            .unwrap();
        let forger = ArtifactKey::ephemeral().unwrap();
        write_private(&entry.artifact, &planted).unwrap();
        write_private(&entry.mac, &forger.sign(&entry.name, &planted)).unwrap();
        std::fs::write(
            entry.artifact.with_extension("sha256"),
            hex_digest(&planted),
        )
        .unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        let rebuilt = std::fs::read(&entry.artifact).unwrap();
        assert_ne!(rebuilt, planted);
    }

    #[cfg(unix)]
    #[test]
    fn entries_others_may_write_or_that_are_links_are_not_used() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, engine, cache, digest) = setup();
        load(&cache, &engine, &digest);
        let entry = cache.entry(&digest);
        std::fs::set_permissions(&entry.artifact, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        // Rebuilt owner-only: trusted again.
        assert_eq!(load(&cache, &engine, &digest), Origin::Cached);
        let elsewhere = dir.path().join("elsewhere.cwasm");
        std::fs::rename(&entry.artifact, &elsewhere).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &entry.artifact).unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        std::fs::set_permissions(cache.dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        let key = ArtifactKey::ephemeral().unwrap();
        assert!(ArtifactCache::open(cache.dir(), key, &engine).is_err());
    }

    #[test]
    fn stale_entry_with_a_valid_mac_is_rebuilt() {
        let (_dir, engine, cache, digest) = setup();
        let entry = cache.entry(&digest);
        // A valid MAC, but not something this engine produced.
        cache
            .store(&entry, b"\x7fELF not a wasmtime artifact")
            .unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
    }

    #[test]
    fn the_cache_keeps_to_its_size_bound() {
        let (_dir, engine, cache, digest) = setup();
        load(&cache, &engine, &digest);
        let one_entry = std::fs::metadata(cache.entry(&digest).artifact)
            .unwrap()
            .len();
        let cache = cache.with_max_bytes(one_entry);
        // An older entry of another component, then the embedded one again.
        let old = cache.entry(&"0".repeat(64));
        cache.store(&old, b"an old entry").unwrap();
        let past = SystemTime::now() - std::time::Duration::from_secs(3600);
        std::fs::File::options()
            .write(true)
            .open(&old.artifact)
            .unwrap()
            .set_modified(past)
            .unwrap();
        std::fs::remove_file(cache.entry(&digest).artifact).unwrap();
        assert_eq!(load(&cache, &engine, &digest), Origin::Compiled);
        assert!(!old.artifact.exists() && !old.mac.exists());
        assert!(cache.entry(&digest).artifact.exists());
    }

    #[test]
    fn another_engine_configuration_gets_its_own_entries() {
        let (_dir, engine, cache, digest) = setup();
        load(&cache, &engine, &digest);
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        let other_cache = open(cache.dir().to_path_buf(), &other);
        assert_eq!(load(&other_cache, &other, &digest), Origin::Compiled);
    }
}
