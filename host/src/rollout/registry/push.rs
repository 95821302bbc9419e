//! Publishing: a component pushed in the wasm artifact layout, and cosign
//! signatures pushed beside what a tag names.

use super::{OciReference, signatures};
use super::{Pushed, Registry, RegistryError, layout};
use crate::config::Secret;
use crate::digest::hex_digest;
use oci_client::secrets::RegistryAuth;

impl Registry {
    /// Signs the manifest `reference` names now (its tag resolved once)
    /// with `key` and its password, and pushes the signature beside it:
    /// for a version published unsigned. Returns the digest signed.
    pub async fn sign(
        &self,
        reference: &OciReference,
        key: &std::path::Path,
        password: Option<&Secret>,
    ) -> Result<String, RegistryError> {
        let digest = self.resolve(reference).await?;
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            self.sign_digest(reference, &auth, &digest, key, password)
                .await
        })
        .await?;
        Ok(digest)
    }

    /// Signs the manifest `digest` in `reference`'s repository and pushes
    /// the signature beside it. Call it inside [`Registry::bounded`].
    async fn sign_digest(
        &self,
        reference: &OciReference,
        auth: &RegistryAuth,
        digest: &str,
        key: &std::path::Path,
        password: Option<&Secret>,
    ) -> Result<(), RegistryError> {
        signatures::sign(
            sigstore::registry::ClientProtocol::HttpsExcept(self.plain_http(reference)),
            cosign_auth(auth),
            reference.registry(),
            reference.oci().repository(),
            digest,
            key,
            password,
        )
        .await
        .map_err(|source| RegistryError::Signature {
            reference: reference.to_string(),
            source,
        })
    }

    /// Publishes `bytes` (a component) at `reference`'s tag, in the wasm
    /// artifact layout, and signs its manifest digest with `sign_key`
    /// (and its password) when given.
    pub async fn push(
        &self,
        reference: &OciReference,
        bytes: Vec<u8>,
        sign_key: Option<(&std::path::Path, Option<&Secret>)>,
    ) -> Result<Pushed, RegistryError> {
        let component_digest = hex_digest(&bytes);
        let artifact = layout::artifact(bytes).map_err(RegistryError::Unpublishable)?;
        let client = self.client(reference);
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            let pushed = client
                .push(
                    reference.oci(),
                    &artifact.layers,
                    artifact.config,
                    &auth,
                    Some(artifact.manifest),
                )
                .await
                .map_err(|source| RegistryError::Push {
                    reference: reference.to_string(),
                    source,
                })?;
            // The digest the registry gave the manifest this push wrote (in
            // its Location), not what the tag points to a moment later: a
            // concurrent push must not get this signature.
            let manifest_digest = match pushed.manifest_url.rsplit_once("/manifests/") {
                Some((_, digest)) if digest.starts_with("sha256:") => digest.to_owned(),
                _ => client
                    .fetch_manifest_digest(reference.oci(), &auth)
                    .await
                    .map_err(|source| RegistryError::Registry {
                        reference: reference.to_string(),
                        source,
                    })?,
            };
            if let Some((key, password)) = sign_key {
                self.sign_digest(reference, &auth, &manifest_digest, key, password)
                    .await?;
            }
            Ok(Pushed {
                manifest_digest,
                component_digest,
            })
        })
        .await
    }
}

/// The same credentials in the type sigstore's registry client takes.
pub(super) fn cosign_auth(auth: &RegistryAuth) -> sigstore::registry::Auth {
    match auth {
        RegistryAuth::Anonymous => sigstore::registry::Auth::Anonymous,
        RegistryAuth::Basic(user, password) => {
            sigstore::registry::Auth::Basic(user.clone(), password.clone())
        }
        RegistryAuth::Bearer(token) => sigstore::registry::Auth::Bearer(token.clone()),
    }
}
