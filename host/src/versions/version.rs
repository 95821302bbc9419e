//! What one version of the component is: its compiled plugin, and where
//! its bytes came from. Shared by the slot that serves versions and the
//! candidate that waits to.

use crate::runtime::plugin::Plugin;
use std::time::SystemTime;

/// One loaded version of the component.
pub struct Version {
    /// The compiled, pre-instantiated component.
    pub plugin: Plugin,
    /// Where its bytes came from: `embedded`, a file path, or `admin`.
    pub source: String,
    /// When it was loaded.
    pub loaded_at: SystemTime,
    /// Whether it was pulled with its signature checked (`--verify-key`):
    /// only such versions (and the embedded one) are restored from the
    /// history when signatures are required.
    pub signed: bool,
}

impl Version {
    /// SHA-256 of the component's bytes.
    pub fn digest(&self) -> &str {
        self.plugin.digest()
    }
}

/// What is known about a version's bytes besides the bytes themselves:
/// where they came from, and whether their signature was checked on the
/// way in. It travels with the bytes into the slot, the history and the
/// admin API, so no call needs a twin that differs by one flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Its label: `embedded`, a file path, `admin`, an `oci://` reference.
    pub source: String,
    /// Whether they were pulled with their cosign signature checked
    /// (`--verify-key`): when signatures are required, only such versions
    /// (and the embedded one) are restored from the history.
    pub signed: bool,
}

impl Provenance {
    /// Bytes nobody checked a signature of: a file, an upload, the
    /// embedded build.
    pub fn unchecked(source: impl Into<String>) -> Self {
        Provenance {
            source: source.into(),
            signed: false,
        }
    }

    /// Bytes as `signed` says: pulled with their signature checked, or not.
    pub fn checked(source: impl Into<String>, signed: bool) -> Self {
        Provenance {
            source: source.into(),
            signed,
        }
    }
}
