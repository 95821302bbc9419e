//! Cosign's current signature layout, written and read here from its
//! published description (sigstore/cosign `specs/BUNDLE_SPEC.md`, the
//! Sigstore bundle v0.3, DSSE and in-toto Statement v1), never with
//! keybust's code: what `cosign sign --key` (cosign 3) attaches, and what
//! `cosign verify --key --insecure-ignore-tlog` checks.
//!
//! The test registry (CNCF distribution 2.8) has no referrers API, so an
//! attached artifact is listed in the referrers tag `sha256-<hex>`, an
//! OCI image index, as the distribution spec has clients do.

use super::registry::OciRegistry;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use oci_client::Reference;
use oci_client::secrets::RegistryAuth;
use serde_json::{Value, json};
use std::path::Path;

pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
const SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";

/// DSSE's pre-authentication encoding of `payload`.
pub fn pae(payload: &[u8]) -> Vec<u8> {
    let mut message = format!(
        "DSSEv1 {} {PAYLOAD_TYPE} {} ",
        PAYLOAD_TYPE.len(),
        payload.len()
    )
    .into_bytes();
    message.extend_from_slice(payload);
    message
}

/// The bundle cosign 3 makes signing the manifest `digest` with the
/// PKCS#8 key at `key`, with `predicate_type` (cosign's signature
/// predicate, or an attestation's), for `tag` (`cosign sign -a tag=…`).
pub fn bundle(key: &Path, digest: &str, predicate_type: &str, tag: &str) -> Vec<u8> {
    let statement = json!({
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{
            "digest": {"sha256": digest.strip_prefix("sha256:").unwrap()},
            "annotations": {"tag": tag},
        }],
        "predicateType": predicate_type,
        "predicate": {},
    })
    .to_string();
    let signature = super::fleet::cosign_sign(key, &pae(statement.as_bytes()));
    json!({
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": "test"}},
        "dsseEnvelope": {
            "payload": BASE64.encode(&statement),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": signature}],
        },
    })
    .to_string()
    .into_bytes()
}

/// A signature bundle for `tag`, with cosign's own predicate.
pub fn signature(key: &Path, digest: &str, tag: &str) -> Vec<u8> {
    bundle(key, digest, SIGN_PREDICATE, tag)
}

fn client() -> oci_client::Client {
    oci_client::Client::new(oci_client::client::ClientConfig {
        protocol: oci_client::client::ClientProtocol::Http,
        ..Default::default()
    })
}

fn reference(registry: &OciRegistry, repository: &str, tag_or_digest: &str) -> Reference {
    format!("127.0.0.1:{}/{repository}{tag_or_digest}", registry.port)
        .parse()
        .unwrap()
}

fn digest_of(bytes: &[u8]) -> String {
    format!("sha256:{}", keybust::digest::hex_digest(bytes))
}

/// Attaches `bundle` to the manifest `subject` (its digest) in
/// `repository`, as cosign 3 does: the empty config and the bundle as
/// blobs, an artifact manifest whose `subject` is the component's, pushed
/// by digest, and an entry in the referrers tag.
pub async fn attach(registry: &OciRegistry, repository: &str, subject: &str, bundle: Vec<u8>) {
    let client = client();
    let (subject_manifest, _) = client
        .pull_manifest_raw(
            &reference(registry, repository, &format!("@{subject}")),
            &RegistryAuth::Anonymous,
            &[MANIFEST_MEDIA_TYPE],
        )
        .await
        .unwrap();
    let at = reference(registry, repository, ":any");
    client
        .store_auth_if_needed(at.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    let empty = b"{}".to_vec();
    let empty_digest = digest_of(&empty);
    let bundle_digest = digest_of(&bundle);
    let bundle_size = bundle.len();
    client.push_blob(&at, empty, &empty_digest).await.unwrap();
    client.push_blob(&at, bundle, &bundle_digest).await.unwrap();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "size": 2,
            "digest": empty_digest,
            "artifactType": BUNDLE_MEDIA_TYPE,
        },
        "layers": [{"mediaType": BUNDLE_MEDIA_TYPE, "size": bundle_size, "digest": bundle_digest}],
        "annotations": {
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": SIGN_PREDICATE,
            "org.opencontainers.image.created": "2026-12-07T00:00:00Z",
        },
        "subject": {"mediaType": MANIFEST_MEDIA_TYPE, "size": subject_manifest.len(), "digest": subject},
        "artifactType": BUNDLE_MEDIA_TYPE,
    })
    .to_string()
    .into_bytes();
    let manifest_digest = digest_of(&manifest);
    let manifest_size = manifest.len();
    client
        .push_manifest_raw(
            &reference(registry, repository, &format!("@{manifest_digest}")),
            manifest,
            http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
        )
        .await
        .unwrap();
    let tag = reference(
        registry,
        repository,
        &format!(":{}", subject.replace(':', "-")),
    );
    let mut entries = match client
        .pull_manifest_raw(&tag, &RegistryAuth::Anonymous, &[INDEX_MEDIA_TYPE])
        .await
    {
        Ok((raw, _)) => serde_json::from_slice::<Value>(&raw).unwrap()["manifests"]
            .as_array()
            .unwrap()
            .clone(),
        Err(_) => Vec::new(),
    };
    entries.push(json!({
        "mediaType": MANIFEST_MEDIA_TYPE,
        "size": manifest_size,
        "digest": manifest_digest,
        "artifactType": BUNDLE_MEDIA_TYPE,
    }));
    let index = json!({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": entries});
    client
        .push_manifest_raw(
            &tag,
            index.to_string().into_bytes(),
            http::HeaderValue::from_static(INDEX_MEDIA_TYPE),
        )
        .await
        .unwrap();
}

/// What `cosign verify --key public --insecure-ignore-tlog` finds of the
/// manifest `subject` in `repository`: the bundles attached through the
/// referrers tag that carry a signature by `public` (a PEM `PUBLIC KEY`)
/// whose statement names `subject`, each as the `tag` annotation it
/// carries ("" for none). Each artifact must have the layout cosign reads
/// (one bundle layer, the subject named).
pub async fn verified_bundles(
    registry: &OciRegistry,
    repository: &str,
    subject: &str,
    public: &Path,
) -> Vec<String> {
    let client = client();
    let tag = reference(
        registry,
        repository,
        &format!(":{}", subject.replace(':', "-")),
    );
    let Ok((raw, _)) = client
        .pull_manifest_raw(&tag, &RegistryAuth::Anonymous, &[INDEX_MEDIA_TYPE])
        .await
    else {
        return Vec::new();
    };
    let index: Value = serde_json::from_slice(&raw).unwrap();
    assert_eq!(index["mediaType"], INDEX_MEDIA_TYPE);
    let der = pem::parse(std::fs::read(public).unwrap()).unwrap();
    let key = aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1,
        der.contents().to_vec(),
    );
    let mut verified = Vec::new();
    for entry in index["manifests"].as_array().unwrap() {
        assert_eq!(entry["artifactType"], BUNDLE_MEDIA_TYPE, "{entry}");
        let digest = entry["digest"].as_str().unwrap();
        let (raw, _) = client
            .pull_manifest_raw(
                &reference(registry, repository, &format!("@{digest}")),
                &RegistryAuth::Anonymous,
                &[MANIFEST_MEDIA_TYPE],
            )
            .await
            .unwrap();
        let manifest: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(manifest["artifactType"], BUNDLE_MEDIA_TYPE, "{manifest}");
        assert_eq!(manifest["subject"]["digest"], subject, "{manifest}");
        assert_eq!(
            manifest["config"]["mediaType"], "application/vnd.oci.empty.v1+json",
            "{manifest}"
        );
        let layers = manifest["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 1, "{manifest}");
        assert_eq!(layers[0]["mediaType"], BUNDLE_MEDIA_TYPE, "{manifest}");
        let blob =
            std::fs::read(registry.blob_path(layers[0]["digest"].as_str().unwrap())).unwrap();
        let bundle: Value = serde_json::from_slice(&blob).unwrap();
        assert_eq!(bundle["mediaType"], BUNDLE_MEDIA_TYPE, "{bundle}");
        let envelope = &bundle["dsseEnvelope"];
        assert_eq!(envelope["payloadType"], PAYLOAD_TYPE, "{bundle}");
        let payload = BASE64
            .decode(envelope["payload"].as_str().unwrap())
            .unwrap();
        let signatures = envelope["signatures"].as_array().unwrap();
        assert_eq!(signatures.len(), 1, "{bundle}");
        let signature = BASE64
            .decode(signatures[0]["sig"].as_str().unwrap())
            .unwrap();
        let statement: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
        assert_eq!(statement["predicateType"], SIGN_PREDICATE);
        let named = statement["subject"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["digest"]["sha256"] == subject.strip_prefix("sha256:").unwrap());
        if let Some(named) = named
            && key.verify(&pae(&payload), &signature).is_ok()
        {
            verified.push(
                named["annotations"]["tag"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
            );
        }
    }
    verified
}
