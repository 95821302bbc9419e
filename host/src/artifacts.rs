//! Precompiled components on disk, so reloading a component seen before
//! (a rollback, a restart, a flip back and forth) skips compilation.
//!
//! An entry is `<component digest>-<engine hash>.cwasm` plus a `.sha256`
//! file holding the digest of the `.cwasm` bytes. Loading an entry checks
//! that digest before handing the bytes to wasmtime, which in turn checks
//! that they were made by a compatible engine; an entry failing either check
//! is rebuilt. The directory is created owner-only: whoever can write to it
//! can make keybust run their code.

use sha2::{Digest, Sha256};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use wasmtime::Engine;
use wasmtime::component::Component;

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
}

impl ArtifactCache {
    /// Uses `dir`, creating it owner-only if needed.
    pub fn open(dir: impl Into<PathBuf>, engine: &Engine) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let mut hasher = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut hasher);
        Ok(ArtifactCache {
            dir,
            engine_tag: format!("{:016x}", hasher.finish()),
        })
    }

    /// The directory this cache writes to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry(&self, digest: &str) -> (PathBuf, PathBuf) {
        let base = format!("{digest}-{}", self.engine_tag);
        (
            self.dir.join(format!("{base}.cwasm")),
            self.dir.join(format!("{base}.sha256")),
        )
    }

    /// The compiled component for `bytes` (whose SHA-256 is `digest`): from
    /// the cache when a verified entry exists, else compiled and stored.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        bytes: &[u8],
        digest: &str,
    ) -> wasmtime::Result<(Component, Origin)> {
        let (artifact, checksum) = self.entry(digest);
        if let Some(component) = self.load_verified(engine, &artifact, &checksum) {
            return Ok((component, Origin::Cached));
        }
        let compiled = engine.precompile_component(bytes)?;
        if let Err(err) = store(&artifact, &checksum, &compiled) {
            tracing::warn!(dir = %self.dir.display(), error = %err, "cannot write the precompiled component cache");
        }
        // SAFETY: `compiled` was produced by this engine a moment ago and
        // never left this process.
        let component = unsafe { Component::deserialize(engine, &compiled)? };
        Ok((component, Origin::Compiled))
    }

    fn load_verified(
        &self,
        engine: &Engine,
        artifact: &Path,
        checksum: &Path,
    ) -> Option<Component> {
        let bytes = std::fs::read(artifact).ok()?;
        let expected = std::fs::read_to_string(checksum).ok();
        if expected.as_deref().map(str::trim) != Some(hex_digest(&bytes).as_str()) {
            tracing::warn!(entry = %artifact.display(), "precompiled component fails its checksum; rebuilding");
            return None;
        }
        // SAFETY: the bytes are exactly those this process family wrote for
        // this digest (checked above, in a directory only our user can
        // write), and wasmtime refuses artifacts from an incompatible engine.
        match unsafe { Component::deserialize(engine, &bytes) } {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(entry = %artifact.display(), error = %format!("{err:#}"), "stale precompiled component; rebuilding");
                None
            }
        }
    }
}

/// Writes the artifact and its checksum through temporary files and
/// renames, so a reader never sees half an entry.
fn store(artifact: &Path, checksum: &Path, compiled: &[u8]) -> std::io::Result<()> {
    let tmp = artifact.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, compiled)?;
    std::fs::rename(&tmp, artifact)?;
    let tmp = checksum.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, hex_digest(compiled))?;
    std::fs::rename(&tmp, checksum)
}

/// Lower-case hex SHA-256 of `bytes`: how components are named everywhere
/// (the admin API, metrics, logs, and the entries of this cache).
pub fn hex_digest(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The default cache directory: `$XDG_CACHE_HOME/keybust` or its platform equivalent.
pub fn default_dir() -> Option<PathBuf> {
    dirs::cache_dir().map(|dir| dir.join("keybust"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The component the host embeds (the same bytes as
    /// `plugin::EMBEDDED_COMPONENT`).
    static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("KEYBUST_GUEST_WASM"));

    fn setup() -> (tempfile::TempDir, Engine, ArtifactCache, String) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::default();
        let cache = ArtifactCache::open(dir.path(), &engine).unwrap();
        (dir, engine, cache, hex_digest(EMBEDDED_COMPONENT))
    }

    #[test]
    fn second_load_comes_from_the_cache() {
        let (_dir, engine, cache, digest) = setup();
        let (_, origin) = cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Compiled);
        let (_, origin) = cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Cached);
    }

    #[test]
    fn corrupt_entry_is_rebuilt() {
        let (_dir, engine, cache, digest) = setup();
        cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        let (artifact, _) = cache.entry(&digest);
        let mut bytes = std::fs::read(&artifact).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0xff;
        std::fs::write(&artifact, bytes).unwrap();
        let (_, origin) = cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Compiled);
        let (_, origin) = cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Cached);
    }

    #[test]
    fn stale_entry_with_a_valid_checksum_is_rebuilt() {
        let (_dir, engine, cache, digest) = setup();
        let (artifact, checksum) = cache.entry(&digest);
        // Right checksum, but not something this engine produced.
        let bogus = b"\x7fELF not a wasmtime artifact".to_vec();
        store(&artifact, &checksum, &bogus).unwrap();
        let (_, origin) = cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Compiled);
    }

    #[test]
    fn another_engine_configuration_gets_its_own_entries() {
        let (dir, engine, cache, digest) = setup();
        cache
            .load_or_compile(&engine, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        let mut config = wasmtime::Config::new();
        config.cranelift_opt_level(wasmtime::OptLevel::None);
        let other = Engine::new(&config).unwrap();
        let other_cache = ArtifactCache::open(dir.path(), &other).unwrap();
        let (_, origin) = other_cache
            .load_or_compile(&other, EMBEDDED_COMPONENT, &digest)
            .unwrap();
        assert_eq!(origin, Origin::Compiled);
    }
}
