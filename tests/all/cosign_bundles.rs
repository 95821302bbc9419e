//! Cosign 3's signature layout under `--verify-key`: a Sigstore bundle
//! attached to the component manifest through the referrers API (here its
//! fallback tag), made in the tests from the published format. keybust
//! reads it as it reads the legacy `.sig` image, and writes it beside
//! that one.

use crate::support::cosign_bundle::{self, verified_bundles};
use crate::support::fleet::{
    key_pair, keybust_component, manifest_digest, push, push_signed, put_reference, serve_with,
    serving, variant,
};
use crate::support::registry::OciRegistry;
use keybust::digest::hex_digest;

/// A bundle by the verify key over the manifest digest serves. One by
/// another key, or by the key over another digest (copied from another
/// version), is a refusal, not "no signature yet". An attestation signed
/// by the key (an SBOM's predicate, not cosign's signature predicate)
/// approves nothing: alone, it leaves the version without a signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_signed_in_cosigns_bundle_layout_serves() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let (theirs, _) = key_pair(files.path(), "theirs");
    let mut pushed = Vec::new();
    for name in [
        "bundle-signed",
        "bundle-copied",
        "bundle-other-key",
        "bundle-sbom",
    ] {
        let tag = registry.reference(&format!("keybust/endpoint:{name}"));
        let digest = manifest_digest(&push(files.path(), &variant(name), &tag));
        pushed.push((tag, digest));
    }
    let [
        (good_tag, good),
        (copied_tag, copied),
        (other_tag, other),
        (sbom_tag, sbom),
    ] = pushed.try_into().unwrap();
    let repository = "keybust/endpoint";
    for (subject, bundle) in [
        (
            &good,
            cosign_bundle::signature(&ours, &good, "bundle-signed"),
        ),
        (
            &copied,
            cosign_bundle::signature(&ours, &good, "bundle-copied"),
        ),
        (
            &other,
            cosign_bundle::signature(&theirs, &other, "bundle-other-key"),
        ),
        (
            &sbom,
            cosign_bundle::bundle(&ours, &sbom, "https://spdx.dev/Document", "bundle-sbom"),
        ),
    ] {
        cosign_bundle::attach(&registry, repository, subject, bundle).await;
    }

    let stack = serve_with(&["--verify-key", our_public.to_str().unwrap()]).await;
    for (what, tag) in [("another digest", &copied_tag), ("another key", &other_tag)] {
        let answer = put_reference(&stack, tag).await;
        assert_eq!(answer.status, 422, "{what}: {}", answer.body);
        assert!(
            answer.body.contains("no valid signature"),
            "{what}: {}",
            answer.body
        );
        assert!(
            !answer.body.contains("it has no signature"),
            "{what}: {}",
            answer.body
        );
    }
    let answer = put_reference(&stack, &sbom_tag).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body.contains("it has no signature"),
        "{}",
        answer.body
    );

    let answer = put_reference(&stack, &good_tag).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(&variant("bundle-signed"))
    );
}

/// `keybust component push --sign-key` and `component sign` write a bundle
/// that cosign's published layout reads (one per key: signing again adds
/// none), listed in the referrers tag beside bundles already there, and
/// the legacy `.sig` image for older readers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keybust_signs_in_cosigns_bundle_layout_and_the_legacy_one() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let (theirs, their_public) = key_pair(files.path(), "theirs");
    let repository = "keybust/endpoint";
    let tag = registry.reference("keybust/endpoint:signed");
    let digest = manifest_digest(&push_signed(
        files.path(),
        &variant("keybust-signed"),
        &tag,
        &ours,
    ));
    assert_eq!(
        verified_bundles(&registry, repository, &digest, &our_public).await,
        ["signed"]
    );
    assert!(
        verified_bundles(&registry, repository, &digest, &their_public)
            .await
            .is_empty()
    );
    assert!(registry.is_signed(repository, &digest).await);

    for key in [&ours, &theirs] {
        let signed = keybust_component(&["sign", &tag, "--sign-key", key.to_str().unwrap()]);
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
    }
    assert_eq!(
        verified_bundles(&registry, repository, &digest, &our_public).await,
        ["signed"]
    );
    assert_eq!(
        verified_bundles(&registry, repository, &digest, &their_public).await,
        ["signed"]
    );

    // An instance verifying with the other key takes what that key signed.
    let stack = serve_with(&["--verify-key", their_public.to_str().unwrap()]).await;
    let answer = put_reference(&stack, &tag).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}
