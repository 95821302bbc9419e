//! Signatures in cosign's legacy layout, the one `cosign sign --key`
//! wrote before cosign 3 and every cosign release reads: an image tagged
//! `sha256-<digest>.sig` in the same repository, each of whose layers is a
//! simple-signing payload ([`super::payload`]) naming the digest, with the
//! payload's signature, base64, in the layer's
//! `dev.cosignproject.cosign/signature` annotation.

use super::payload;
use super::{Claims, MAX_SIGNATURES, SignatureError, SigningKey, VerifyKey, passed_over};
use crate::rollout::registry::MAX_MANIFEST_BYTES;
use crate::rollout::registry::read::{ReadError, Reader};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oci_client::Reference;
use oci_client::client::{Config, ImageLayer};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use std::collections::BTreeMap;

/// A signature layer's media type.
const PAYLOAD_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";

/// The layer annotation holding the payload's signature.
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";

/// The largest payload read: cosign's are a few hundred bytes.
const MAX_PAYLOAD_BYTES: u64 = 64 * 1024;

/// The claims of every signature by `key` in `image`'s repository naming
/// the manifest `digest` (at least one, else why there is none); others,
/// by other keys or over other digests, are passed over.
pub(super) async fn verify(
    reader: &Reader,
    image: &Reference,
    digest: &str,
    key: &VerifyKey,
) -> Result<Vec<Claims>, SignatureError> {
    let tag = signature_tag(image, digest);
    let unsigned = || SignatureError::Unsigned {
        digest: digest.to_owned(),
    };
    let Some(manifest) = signature_image(reader, &tag).await? else {
        return Err(SignatureError::NotSigned {
            digest: digest.to_owned(),
        });
    };
    let manifest = manifest.ok_or_else(unsigned)?;
    let mut valid = Vec::new();
    for layer in signature_layers(&manifest) {
        let Some(signature) = layer
            .annotations
            .as_ref()
            .and_then(|annotations| annotations.get(SIGNATURE_ANNOTATION))
            .and_then(|signature| BASE64.decode(signature).ok())
        else {
            continue;
        };
        let read = reader.blob(layer, MAX_PAYLOAD_BYTES).await;
        let Some(payload) = passed_over(read, "reading a signature")? else {
            continue;
        };
        if key.verifies(&payload, &signature)
            && let Some(claims) = payload::signs(&payload, digest)
        {
            valid.push(claims);
        }
    }
    if valid.is_empty() {
        Err(unsigned())
    } else {
        Ok(valid)
    }
}

/// Signs the manifest `digest` in `image`'s repository with `key`, and
/// pushes the signature beside it, keeping the signatures already there
/// (other keys', or over the same digest by others) as cosign does. An
/// earlier signature by this key over this digest for the same tag is
/// replaced, so that
/// signing again does not grow the image.
pub(super) async fn sign(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reader: &Reader,
    image: &Reference,
    digest: &str,
    key: &SigningKey,
    claims: &Claims,
) -> Result<(), SignatureError> {
    let payload = payload::for_digest(
        &format!("{}/{}", image.registry(), image.repository()),
        digest,
        claims,
    );
    let signature = key.sign(&payload).map_err(|reason| SignatureError::Key {
        path: "--sign-key".into(),
        reason,
    })?;
    let tag = signature_tag(image, digest);
    let ours = key.verify_key();
    let mut layers = Vec::new();
    if let Some(Some(existing)) = signature_image(reader, &tag).await? {
        for layer in signature_layers(&existing) {
            let read = reader.blob(layer, MAX_PAYLOAD_BYTES).await;
            let Some(data) = passed_over(read, "reading the signatures there")? else {
                continue;
            };
            let by_us = layer
                .annotations
                .as_ref()
                .and_then(|annotations| annotations.get(SIGNATURE_ANNOTATION))
                .and_then(|signature| BASE64.decode(signature).ok())
                .is_some_and(|signature| {
                    ours.verifies(&data, &signature)
                        && payload::signs(&data, digest).is_some_and(|old| old.tag == claims.tag)
                });
            if !by_us {
                layers.push(ImageLayer::new(
                    data,
                    layer.media_type.clone(),
                    layer.annotations.clone(),
                ));
            }
        }
    }
    layers.push(ImageLayer::new(
        payload,
        PAYLOAD_MEDIA_TYPE.to_owned(),
        Some(BTreeMap::from([(
            SIGNATURE_ANNOTATION.to_owned(),
            BASE64.encode(signature),
        )])),
    ));
    let config = Config::new(
        image_config(&layers).into_bytes(),
        IMAGE_CONFIG_MEDIA_TYPE.to_owned(),
        None,
    );
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_owned());
    client
        .push(&tag, &layers, config, auth, Some(manifest))
        .await
        .map_err(|source| SignatureError::Registry {
            what: "pushing the signature",
            source,
        })?;
    Ok(())
}

/// Where cosign keeps the signatures over `digest`: the tag
/// `sha256-<hex>.sig` in the same repository.
fn signature_tag(image: &Reference, digest: &str) -> Reference {
    Reference::with_tag(
        image.registry().to_owned(),
        image.repository().to_owned(),
        format!("{}.sig", digest.replace(':', "-")),
    )
}

/// The signature image at `tag`: `None` when the registry holds none,
/// `Some(None)` when what it holds is no image manifest (or too large to
/// be a signature image).
async fn signature_image(
    reader: &Reader,
    tag: &Reference,
) -> Result<Option<Option<OciImageManifest>>, SignatureError> {
    match reader
        .manifest(
            tag.tag().unwrap_or_default(),
            &[OCI_IMAGE_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE],
            MAX_MANIFEST_BYTES,
        )
        .await
    {
        Ok(raw) => Ok(Some(serde_json::from_slice(&raw).ok())),
        Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => Ok(Some(None)),
        Err(err) if err.names_nothing() => Ok(None),
        Err(ReadError::Registry(source)) => Err(SignatureError::Registry {
            what: "looking for a signature",
            source,
        }),
    }
}

/// The layers of a signature image that may be signatures, at most
/// [`MAX_SIGNATURES`] of them.
fn signature_layers(
    manifest: &OciImageManifest,
) -> impl Iterator<Item = &oci_client::manifest::OciDescriptor> {
    manifest
        .layers
        .iter()
        .filter(|layer| layer.media_type == PAYLOAD_MEDIA_TYPE)
        .take(MAX_SIGNATURES)
}

/// The image config cosign gives a signature image: empty but for the
/// layers' digests, with the zero time, so that the same signatures make
/// the same image.
fn image_config(layers: &[ImageLayer]) -> String {
    let diff_ids: Vec<String> = layers.iter().map(ImageLayer::sha256_digest).collect();
    serde_json::json!({
        "architecture": "",
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "config": {},
    })
    .to_string()
}
