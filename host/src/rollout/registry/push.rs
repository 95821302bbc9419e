//! Publishing: a component pushed in the wasm artifact layout, and cosign
//! signatures pushed beside what a tag names.

use super::{OciReference, SigningKey, signatures};
use super::{Pushed, Registry, RegistryError, layout};
use crate::digest::hex_digest;
use oci_client::secrets::RegistryAuth;

impl Registry {
    /// Signs the manifest `reference` names now (its tag resolved once)
    /// with `key`, and pushes the signature beside it: for a version
    /// published unsigned. Returns the digest signed.
    pub async fn sign(
        &self,
        reference: &OciReference,
        key: &SigningKey,
    ) -> Result<String, RegistryError> {
        let digest = self.resolve(reference).await?;
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            self.sign_digest(reference, &auth, &digest, key).await
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
        key: &SigningKey,
    ) -> Result<(), RegistryError> {
        signatures::sign(&self.client(reference), auth, reference.oci(), digest, key)
            .await
            .map_err(|source| RegistryError::Signature {
                reference: reference.to_string(),
                source,
            })
    }

    /// Publishes `bytes` (a component) at `reference`'s tag, in the wasm
    /// artifact layout, and signs its manifest digest with `sign_key` when
    /// given.
    pub async fn push(
        &self,
        reference: &OciReference,
        bytes: Vec<u8>,
        sign_key: Option<&SigningKey>,
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
            if let Some(key) = sign_key {
                self.sign_digest(reference, &auth, &manifest_digest, key)
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
