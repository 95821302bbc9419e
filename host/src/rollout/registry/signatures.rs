//! Cosign signatures over a component's manifest digest, stored the way
//! `cosign sign --key` stores them: an image tagged
//! `sha256-<digest>.sig` in the same repository, whose layers are
//! simple-signing payloads naming the digest, each with its signature in an
//! annotation. Verified and made with the `sigstore` crate, against a
//! public key (ECDSA P-256 or Ed25519); there is no keyless flow.

use crate::config::Secret;
use sigstore::cosign::constraint::PrivateKeySigner;
use sigstore::cosign::verification_constraint::{PublicKeyVerifier, VerificationConstraintVec};
use sigstore::cosign::{Constraint, CosignCapabilities, SignatureLayer};
use sigstore::crypto::SigningScheme;
use sigstore::registry::{Auth, ClientConfig, ClientProtocol};
use std::path::Path;
use zeroize::Zeroizing;

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
    /// The registry could not be asked for signatures, or refused one.
    #[error("signatures: {0}")]
    Registry(String),
    /// No signature made with the key names the digest.
    #[error("no valid signature by --verify-key over {digest}")]
    Unsigned {
        /// The manifest digest.
        digest: String,
    },
    /// The registry holds no signature over the digest at all: the
    /// version was pushed and is not signed (yet).
    #[error("no valid signature by --verify-key over {digest}: it has no signature")]
    NotSigned {
        /// The manifest digest.
        digest: String,
    },
    /// No signature could be read at all: the component is unsigned, or
    /// the signature image could not be fetched (sigstore does not say
    /// which; [`crate::rollout::registry::Registry`] asks the registry).
    #[error("no signature could be read over {digest}")]
    NoneRead {
        /// The manifest digest.
        digest: String,
    },
}

/// The public key components must be signed with (`--verify-key`).
#[derive(Clone)]
pub struct VerifyKey {
    pem: Vec<u8>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerifyKey(..)")
    }
}

impl VerifyKey {
    /// Reads a PEM public key (`cosign.pub`: ECDSA P-256 or Ed25519),
    /// refusing one that cannot verify.
    pub fn load(path: &Path) -> Result<Self, SignatureError> {
        let key_error = |reason: String| SignatureError::Key {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|err| key_error(err.to_string()))?;
        PublicKeyVerifier::try_from(&pem[..])
            .map_err(|err| key_error(format!("not a usable public key: {err}")))?;
        Ok(VerifyKey { pem })
    }

    /// Checks that a signature made with this key names the manifest
    /// `digest` of `repository` in `registry`.
    pub async fn verify(
        &self,
        protocol: ClientProtocol,
        auth: Auth,
        registry: &str,
        repository: &str,
        digest: &str,
    ) -> Result<(), SignatureError> {
        let verifier =
            PublicKeyVerifier::try_from(&self.pem[..]).map_err(|err| SignatureError::Key {
                path: "--verify-key".into(),
                reason: err.to_string(),
            })?;
        let mut client = cosign_client(protocol)?;
        let image = sigstore::registry::OciReference::with_digest(
            registry.to_owned(),
            repository.to_owned(),
            digest.to_owned(),
        );
        let layers = client
            .trusted_signature_layers(&auth, &image)
            .await
            .map_err(|err| SignatureError::Registry(err.to_string()))?;
        if layers.is_empty() {
            return Err(SignatureError::NoneRead {
                digest: digest.to_owned(),
            });
        }
        let constraints: VerificationConstraintVec = vec![Box::new(verifier)];
        sigstore::cosign::verify_constraints(&layers, constraints.iter()).map_err(|_| {
            SignatureError::Unsigned {
                digest: digest.to_owned(),
            }
        })
    }
}

/// Signs the manifest `digest` of `repository` in `registry` with the
/// private key in `key` (PKCS#8 PEM, or a cosign key encrypted with
/// `password`), and pushes the signature beside it.
pub async fn sign(
    protocol: ClientProtocol,
    auth: Auth,
    registry: &str,
    repository: &str,
    digest: &str,
    key: &Path,
    password: Option<&Secret>,
) -> Result<(), SignatureError> {
    let key_error = |reason: String| SignatureError::Key {
        path: key.display().to_string(),
        reason,
    };
    let raw = Zeroizing::new(std::fs::read(key).map_err(|err| key_error(err.to_string()))?);
    let password =
        Zeroizing::new(password.map_or_else(Vec::new, |p| p.expose().as_bytes().to_vec()));
    // The key's type decides the scheme: P-256 (cosign's default), else Ed25519.
    let signer = [
        SigningScheme::ECDSA_P256_SHA256_ASN1,
        SigningScheme::ED25519,
    ]
    .iter()
    .find_map(|scheme| PrivateKeySigner::new_with_raw(raw.clone(), password.clone(), scheme).ok())
    .ok_or_else(|| {
        key_error("not an ECDSA P-256 or Ed25519 private key (or the password is wrong)".into())
    })?;
    let image = sigstore::registry::OciReference::with_digest(
        registry.to_owned(),
        repository.to_owned(),
        digest.to_owned(),
    );
    let mut layer = SignatureLayer::new_unsigned(&image, digest)
        .map_err(|err| SignatureError::Registry(err.to_string()))?;
    signer
        .add_constraint(&mut layer)
        .map_err(|err| key_error(err.to_string()))?;
    let mut client = cosign_client(protocol)?;
    let (signature_image, _) = client
        .triangulate(&image, &auth)
        .await
        .map_err(|err| SignatureError::Registry(err.to_string()))?;
    client
        .push_signature(None, &auth, &signature_image, vec![layer])
        .await
        .map_err(|err| SignatureError::Registry(err.to_string()))?;
    Ok(())
}

fn cosign_client(protocol: ClientProtocol) -> Result<sigstore::cosign::Client, SignatureError> {
    sigstore::cosign::ClientBuilder::default()
        .with_oci_client_config(ClientConfig {
            protocol,
            ..ClientConfig::default()
        })
        .build()
        .map_err(|err| SignatureError::Registry(err.to_string()))
}
