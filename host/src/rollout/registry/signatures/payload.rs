//! The simple-signing payload a cosign signature is made over: a small
//! JSON document naming the repository and the manifest digest signed,
//! in the field order cosign writes (`cosign sign --key`), so that
//! keybust's signatures and cosign's read alike.

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
/// writes the identity).
pub(super) fn for_digest(repository: &str, digest: &str) -> Vec<u8> {
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
        optional: None,
    })
    .expect("a payload of strings serializes")
}

/// Whether a payload (its signature already checked) signs `digest`. The
/// repository it names is not compared: a signed image copied to another
/// registry keeps its signature, as with cosign.
pub(super) fn signs(payload: &[u8], digest: &str) -> bool {
    serde_json::from_slice::<Payload>(payload).is_ok_and(|payload| {
        payload.critical.kind == SIGNATURE_TYPE
            && payload.critical.image.docker_manifest_digest == digest
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:4f0a1bb1e4ec2d1bcb2f3f7bd3b5b9f5f8c4b8a3a0b1c2d3e4f5a6b7c8d9e0f1";

    #[test]
    fn the_payload_reads_as_cosign_writes_it() {
        let payload = for_digest("registry.example/acme/keybust", DIGEST);
        assert_eq!(
            String::from_utf8(payload.clone()).unwrap(),
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"registry.example/acme/keybust"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"cosign container image signature"}},"optional":null}}"#
            )
        );
        assert!(signs(&payload, DIGEST));
    }

    #[test]
    fn a_payload_for_another_digest_or_of_another_kind_signs_nothing() {
        let other = for_digest("registry.example/acme/keybust", &DIGEST.replace("4f", "00"));
        assert!(!signs(&other, DIGEST));
        let attestation = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"r/k"}},"image":{{"docker-manifest-digest":"{DIGEST}"}},"type":"something else"}},"optional":{{"a":"b"}}}}"#
        );
        assert!(!signs(attestation.as_bytes(), DIGEST));
        assert!(!signs(b"not json", DIGEST));
    }
}
