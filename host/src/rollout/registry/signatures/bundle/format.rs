//! The Sigstore bundle (v0.3) of a cosign image signature, as a document:
//! a DSSE envelope around an in-toto statement naming the manifest
//! digest, read against a key and made with one. Where bundles live in a
//! registry is [`super`]'s.

use crate::rollout::registry::signatures::{Claims, SignatureError, SigningKey, VerifyKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as BASE64, URL_SAFE as BASE64_URL};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The bundle's media type, as the artifact's type and its one layer's.
pub(super) const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

/// The same version in the form newer Sigstore clients write.
pub(super) const BUNDLE_MEDIA_TYPE_PARAMETER: &str =
    "application/vnd.dev.sigstore.bundle+json;version=0.3";

/// The empty config an artifact without one carries.
pub(super) const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
pub(super) const EMPTY_CONFIG: &[u8] = b"{}";

/// What the envelope's payload is.
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";

/// The in-toto statement version cosign writes.
const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";

/// The predicate of a cosign image signature (no predicate body).
pub(super) const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// The largest bundle read: a key-only one is under 2 KiB, one with a
/// transparency-log proof a few KiB.
pub(super) const MAX_BUNDLE_BYTES: u64 = 128 * 1024;

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
pub(super) enum Reading {
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
pub(super) fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
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
pub(super) fn read(bundle: &[u8], digest: &str, key: &VerifyKey) -> Reading {
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
pub(super) fn make(
    digest: &str,
    key: &SigningKey,
    claims: &Claims,
) -> Result<Vec<u8>, SignatureError> {
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
