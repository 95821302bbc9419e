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

use super::read::{ReadError, Reader};
use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use std::path::Path;

/// The most signatures looked at in one layout, for one digest.
const MAX_SIGNATURES: usize = 32;

/// The annotation naming the tag a signature is for.
const TAG_ANNOTATION: &str = "tag";

/// The annotation saying when a signature was made (RFC 3339, UTC).
const SIGNED_AT_ANNOTATION: &str = "signed-at";

/// What a signature says beside the digest, in its annotations (as
/// `cosign sign -a tag=stable -a signed-at=…` writes them): the tag the
/// digest is signed for, and when. keybust writes both. A pull through a
/// tag under `--verify-key` takes a version only through a signature for
/// that tag, so that moving a tag to a version signed for another one
/// (a canary, an old branch) is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claims {
    /// The tag the digest is signed for.
    pub tag: Option<String>,
    /// When it was signed (RFC 3339): later signatures order after
    /// earlier ones.
    pub signed_at: Option<String>,
}

impl Claims {
    /// The claims of a signature made now, for `tag`.
    fn now(tag: Option<&str>) -> Self {
        Claims {
            tag: tag.map(str::to_owned),
            signed_at: Some(
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ),
        }
    }

    /// As JSON annotations (the payload's `optional`, the statement
    /// subject's `annotations`); `None` when there are none.
    fn to_json(&self) -> Option<serde_json::Map<String, serde_json::Value>> {
        let annotations: serde_json::Map<String, serde_json::Value> = [
            (TAG_ANNOTATION, &self.tag),
            (SIGNED_AT_ANNOTATION, &self.signed_at),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some((key.to_owned(), value.clone()?.into())))
        .collect();
        (!annotations.is_empty()).then_some(annotations)
    }

    /// Read from JSON annotations; others, and values that are not
    /// strings, are passed over.
    fn from_json(annotations: Option<serde_json::Map<String, serde_json::Value>>) -> Self {
        let mut claims = Claims::default();
        for (key, value) in annotations.unwrap_or_default() {
            let serde_json::Value::String(value) = value else {
                continue;
            };
            match key.as_str() {
                TAG_ANNOTATION => claims.tag = Some(value),
                SIGNED_AT_ANNOTATION => claims.signed_at = Some(value),
                _ => {}
            }
        }
        claims
    }

    /// When it was signed, as a time, when it says so readably.
    fn signed_at_time(&self) -> Option<std::time::SystemTime> {
        humantime::parse_rfc3339_weak(self.signed_at.as_deref()?).ok()
    }
}

/// `read`'s value, where only the registry's fault is an error: a body
/// past its bound, or not matching its digest, is no signature and is
/// passed over (`None`).
fn passed_over<T>(
    read: Result<T, ReadError>,
    what: &'static str,
) -> Result<Option<T>, SignatureError> {
    match read {
        Ok(value) => Ok(Some(value)),
        Err(ReadError::Registry(source)) => Err(SignatureError::Registry { what, source }),
        Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => Ok(None),
    }
}

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
    /// Signatures by the key over the digest are there, and none is for
    /// the tag it was pulled through.
    #[error(
        "signed by --verify-key over {digest}, but not for the tag {tag}: sign it for {tag} \
         (keybust component sign oci://…:{tag}, or cosign sign -a tag={tag})"
    )]
    OtherTag {
        /// The manifest digest.
        digest: String,
        /// The tag pulled through.
        tag: String,
    },
    /// Signed for the tag, but before the newest version already taken
    /// through it: a rollback by moving the tag back.
    #[error(
        "{digest} was signed at {signed_at}, before {newest}, when the newest version taken \
         through this tag was signed: moving the tag back is refused; an operator can force \
         it with PUT /admin/component {{\"reference\": …, \"allow_older\": true}}"
    )]
    Older {
        /// The manifest digest.
        digest: String,
        /// When it was signed.
        signed_at: String,
        /// When the newest version taken through the tag was signed.
        newest: String,
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
/// `image`'s repository, in either layout, and, for a pull through `tag`,
/// that one is for that tag; returns the claims of the latest such.
/// Signatures by other keys, over other digests, or of other kinds are
/// passed over; a version whose only signatures are such is refused, and
/// one with none at all is "not signed (yet)". A registry that cannot be
/// asked is worth another try.
pub(super) async fn verify(
    reader: &Reader,
    image: &Reference,
    digest: &str,
    key: &VerifyKey,
    tag: Option<&str>,
) -> Result<Claims, SignatureError> {
    let bundles = bundle::verify(reader, digest, key).await;
    let legacy = legacy::verify(reader, image, digest, key).await;
    let mut valid = Vec::new();
    let (bundles, legacy) = match (bundles, legacy) {
        (Ok(found), Ok(more)) => {
            valid.extend(found);
            valid.extend(more);
            (None, None)
        }
        (Ok(found), Err(err)) => {
            valid.extend(found);
            (None, Some(err))
        }
        (Err(err), Ok(found)) => {
            valid.extend(found);
            (Some(err), None)
        }
        (Err(bundles), Err(legacy)) => (Some(bundles), Some(legacy)),
    };
    if !valid.is_empty() {
        return valid
            .into_iter()
            .filter(|claims| tag.is_none_or(|tag| claims.tag.as_deref() == Some(tag)))
            .max_by_key(Claims::signed_at_time)
            .ok_or_else(|| SignatureError::OtherTag {
                digest: digest.to_owned(),
                tag: tag.unwrap_or_default().to_owned(),
            });
    }
    let not_signed = || SignatureError::NotSigned {
        digest: digest.to_owned(),
    };
    let (bundles, legacy) = (
        bundles.unwrap_or_else(not_signed),
        legacy.unwrap_or_else(not_signed),
    );
    Err(match (bundles, legacy) {
        (_, err @ SignatureError::Registry { .. }) => err,
        (err @ SignatureError::Registry { .. }, SignatureError::NotSigned { .. }) => err,
        (SignatureError::NotSigned { .. }, err) => err,
        (err, _) => err,
    })
}

/// Signs the manifest `subject` in `image`'s repository with `key`, in
/// both layouts (see the module docs), for the tag `image` names.
pub(super) async fn sign(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reader: &Reader,
    image: &Reference,
    subject: &Subject<'_>,
    key: &SigningKey,
) -> Result<(), SignatureError> {
    let claims = Claims::now(image.tag());
    bundle::attach(client, auth, reader, image, subject, key, &claims).await?;
    legacy::sign(client, auth, reader, image, subject.digest, key, &claims).await
}
