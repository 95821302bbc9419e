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

use super::{Claims, MAX_SIGNATURES, SignatureError, SigningKey, Subject, VerifyKey};
use crate::digest::hex_digest;
use crate::rollout::registry::MAX_MANIFEST_BYTES;
use crate::rollout::registry::read::{ReadError, Reader};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE as BASE64_URL};
use http::HeaderValue;
use oci_client::Reference;
use oci_client::manifest::{
    ImageIndexEntry, OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageIndex, OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The bundle's media type, as the artifact's type and its one layer's.
const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The same version in the form newer Sigstore clients write.
const BUNDLE_MEDIA_TYPE_PARAMETER: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";

/// The empty config an artifact without one carries.
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
const EMPTY_CONFIG: &[u8] = b"{}";

/// What the envelope's payload is.
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The in-toto statement version cosign writes.
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The predicate of a cosign image signature (no predicate body).
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// The largest bundle read: a key-only one is under 2 KiB, one with a
/// transparency-log proof a few KiB.
const MAX_BUNDLE_BYTES: u64 = 128 * 1024;

/// The bundle, as protojson writes it (camelCase; unknown fields, such as
/// the verification material, are passed over on reading).
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    verification_material: Option<serde_json::Value>,
    dsse_envelope: Option<Envelope>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    payload: String,
    payload_type: String,
    signatures: Vec<EnvelopeSignature>,
}

#[derive(Serialize, Deserialize)]
struct EnvelopeSignature {
    sig: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    kind: String,
    subject: Vec<StatementSubject>,
    predicate_type: String,
    #[serde(default)]
    predicate: serde_json::Value,
}

#[derive(Serialize, Deserialize)]
struct StatementSubject {
    digest: BTreeMap<String, String>,
    /// The signer's annotations (`cosign sign -a`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Map<String, serde_json::Value>>,
}

/// What one bundle says of a digest.
#[derive(Debug, PartialEq)]
enum Reading {
    /// A signature by the key over the digest, with what it claims.
    Valid(Claims),
    /// A signature statement that is not the key's or not over the digest.
    Invalid,
    /// Not a signature at all (another predicate, or not a bundle cosign
    /// would read as one): passed over.
    Other,
}

/// DSSE's pre-authentication encoding: what the envelope's signature is
/// over, binding the payload's type to its bytes.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut message = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    message.extend_from_slice(payload);
    message
}

/// Base64 as protojson writes bytes (standard), or as it also reads them
/// (URL-safe).
fn decode(text: &str) -> Option<Vec<u8>> {
    BASE64
        .decode(text)
        .or_else(|_| BASE64_URL.decode(text))
        .ok()
}

/// Reads one bundle's bytes against `digest` and `key`.
fn read(bundle: &[u8], digest: &str, key: &VerifyKey) -> Reading {
    let Ok(bundle) = serde_json::from_slice::<Bundle>(bundle) else {
        return Reading::Other;
    };
    if bundle.media_type != BUNDLE_MEDIA_TYPE && bundle.media_type != BUNDLE_MEDIA_TYPE_PARAMETER {
        return Reading::Other;
    }
    let Some(envelope) = bundle.dsse_envelope else {
        return Reading::Other;
    };
    if envelope.payload_type != PAYLOAD_TYPE {
        return Reading::Other;
    }
    let Some(payload) = decode(&envelope.payload) else {
        return Reading::Other;
    };
    let Ok(statement) = serde_json::from_slice::<Statement>(&payload) else {
        return Reading::Other;
    };
    if statement.kind != STATEMENT_TYPE || statement.predicate_type != SIGN_PREDICATE {
        return Reading::Other;
    }
    // One signature, as cosign requires of an image signature's envelope.
    let [signature] = envelope.signatures.as_slice() else {
        return Reading::Invalid;
    };
    let signed = decode(&signature.sig)
        .is_some_and(|signature| key.verifies(&pae(PAYLOAD_TYPE, &payload), &signature));
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let subject = statement
        .subject
        .into_iter()
        .find(|subject| subject.digest.get("sha256").is_some_and(|d| d == hex));
    match subject {
        Some(subject) if signed => Reading::Valid(Claims::from_json(subject.annotations)),
        _ => Reading::Invalid,
    }
}

/// A new bundle signing `digest` with `key`, claiming `claims`.
fn make(digest: &str, key: &SigningKey, claims: &Claims) -> Result<Vec<u8>, SignatureError> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let statement = serde_json::to_vec(&Statement {
        kind: STATEMENT_TYPE.to_owned(),
        subject: vec![StatementSubject {
            digest: BTreeMap::from([("sha256".to_owned(), hex.to_owned())]),
            annotations: claims.to_json(),
        }],
        predicate_type: SIGN_PREDICATE.to_owned(),
        predicate: serde_json::json!({}),
    })
    .expect("a statement of strings serializes");
    let signature =
        key.sign(&pae(PAYLOAD_TYPE, &statement))
            .map_err(|reason| SignatureError::Key {
                path: "--sign-key".into(),
                reason,
            })?;
    // The hint names the key (SHA-256 of its DER public key) for a reader
    // holding several; no verifier relies on it.
    let hint = BASE64.encode(sha256(&key.public_der()));
    Ok(serde_json::to_vec(&Bundle {
        media_type: BUNDLE_MEDIA_TYPE.to_owned(),
        verification_material: Some(serde_json::json!({ "publicKey": { "hint": hint } })),
        dsse_envelope: Some(Envelope {
            payload: BASE64.encode(&statement),
            payload_type: PAYLOAD_TYPE.to_owned(),
            signatures: vec![EnvelopeSignature {
                sig: BASE64.encode(signature),
            }],
        }),
    })
    .expect("a bundle of strings serializes"))
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).to_vec()
}

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
    let index = match reader.referrers(digest, MAX_MANIFEST_BYTES).await {
        Ok(index) => index,
        Err(ReadError::Registry(source)) => {
            return Err(SignatureError::Registry {
                what: "listing the signatures attached",
                source,
            });
        }
        // A listing past the bound lists nothing keybust reads.
        Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => return Ok(Vec::new()),
    };
    let mut found = Vec::new();
    for entry in index
        .manifests
        .iter()
        .filter(|entry| is_bundle_type(entry.artifact_type.as_deref()))
        .take(MAX_SIGNATURES)
    {
        let raw = match reader
            .manifest(&entry.digest, &[OCI_IMAGE_MEDIA_TYPE], MAX_MANIFEST_BYTES)
            .await
        {
            Ok(raw) => raw,
            Err(ReadError::Registry(source)) => {
                return Err(SignatureError::Registry {
                    what: "reading an attached signature",
                    source,
                });
            }
            Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => continue,
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
        let bundle = match reader.blob(&layer, MAX_BUNDLE_BYTES).await {
            Ok(bundle) => bundle,
            Err(ReadError::Registry(source)) => {
                return Err(SignatureError::Registry {
                    what: "reading an attached signature",
                    source,
                });
            }
            Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => {
                seen = true;
                continue;
            }
        };
        match read(&bundle, digest, key) {
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
    let bundle = make(subject.digest, key, claims)?;
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
    let listed = match reader.referrers(subject.digest, MAX_MANIFEST_BYTES).await {
        Ok(index) => index
            .manifests
            .iter()
            .any(|entry| entry.digest == manifest_digest),
        Err(ReadError::Registry(source)) => {
            return Err(SignatureError::Registry {
                what: "listing the signatures attached",
                source,
            });
        }
        Err(ReadError::TooLarge | ReadError::Mismatch { .. }) => false,
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4f0a1bb1e4ec2d1bcb2f3f7bd3b5b9f5f8c4b8a3a0b1c2d3e4f5a6b7c8d9e0f1";

    fn key() -> SigningKey {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let pem = pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec()));
        SigningKey::from_pem(pem.as_bytes(), None).unwrap()
    }

    #[test]
    fn the_encoding_signed_is_dsse_pae() {
        assert_eq!(
            pae("application/vnd.in-toto+json", b"{}"),
            b"DSSEv1 28 application/vnd.in-toto+json 2 {}"
        );
    }

    #[test]
    fn a_bundle_reads_as_valid_for_its_key_and_digest_only() {
        let (ours, theirs) = (key(), key());
        let claims = Claims {
            tag: Some("stable".into()),
            signed_at: Some("2026-12-07T00:00:00Z".into()),
        };
        let bundle = make(DIGEST, &ours, &claims).unwrap();
        assert_eq!(
            read(&bundle, DIGEST, &ours.verify_key()),
            Reading::Valid(claims)
        );
        assert_eq!(
            read(&bundle, DIGEST, &theirs.verify_key()),
            Reading::Invalid
        );
        let other = DIGEST.replace("4f", "00");
        assert_eq!(read(&bundle, &other, &ours.verify_key()), Reading::Invalid);
    }

    #[test]
    fn an_attestation_by_the_key_is_no_signature() {
        let key = key();
        let statement = serde_json::json!({
            "_type": STATEMENT_TYPE,
            "subject": [{"digest": {"sha256": DIGEST.strip_prefix("sha256:").unwrap()}}],
            "predicateType": "https://spdx.dev/Document",
            "predicate": {},
        })
        .to_string();
        let signature = key.sign(&pae(PAYLOAD_TYPE, statement.as_bytes())).unwrap();
        let bundle = serde_json::json!({
            "mediaType": BUNDLE_MEDIA_TYPE,
            "dsseEnvelope": {
                "payload": BASE64.encode(&statement),
                "payloadType": PAYLOAD_TYPE,
                "signatures": [{"sig": BASE64.encode(signature)}],
            },
        })
        .to_string();
        assert_eq!(
            read(bundle.as_bytes(), DIGEST, &key.verify_key()),
            Reading::Other
        );
        assert_eq!(read(b"not json", DIGEST, &key.verify_key()), Reading::Other);
    }
}
