//! Where the served component comes from: what `--component` names, or
//! bytes an embedder hands over. A file is watched and re-read on SIGHUP;
//! a registry reference (the `registry` feature; parsed by
//! `ComponentSource::parse`) is pulled at start, and followed when it
//! names a tag.

use std::path::PathBuf;

/// Where a component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ComponentSource {
    /// The component built from `guest/`, embedded in the library (the
    /// `embedded-component` feature).
    Embedded,
    /// A file, watched and re-read on SIGHUP.
    File(PathBuf),
    /// Bytes handed over in process, under a label of the caller's.
    Bytes {
        /// The component.
        bytes: Vec<u8>,
        /// What the admin API and the logs call it; its history is kept
        /// under it.
        label: String,
    },
    /// A component in an OCI registry.
    #[cfg(feature = "registry")]
    Oci(crate::rollout::registry::OciReference),
}

impl ComponentSource {
    /// The label a version from this source carries (its `source` in the
    /// admin API and the logs), and the value its history is kept under.
    pub fn label(&self) -> String {
        match self {
            ComponentSource::Embedded => "embedded".to_owned(),
            ComponentSource::File(path) => path.display().to_string(),
            ComponentSource::Bytes { label, .. } => label.clone(),
            #[cfg(feature = "registry")]
            ComponentSource::Oci(reference) => reference.to_string(),
        }
    }
}
