//! What `--component` names: the embedded build, a file, or a component
//! in an OCI registry (`oci://REGISTRY/REPOSITORY:TAG` or
//! `oci://REGISTRY/REPOSITORY@sha256:DIGEST`).

use crate::rollout::source::ComponentSource;
use std::fmt;
use std::path::PathBuf;

/// The scheme that marks a registry reference.
pub const OCI_SCHEME: &str = "oci://";

/// Why a reference cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{reference}: {reason}")]
pub struct InvalidReference {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ComponentSource {
    /// Reads a `--component` value: `oci://…` is a registry reference,
    /// anything else a file path; none is the embedded build.
    pub fn parse(value: Option<&str>) -> Result<Self, InvalidReference> {
        match value {
            None => Ok(ComponentSource::Embedded),
            Some(value) if value.starts_with(OCI_SCHEME) => {
                OciReference::parse(value).map(ComponentSource::Oci)
            }
            Some(value) => Ok(ComponentSource::File(PathBuf::from(value))),
        }
    }
}

/// A component in an OCI registry, named by tag or pinned by the digest
/// of its manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    reference: oci_client::Reference,
    text: String,
}

impl OciReference {
    /// Parses `oci://REGISTRY/REPOSITORY:TAG` or
    /// `oci://REGISTRY/REPOSITORY@sha256:DIGEST`. The registry must be
    /// named (there is no default registry), and so must a tag or digest.
    pub fn parse(text: &str) -> Result<Self, InvalidReference> {
        let invalid = |reason: &str| InvalidReference {
            reference: text.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = text
            .strip_prefix(OCI_SCHEME)
            .ok_or_else(|| invalid("must start with oci://"))?;
        let (registry, path) = rest
            .split_once('/')
            .ok_or_else(|| invalid("must be oci://REGISTRY/REPOSITORY:TAG or @sha256:DIGEST"))?;
        if registry.is_empty()
            || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
        {
            return Err(invalid(
                "must name its registry host (e.g. ghcr.io or 127.0.0.1:5000)",
            ));
        }
        let last = path.rsplit('/').next().unwrap_or(path);
        if !(last.contains(':') || last.contains('@')) {
            return Err(invalid(
                "must name a tag (:TAG) or a digest (@sha256:DIGEST)",
            ));
        }
        let reference: oci_client::Reference = rest
            .parse()
            .map_err(|err: oci_client::ParseError| invalid(&err.to_string()))?;
        if let Some(digest) = reference.digest() {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| invalid("only sha256 digests are accepted"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid("a sha256 digest is 64 hex digits"));
            }
        }
        Ok(OciReference {
            reference,
            text: text.to_owned(),
        })
    }

    /// The reference for oci-client.
    pub fn oci(&self) -> &oci_client::Reference {
        &self.reference
    }

    /// The registry host (with its port, if any).
    pub fn registry(&self) -> &str {
        self.reference.resolve_registry()
    }

    /// The manifest digest it is pinned to (`sha256:…`), if it is pinned.
    pub fn pinned_digest(&self) -> Option<&str> {
        self.reference.digest()
    }

    /// The tag it follows, if it names one and is not pinned.
    pub fn tag(&self) -> Option<&str> {
        self.pinned_digest()
            .is_none()
            .then(|| self.reference.tag())
            .flatten()
    }

    /// The same repository, pinned to the manifest `digest`.
    pub fn pinned_to(&self, digest: &str) -> oci_client::Reference {
        oci_client::Reference::with_digest(
            self.reference.registry().to_owned(),
            self.reference.repository().to_owned(),
            digest.to_owned(),
        )
    }

    /// Whether the registry is on this machine (`localhost`, `127.0.0.0/8`):
    /// the only registries reached over plain HTTP without
    /// `--insecure-registry`.
    pub fn is_loopback(&self) -> bool {
        let host = host_of(self.registry());
        host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `host` of `host:port` or a bare host (references name no IPv6
/// literal: their grammar has none).
fn host_of(registry: &str) -> &str {
    match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn tags_and_digests() {
        let tagged = OciReference::parse("oci://127.0.0.1:5000/keybust/endpoint:stable").unwrap();
        assert_eq!(tagged.registry(), "127.0.0.1:5000");
        assert_eq!(tagged.tag(), Some("stable"));
        assert_eq!(tagged.pinned_digest(), None);
        assert!(tagged.is_loopback());
        let pinned = OciReference::parse(&format!("oci://ghcr.io/acme/keybust@{DIGEST}")).unwrap();
        assert_eq!(pinned.pinned_digest(), Some(DIGEST));
        assert_eq!(pinned.tag(), None);
        assert!(!pinned.is_loopback());
        assert_eq!(
            pinned.to_string(),
            format!("oci://ghcr.io/acme/keybust@{DIGEST}")
        );
    }

    #[test]
    fn what_is_refused() {
        for bad in [
            "oci://keybust/endpoint:stable",
            "oci://ghcr.io/acme/keybust",
            "oci://ghcr.io",
            "oci://ghcr.io/acme/keybust@sha512:00",
            "oci://ghcr.io/acme/keybust@sha256:abc",
            "ghcr.io/acme/keybust:1",
        ] {
            assert!(OciReference::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sources() {
        assert_eq!(
            ComponentSource::parse(None).unwrap(),
            ComponentSource::Embedded
        );
        assert_eq!(
            ComponentSource::parse(Some("/srv/endpoint.wasm")).unwrap(),
            ComponentSource::File("/srv/endpoint.wasm".into())
        );
        let oci = ComponentSource::parse(Some("oci://localhost:5000/k:v1")).unwrap();
        assert_eq!(oci.label(), "oci://localhost:5000/k:v1");
        assert!(matches!(oci, ComponentSource::Oci(ref r) if r.is_loopback()));
    }

    #[test]
    fn loopback_hosts() {
        for (registry, loopback) in [
            ("localhost:5000", true),
            ("127.0.0.1", true),
            ("10.0.0.1:5000", false),
            ("registry.local:5000", false),
        ] {
            let reference = OciReference::parse(&format!("oci://{registry}/k:v")).unwrap();
            assert_eq!(reference.is_loopback(), loopback, "{registry}");
        }
    }
}
