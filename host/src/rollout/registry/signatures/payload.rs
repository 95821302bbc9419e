//! The simple-signing payload a cosign signature is made over: a small
//! JSON document naming the repository and the manifest digest signed,
//! in the field order cosign writes (`cosign sign --key`), so that
//! keybust's signatures and cosign's read alike.

use super::Claims;
use serde::{Deserialize, Serialize};

/// What the payload's `critical.type` says of a cosign signature.
const SIGNATURE_TYPE: &str = "cosign container image signature";

#[derive(Serialize, Deserialize)]
struct Payload {
    critical: Critical,
    /// Annotations the signer chose (`cosign sign -a`); kept as read.
    optional: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Serialize, Deserialize)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Serialize, Deserialize)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Serialize, Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// The payload signing `digest` in `repository` (`registry/name`, as cosign
/// writes the identity), with `claims` as its annotations (`cosign sign
/// -a`).
pub(super) fn for_digest(repository: &str, digest: &str, claims: &Claims) -> Vec<u8> {
    serde_json::to_vec(&Payload {
        critical: Critical {
            identity: Identity {
                docker_reference: repository.to_owned(),
            },
            image: Image {
                docker_manifest_digest: digest.to_owned(),
            },
            kind: SIGNATURE_TYPE.to_owned(),
        },
        optional: claims.to_json(),
    })
    .expect("a payload of strings serializes")
}

/// What a payload (its signature already checked) claims of `digest`:
/// `None` when it does not sign it. The repository it names is not
/// compared: a signed image copied to another registry keeps its
/// signature, as with cosign.
pub(super) fn signs(payload: &[u8], digest: &str) -> Option<Claims> {
    let payload = serde_json::from_slice::<Payload>(payload).ok()?;
    (payload.critical.kind == SIGNATURE_TYPE
        && payload.critical.image.docker_manifest_digest == digest)
        .then(|| Claims::from_json(payload.optional))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4f0a1bb1e4ec2d1bcb2f3f7bd3b5b9f5f8c4b8a3a0b1c2d3e4f5a6b7c8d9e0f1";

    #[test]
    fn the_payload_reads_as_cosign_writes_it() {
        let payload = for_digest("registry.example/acme/keybust", DIGEST, &Claims::default());
        assert_eq!(
            String::from_utf8(payload.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"registry.example/acme/keybust"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert_eq!(signs(&payload, DIGEST), Some(Claims::default()));
        let claims = Claims {
            tag: Some("stable".into()),
            signed_at: Some("2026-12-07T00:00:00Z".into()),
        };
        let payload = for_digest("registry.example/acme/keybust", DIGEST, &claims);
        assert_eq!(signs(&payload, DIGEST), Some(claims));
    }

    #[test]
    fn a_payload_for_another_digest_or_of_another_kind_signs_nothing() {
        let other = for_digest(
            "registry.example/acme/keybust",
            &DIGEST.replace("4f", "00"),
            &Claims::default(),
        );
        assert_eq!(signs(&other, DIGEST), None);
        let attestation = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/k"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"something else"}},"optional":{{"a":"b"}}}}"#
        );
        assert_eq!(signs(attestation.as_bytes(), DIGEST), None);
        assert_eq!(signs(b"not json", DIGEST), None);
    }
}
