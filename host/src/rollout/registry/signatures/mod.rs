//! Cosign signatures over a component's manifest digest, read and written
//! in both of cosign's layouts:
//!
//! - [`bundle`]: a Sigstore bundle attached to the manifest through the
//!   OCI referrers API (or its fallback tag), what `cosign sign --key`
//!   writes since cosign 3;
//! - [`legacy`]: the `sha256-<digest>.sig` image, what cosign wrote
//!   before, and what keybust releases before bundles read.
//!
//! A version is signed when either layout holds a signature by the key
//! over its digest. keybust signs in both, so that cosign of either age
//! and every keybust instance of a fleet being upgraded read its
//! signatures.
//!
//! Checked and made against a key pair ([`keys`]): no keyless flow, no
//! certificate, no transparency log. Signatures are read and written with
//! the same oci-client, credentials, plain-HTTP rule and timeout as the
//! component itself.

mod bundle;
mod keys;
mod legacy;
mod payload;

pub use self::keys::{SigningKey, VerifyKey};

use super::read::Reader;
use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use std::path::Path;

/// The most signatures looked at in one layout, for one digest.
const MAX_SIGNATURES: usize = 32;

/// The component manifest a signature is over.
pub(super) struct Subject<'a> {
    /// Its digest (`sha256:…`), computed over `bytes`.
    pub digest: &'a str,
    /// Its bytes, as uploaded or fetched (a bundle names their size).
    pub bytes: &'a [u8],
}

/// Why a signature check or a signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// The key file cannot be read or used.
    #[error("{path}: {reason}")]
    Key {
        /// The key file.
        path: String,
        /// Why (never the key).
        reason: String,
    },
    /// The registry could not be asked for the signature image, or would
    /// not take one: worth another try.
    #[error("signatures: {what}: {source}")]
    Registry {
        /// What was being done.
        what: &'static str,
        /// What oci-client reports.
        source: OciDistributionError,
    },
    /// A signature image is there, and nothing in it is a signature by
    /// the key over the digest: signed by another key, over another
    /// digest, or malformed.
    #[error("no valid signature by --verify-key over {digest}")]
    Unsigned {
        /// The manifest digest.
        digest: String,
    },
    /// The registry holds no signature image for the digest at all: the
    /// version was pushed and is not signed (yet).
    #[error("no valid signature by --verify-key over {digest}: it has no signature")]
    NotSigned {
        /// The manifest digest.
        digest: String,
    },
    /// What the registry holds where a signature goes is not what cosign
    /// writes there: a signature cannot be added beside it.
    #[error("signatures: {what}")]
    InTheWay {
        /// What is in the way.
        what: String,
    },
}

impl VerifyKey {
    /// Reads `cosign.pub` (`--verify-key`).
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let text = std::fs::read(path).map_err(|err| key_error(path, err.to_string()))?;
        Self::from_pem(&text).map_err(|reason| key_error(path, reason))
    }
}

impl SigningKey {
    /// Reads a private key (`--sign-key`), decrypting a cosign key with
    /// `password` (`COSIGN_PASSWORD`).
    pub fn load(
        path: &Path,
        password: Option<&crate::config::Secret>,
    ) -> Result<Self, SignatureError> {
        let text = zeroize::Zeroizing::new(
            std::fs::read(path).map_err(|err| key_error(path, err.to_string()))?,
        );
        Self::from_pem(&text, password.map(|p| p.expose().as_bytes()))
            .map_err(|reason| key_error(path, reason))
    }
}

fn key_error(path: &Path, reason: String) -> SignatureError {
    SignatureError::Key {
        path: path.display().to_string(),
        reason,
    }
}

/// Checks that a signature by `key` over the manifest `digest` is in
/// `image`'s repository, in either layout. Signatures by other keys, over
/// other digests, or of other kinds are passed over; a version whose only
/// signatures are such is refused, and one with none at all is "not
/// signed (yet)". A registry that cannot be asked is worth another try.
pub(super) async fn verify(
    reader: &Reader,
    image: &Reference,
    digest: &str,
    key: &VerifyKey,
) -> Result<(), SignatureError> {
    let bundles = match bundle::verify(reader, digest, key).await {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    let legacy = match legacy::verify(reader, image, digest, key).await {
        Ok(()) => return Ok(()),
        Err(err) => err,
    };
    Err(match (bundles, legacy) {
        (_, err @ SignatureError::Registry { .. }) => err,
        (err @ SignatureError::Registry { .. }, SignatureError::NotSigned { .. }) => err,
        (SignatureError::NotSigned { .. }, err) => err,
        (err, _) => err,
    })
}

/// Signs the manifest `subject` in `image`'s repository with `key`, in
/// both layouts (see the module docs).
pub(super) async fn sign(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reader: &Reader,
    image: &Reference,
    subject: &Subject<'_>,
    key: &SigningKey,
) -> Result<(), SignatureError> {
    bundle::attach(client, auth, reader, image, subject, key).await?;
    legacy::sign(client, auth, reader, image, subject.digest, key).await
}
