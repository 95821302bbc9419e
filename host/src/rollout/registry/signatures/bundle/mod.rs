//! Signatures in the layout `cosign sign --key` writes since cosign 3: a
//! Sigstore bundle (v0.3) in an OCI artifact whose `subject` is the
//! component manifest, found through the registry's referrers API or, on
//! a registry without one, through the referrers tag `sha256-<hex>` (an
//! image index listing the artifacts).
//!
//! The bundle holds a DSSE envelope around an in-toto statement: its
//! subject is the manifest digest, its predicate type cosign's signature
//! predicate, and the envelope's one signature is over the DSSE
//! pre-authentication encoding of the statement.
//!
//! The check is the key's alone (what `cosign verify --key …
//! --insecure-ignore-tlog` does): a transparency-log entry or a timestamp
//! in the bundle is neither needed nor checked. It is stricter than cosign
//! in one way: the predicate type must be the signature predicate, so an
//! attestation signed with the same key (an SBOM, a provenance) does not
//! approve a version to serve.

mod format;

use self::format::{
    BUNDLE_MEDIA_TYPE, BUNDLE_MEDIA_TYPE_PARAMETER, EMPTY_CONFIG, EMPTY_MEDIA_TYPE,
    MAX_BUNDLE_BYTES, Reading, SIGN_PREDICATE,
};
use super::{Claims, MAX_SIGNATURES, SignatureError, SigningKey, Subject, VerifyKey, passed_over};
use crate::digest::hex_digest;
use crate::rollout::registry::MAX_MANIFEST_BYTES;
use crate::rollout::registry::read::{ReadError, Reader};
use http::HeaderValue;
use oci_client::Reference;
use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use std::collections::BTreeMap;

/// `image`'s repository, pinned to `digest`.
fn pinned(image: &Reference, digest: &str) -> Reference {
    Reference::with_digest(
        image.registry().to_owned(),
        image.repository().to_owned(),
        digest.to_owned(),
    )
}

/// The bundles attached to `digest`, each as its one bundle layer, at
/// most [`MAX_SIGNATURES`].
async fn attached(reader: &Reader, digest: &str) -> Result<Vec<OciDescriptor>, SignatureError> {
    let read = reader.referrers(digest, MAX_MANIFEST_BYTES).await;
    // A listing past the bound lists nothing keybust reads.
    let Some(index) = passed_over(read, "listing the signatures attached")? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    for entry in index
        .manifests
        .iter()
        .filter(|entry| is_bundle_type(entry.artifact_type.as_deref()))
        .take(MAX_SIGNATURES)
    {
        let read = reader
            .manifest(&entry.digest, &[OCI_IMAGE_MEDIA_TYPE], MAX_MANIFEST_BYTES)
            .await;
        let Some(raw) = passed_over(read, "reading an attached signature")? else {
            continue;
        };
        let Ok(manifest) = serde_json::from_slice::<OciImageManifest>(&raw) else {
            continue;
        };
        if let [layer] = manifest.layers.as_slice()
            && is_bundle_type(Some(&layer.media_type))
        {
            found.push(layer.clone());
        }
    }
    Ok(found)
}

fn is_bundle_type(media_type: Option<&str>) -> bool {
    media_type.is_some_and(|media_type| {
        media_type == BUNDLE_MEDIA_TYPE || media_type == BUNDLE_MEDIA_TYPE_PARAMETER
    })
}

/// The claims of every bundle attached to `digest` holding a signature
/// by `key` over it. `NotSigned` when no signature bundle is attached at
/// all, `Unsigned` when the ones there are not the key's over the digest.
pub(super) async fn verify(
    reader: &Reader,
    digest: &str,
    key: &VerifyKey,
) -> Result<Vec<Claims>, SignatureError> {
    let mut seen = false;
    let mut valid = Vec::new();
    for layer in attached(reader, digest).await? {
        let read = reader.blob(&layer, MAX_BUNDLE_BYTES).await;
        let Some(bundle) = passed_over(read, "reading an attached signature")? else {
            seen = true;
            continue;
        };
        match format::read(&bundle, digest, key) {
            Reading::Valid(claims) => valid.push(claims),
            Reading::Invalid => seen = true,
            Reading::Other => {}
        }
    }
    if !valid.is_empty() {
        return Ok(valid);
    }
    let digest = digest.to_owned();
    Err(if seen {
        SignatureError::Unsigned { digest }
    } else {
        SignatureError::NotSigned { digest }
    })
}

/// Attaches a bundle signing `subject` with `key` for `claims`, unless one
/// by this key over it for the same tag is attached already (signing
/// again does not add another).
/// Where the registry has no referrers API, the artifact is listed in the
/// referrers tag as well, as the distribution spec asks of a client.
pub(super) async fn attach(
    client: &oci_client::Client,
    auth: &RegistryAuth,
    reader: &Reader,
    image: &Reference,
    subject: &Subject<'_>,
    key: &SigningKey,
    claims: &Claims,
) -> Result<(), SignatureError> {
    if verify(reader, subject.digest, &key.verify_key())
        .await
        .is_ok_and(|signed| signed.iter().any(|old| old.tag == claims.tag))
    {
        return Ok(());
    }
    let push = |what| move |source| SignatureError::Registry { what, source };
    let bundle = format::make(subject.digest, key, claims)?;
    let bundle_digest = format!("sha256:{}", hex_digest(&bundle));
    let empty_digest = format!("sha256:{}", hex_digest(EMPTY_CONFIG));
    let manifest = OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.to_owned()),
        config: OciDescriptor {
            media_type: EMPTY_MEDIA_TYPE.to_owned(),
            digest: empty_digest.clone(),
            size: EMPTY_CONFIG.len() as i64,
            ..OciDescriptor::default()
        },
        layers: vec![OciDescriptor {
            media_type: BUNDLE_MEDIA_TYPE.to_owned(),
            digest: bundle_digest.clone(),
            size: bundle.len() as i64,
            ..OciDescriptor::default()
        }],
        subject: Some(OciDescriptor {
            media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
            digest: subject.digest.to_owned(),
            size: subject.bytes.len() as i64,
            ..OciDescriptor::default()
        }),
        artifact_type: Some(BUNDLE_MEDIA_TYPE.to_owned()),
        annotations: Some(BTreeMap::from([
            (
                "dev.sigstore.bundle.content".to_owned(),
                "dsse-envelope".to_owned(),
            ),
            (
                "dev.sigstore.bundle.predicateType".to_owned(),
                SIGN_PREDICATE.to_owned(),
            ),
            (
                "org.opencontainers.image.created".to_owned(),
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            ),
        ])),
    };
    let manifest = serde_json::to_vec(&manifest).expect("a manifest serializes");
    let manifest_digest = format!("sha256:{}", hex_digest(&manifest));
    client
        .store_auth_if_needed(image.resolve_registry(), auth)
        .await;
    client
        .push_blob(image, EMPTY_CONFIG.to_vec(), &empty_digest)
        .await
        .map_err(push("pushing a signature"))?;
    client
        .push_blob(image, bundle, &bundle_digest)
        .await
        .map_err(push("pushing a signature"))?;
    client
        .push_manifest_raw(
            &pinned(image, &manifest_digest),
            manifest.clone(),
            HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE),
        )
        .await
        .map_err(push("pushing a signature"))?;
    let read = reader.referrers(subject.digest, MAX_MANIFEST_BYTES).await;
    let listed = passed_over(read, "listing the signatures attached")?.is_some_and(|index| {
        index
            .manifests
            .iter()
            .any(|entry| entry.digest == manifest_digest)
    });
    if !listed {
        list_in_referrers_tag(
            client,
            reader,
            image,
            subject.digest,
            ImageIndexEntry {
                media_type: OCI_IMAGE_MEDIA_TYPE.to_owned(),
                digest: manifest_digest,
                size: manifest.len() as i64,
                platform: None,
                annotations: None,
                artifact_type: Some(BUNDLE_MEDIA_TYPE.to_owned()),
            },
        )
        .await?;
    }
    Ok(())
}

/// Adds `entry` to the referrers tag of `digest` (the distribution spec's
/// fallback for registries without the referrers API): the image index
/// tagged `sha256-<hex>`, made when there is none, its entries kept in
/// digest order as other clients keep them.
async fn list_in_referrers_tag(
    client: &oci_client::Client,
    reader: &Reader,
    image: &Reference,
    digest: &str,
    entry: ImageIndexEntry,
) -> Result<(), SignatureError> {
    let tag = Reference::with_tag(
        image.registry().to_owned(),
        image.repository().to_owned(),
        digest.replace(':', "-"),
    );
    let in_the_way = |why: &str| SignatureError::InTheWay {
        what: format!("the referrers tag {}: {why}", tag.tag().unwrap_or_default()),
    };
    let read = reader
        .manifest(
            tag.tag().unwrap_or_default(),
            &[OCI_IMAGE_INDEX_MEDIA_TYPE],
            MAX_MANIFEST_BYTES,
        )
        .await;
    let mut index = match read {
        Ok(raw) => serde_json::from_slice::<OciImageIndex>(&raw)
            .ok()
            .filter(|index| index.media_type.as_deref() == Some(OCI_IMAGE_INDEX_MEDIA_TYPE))
            .ok_or_else(|| in_the_way("not an OCI image index"))?,
        Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => {
            return Err(in_the_way("too large"));
        }
        Err(err) if err.names_nothing() => OciImageIndex {
            schema_version: 2,
            media_type: Some(OCI_IMAGE_INDEX_MEDIA_TYPE.to_owned()),
            manifests: Vec::new(),
            artifact_type: None,
            annotations: None,
        },
        Err(ReadError::Registry(source)) => {
            return Err(SignatureError::Registry {
                what: "reading the referrers tag",
                source,
            });
        }
    };
    if index
        .manifests
        .iter()
        .all(|listed| listed.digest != entry.digest)
    {
        index.manifests.push(entry);
        index.manifests.sort_by(|a, b| a.digest.cmp(&b.digest));
    }
    client
        .push_manifest_raw(
            &tag,
            serde_json::to_vec(&index).expect("an index serializes"),
            HeaderValue::from_static(OCI_IMAGE_INDEX_MEDIA_TYPE),
        )
        .await
        .map_err(|source| SignatureError::Registry {
            what: "updating the referrers tag",
            source,
        })?;
    Ok(())
}
