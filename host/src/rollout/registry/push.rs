//! Publishing: a component pushed in the wasm artifact layout, and cosign
//! signatures pushed beside it.
//!
//! What is signed is always a digest keybust computed over manifest bytes
//! it holds: the bytes it wrote and uploaded (`push`), or the bytes it
//! fetched and checked (`sign`). A digest a registry names back, in a
//! `Location` or a `Docker-Content-Digest` header, is never signed: a
//! hostile registry would otherwise get the operator's key to sign a
//! component of its own choosing.

use super::read::{ReadError, Reader};
use super::{MAX_MANIFEST_BYTES, OciReference, SigningKey, signatures};
use super::{Pushed, Registry, RegistryError, layout};
use crate::digest::hex_digest;
use http::HeaderValue;
use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;
use oci_client::secrets::RegistryAuth;

impl Registry {
    /// Signs the component manifest `reference` names now, with `key`, and
    /// pushes the signature beside it: for a version published unsigned.
    /// The manifest is fetched and checked to be a component in the wasm
    /// artifact layout (and, for a pinned reference, to have the pinned
    /// digest) before its digest is signed. Returns the digest signed.
    pub async fn sign(
        &self,
        reference: &OciReference,
        key: &SigningKey,
    ) -> Result<String, RegistryError> {
        let client = self.client(reference);
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            let reader = self.reader(&client, &auth, reference).await?;
            let not_a_component = |reason: String| RegistryError::NotAComponent {
                reference: reference.to_string(),
                reason,
            };
            let raw = match reader
                .manifest(
                    &super::by_name(reference.oci()),
                    &[OCI_IMAGE_MEDIA_TYPE],
                    MAX_MANIFEST_BYTES,
                )
                .await
            {
                Ok(raw) => raw,
                Err(ReadError::Registry(source)) => {
                    return Err(RegistryError::Registry {
                        reference: reference.to_string(),
                        source,
                    });
                }
                Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => {
                    return Err(not_a_component("the manifest is too large".into()));
                }
            };
            let digest = format!("sha256:{}", hex_digest(&raw));
            if let Some(pinned) = reference.pinned_digest()
                && pinned != digest
            {
                return Err(RegistryError::DigestMismatch {
                    reference: reference.to_string(),
                    what: "manifest",
                    expected: pinned.to_owned(),
                    actual: digest,
                });
            }
            layout::component_layer(&raw).map_err(not_a_component)?;
            let subject = signatures::Subject {
                digest: &digest,
                bytes: &raw,
            };
            self.sign_subject(reference, &auth, &reader, &subject, key)
                .await?;
            Ok(digest)
        })
        .await
    }

    /// Signs the manifest `subject` in `reference`'s repository and pushes
    /// the signatures beside it. Call it inside [`Registry::bounded`].
    async fn sign_subject(
        &self,
        reference: &OciReference,
        auth: &RegistryAuth,
        reader: &Reader,
        subject: &signatures::Subject<'_>,
        key: &SigningKey,
    ) -> Result<(), RegistryError> {
        signatures::sign(
            &self.client(reference),
            auth,
            reader,
            reference.oci(),
            subject,
            key,
        )
        .await
        .map_err(|source| RegistryError::Signature {
            reference: reference.to_string(),
            source,
        })
    }

    /// Publishes `bytes` (a component) at `reference`'s tag, in the wasm
    /// artifact layout, and signs its manifest digest with `sign_key` when
    /// given: the digest of the manifest bytes keybust wrote and uploaded.
    pub async fn push(
        &self,
        reference: &OciReference,
        bytes: Vec<u8>,
        sign_key: Option<&SigningKey>,
    ) -> Result<Pushed, RegistryError> {
        let component_digest = hex_digest(&bytes);
        let artifact = layout::artifact(bytes).map_err(RegistryError::Unpublishable)?;
        let client = self.client(reference);
        let push_error = |source| RegistryError::Push {
            reference: reference.to_string(),
            source,
        };
        self.bounded(reference, async {
            let auth = self.auth(reference).await?;
            client
                .store_auth_if_needed(reference.oci().resolve_registry(), &auth)
                .await;
            for layer in &artifact.layers {
                client
                    .push_blob(reference.oci(), layer.data.clone(), &layer.sha256_digest())
                    .await
                    .map_err(push_error)?;
            }
            let config = &artifact.config;
            client
                .push_blob(
                    reference.oci(),
                    config.data.clone(),
                    &config.sha256_digest(),
                )
                .await
                .map_err(push_error)?;
            let location = client
                .push_manifest_raw(
                    reference.oci(),
                    artifact.manifest.clone(),
                    HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
                )
                .await
                .map_err(push_error)?;
            let manifest_digest = artifact.manifest_digest.clone();
            if !location.ends_with(&manifest_digest) {
                tracing::warn!(
                    reference = %reference,
                    %location,
                    manifest_digest = %manifest_digest,
                    "the registry named another manifest than the one pushed; \
                     the pushed one's digest is what is signed and reported"
                );
            }
            if let Some(key) = sign_key {
                let subject = signatures::Subject {
                    digest: &manifest_digest,
                    bytes: &artifact.manifest,
                };
                let reader = self.reader(&client, &auth, reference).await?;
                self.sign_subject(reference, &auth, &reader, &subject, key)
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
