//! Cosign signatures under `--verify-key`: what keybust signs, what cosign
//! writes (made here from its published layout), and what is refused.

use crate::support::fleet::{
    ADMIN_TOKEN, cosign_payload, cosign_sign, key_pair, keybust_component, manifest_digest, push,
    push_signed, put_reference, serve, serve_with, serving, variant,
};
use crate::support::hostile_registry::HostileRegistry;
use crate::support::process::{binary, refused, refused_start};
use crate::support::registry::OciRegistry;
use crate::support::{Answered, Backend, Options, Stack, hashes};
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use std::time::{Duration, Instant};

/// With `--verify-key`, a component serves only with a cosign signature by
/// that key over its manifest digest: unsigned ones and ones signed by
/// another key are refused, logged and counted; uploads of bytes, which
/// cannot be verified, are refused; a correctly signed one serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_verify_key_only_signed_components_serve() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let (theirs, _) = key_pair(files.path(), "theirs");
    let signed = variant("signed");
    let unsigned = variant("unsigned");
    let stranger = variant("signed-by-another-key");
    let signed_tag = registry.reference("keybust/endpoint:signed");
    let unsigned_tag = registry.reference("keybust/endpoint:unsigned");
    let stranger_tag = registry.reference("keybust/endpoint:stranger");
    push_signed(files.path(), &signed, &signed_tag, &ours);
    push(files.path(), &unsigned, &unsigned_tag);
    push_signed(files.path(), &stranger, &stranger_tag, &theirs);

    let stack = serve_with(&["--verify-key", our_public.to_str().unwrap()]).await;
    for (what, tag) in [("unsigned", &unsigned_tag), ("another key", &stranger_tag)] {
        let answer = put_reference(&stack, tag).await;
        assert_eq!(answer.status, 422, "{what}: {}", answer.body);
        assert!(
            answer.body.contains("no valid signature"),
            "{what}: {}",
            answer.body
        );
        assert_eq!(
            serving(&stack).await["digest"],
            hex_digest(EMBEDDED_COMPONENT),
            "{what}"
        );
    }
    let upload = stack
        .admin(reqwest::Method::PUT, "/admin/component")
        .bearer_auth(ADMIN_TOKEN)
        .body(signed.clone())
        .answer()
        .await;
    assert_eq!(upload.status, 422, "{}", upload.body);
    stack
        .wait_for_metric("keybust_component_swaps_total{result=\"failed\"} 3")
        .await;
    assert!(stack.keybust.logs().contains("admin pull refused"));

    let answer = put_reference(&stack, &signed_tag).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(serving(&stack).await["digest"], hex_digest(&signed));
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    // An unsigned component does not start a fresh instance either.
    let stderr = refused_start(&[
        "--component",
        &unsigned_tag,
        "--verify-key",
        our_public.to_str().unwrap(),
    ]);
    assert!(stderr.contains("no valid signature"), "{stderr}");
}

/// Under `--verify-key`, publishing and signing are two steps. A follower
/// that polls between them finds the new version without a signature; once
/// `keybust component sign` signs it, the follower takes it, without the
/// tag moving again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_a_version_signed_after_it_was_published() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let tag = registry.reference("keybust/endpoint:live");
    push_signed(files.path(), EMBEDDED_COMPONENT, &tag, &ours);
    let stack = serve(
        &tag,
        &[
            "--follow-interval",
            "1s",
            "--verify-key",
            our_public.to_str().unwrap(),
        ],
    )
    .await;

    let next = variant("signed-after-publishing");
    let pushed = manifest_digest(&push(files.path(), &next, &tag));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !stack
        .keybust
        .logs()
        .lines()
        .any(|line| line.contains("followed tag") && line.contains("signature"))
    {
        assert!(
            Instant::now() < deadline,
            "no poll found the unsigned version:\n{}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );

    // Signed with this build's keybust, whichever binary serves.
    let signed = std::process::Command::new(env!("CARGO_BIN_EXE_keybust"))
        .args(["component", "sign", &tag, "--sign-key"])
        .arg(&ours)
        .env_clear()
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap();
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&signed.stdout).contains(&format!("manifest {pushed}")),
        "{}",
        String::from_utf8_lossy(&signed.stdout)
    );
    let signed_at = Instant::now();
    while serving(&stack).await["digest"] != hex_digest(&next) {
        assert!(
            signed_at.elapsed() < Duration::from_secs(10),
            "the signed version was not taken:\n{}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack
        .keybust
        .assert_logged("followed the tag to a new version")
        .await;
}

/// A registry that names another manifest's digest, in the `Location` of
/// a push or the `Docker-Content-Digest` of a tag, does not get that
/// manifest signed: `push` and `sign` sign the digest of the manifest
/// bytes keybust wrote or fetched, and print that one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_naming_another_digest_does_not_get_it_signed() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, _) = key_pair(files.path(), "ours");
    // The registry owner's own component, unsigned: the decoy.
    let decoy = manifest_digest(&push(
        files.path(),
        &variant("the registry's own"),
        &registry.reference("keybust/endpoint:decoy"),
    ));
    let hostile = HostileRegistry::start(&registry, &decoy).await;

    let pushed = push_signed(
        files.path(),
        &variant("ours"),
        &hostile.reference("keybust/endpoint:stable"),
        &ours,
    );
    let stored = registry.manifest_digest("keybust/endpoint", "stable").await;
    assert_eq!(manifest_digest(&pushed), stored, "{pushed}");
    assert!(registry.is_signed("keybust/endpoint", &stored).await);
    assert!(!registry.is_signed("keybust/endpoint", &decoy).await);

    // Signing by tag, through the same registry, signs what the tag's
    // manifest bytes hash to.
    let later = manifest_digest(&push(
        files.path(),
        &variant("published unsigned"),
        &registry.reference("keybust/endpoint:later"),
    ));
    let signed = keybust_component(&[
        "sign",
        &hostile.reference("keybust/endpoint:later"),
        "--sign-key",
        ours.to_str().unwrap(),
    ]);
    let printed = String::from_utf8_lossy(&signed.stdout);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(printed.contains(&format!("manifest {later}")), "{printed}");
    assert!(registry.is_signed("keybust/endpoint", &later).await);
    assert!(!registry.is_signed("keybust/endpoint", &decoy).await);
}

/// `sign` signs only a component: a tag naming anything else in the
/// registry is refused, and nothing is signed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sign_refuses_what_is_not_a_component() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, _) = key_pair(files.path(), "ours");
    registry
        .push_cosign_signatures("keybust/endpoint", "sha256-0000", &[])
        .await;
    let tag = format!("{}.sig", "sha256-0000".replace(':', "-"));
    let not_a_component = registry.manifest_digest("keybust/endpoint", &tag).await;
    let signed = keybust_component(&[
        "sign",
        &registry.reference(&format!("keybust/endpoint:{tag}")),
        "--sign-key",
        ours.to_str().unwrap(),
    ]);
    assert!(!signed.status.success());
    let said = String::from_utf8_lossy(&signed.stderr);
    assert!(said.contains("not a wasm component artifact"), "{said}");
    assert!(
        !registry
            .is_signed("keybust/endpoint", &not_a_component)
            .await
    );
}

/// Signatures written from cosign's published layout, not by keybust: one
/// by the verify key over the digest serves. One by the same key whose
/// payload names another digest (a signature copied from another version)
/// is a refusal, not "no signature yet", and so is one by another key.
/// `keybust component sign` keeps other keys' signatures in the image and
/// replaces its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_in_cosigns_layout_are_read_and_kept() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let (theirs, _) = key_pair(files.path(), "theirs");
    let repository = format!("127.0.0.1:{}/keybust/endpoint", registry.port);
    let mut digests = Vec::new();
    for name in ["cosign-signed", "copied-signature", "cosign-other-key"] {
        let tag = registry.reference(&format!("keybust/endpoint:{name}"));
        let digest = manifest_digest(&push(files.path(), &variant(name), &tag));
        digests.push((tag, digest));
    }
    let [
        (good_tag, good),
        (copied_tag, copied),
        (stranger_tag, stranger),
    ] = digests.try_into().unwrap();
    let good_payload = cosign_payload(&repository, &good, "cosign-signed");
    registry
        .push_cosign_signatures(
            "keybust/endpoint",
            &good,
            &[(good_payload.clone(), cosign_sign(&ours, &good_payload))],
        )
        .await;
    registry
        .push_cosign_signatures(
            "keybust/endpoint",
            &copied,
            &[(good_payload.clone(), cosign_sign(&ours, &good_payload))],
        )
        .await;
    let stranger_payload = cosign_payload(&repository, &stranger, "cosign-other-key");
    registry
        .push_cosign_signatures(
            "keybust/endpoint",
            &stranger,
            &[(
                stranger_payload.clone(),
                cosign_sign(&theirs, &stranger_payload),
            )],
        )
        .await;

    let stack = serve_with(&["--verify-key", our_public.to_str().unwrap()]).await;
    for (what, tag) in [
        ("another digest", &copied_tag),
        ("another key", &stranger_tag),
    ] {
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
    let answer = put_reference(&stack, &good_tag).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(&variant("cosign-signed"))
    );

    // Another key's signature is added beside ours; signing again with ours
    // replaces ours.
    for key in [&theirs, &ours] {
        let signed = crate::support::fleet::keybust_component(&[
            "sign",
            &good_tag,
            "--sign-key",
            key.to_str().unwrap(),
        ]);
        assert!(
            signed.status.success(),
            "{}",
            String::from_utf8_lossy(&signed.stderr)
        );
    }
    assert_eq!(registry.signature_count("keybust/endpoint", &good).await, 2);
}

/// Rotating `--verify-key` drops the versions only the old key signed: a
/// restart under the new key does not serve the version recorded under
/// the old one, and the registry's copy, which the new key does not
/// verify, is said to be refused, not unreachable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_verify_key_does_not_restore_what_only_the_old_key_signed() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let (old, old_public) = key_pair(files.path(), "old");
    let (_, new_public) = key_pair(files.path(), "new");
    let tag = registry.reference("keybust/endpoint:stable");
    let signed_by_old = variant("signed by the old key");
    push_signed(files.path(), &signed_by_old, &tag, &old);

    let options = Options {
        args: [
            "--component",
            &tag,
            "--verify-key",
            old_public.to_str().unwrap(),
            "--admin-token",
            ADMIN_TOKEN,
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            ("DOCKER_CONFIG", "/nonexistent".to_owned()),
            ("KEYBUST_STATE_DIR", state.path().display().to_string()),
        ],
        ..Options::default()
    };
    let mut first = Stack::with(Backend::Embedded, options).await;
    assert_eq!(serving(&first).await["digest"], hex_digest(&signed_by_old));
    first.keybust.signal(libc::SIGTERM);
    assert!(first.keybust.wait_exit(Duration::from_secs(20)).success());

    let mut rotated = std::process::Command::new(binary());
    rotated
        .args(["serve", "--component", &tag, "--verify-key"])
        .arg(&new_public)
        .env_clear()
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_CACHE", "embedded")
        .env("KEYBUST_STATE_DIR", state.path())
        .env("DOCKER_CONFIG", "/nonexistent");
    let said = refused(rotated);
    assert!(
        said.contains("the configured component is refused"),
        "{said}"
    );
    assert!(
        said.contains("no earlier version of it is recorded"),
        "{said}"
    );
}

/// A signature binds the tag it was made for: a tag moved to a version
/// signed only for another tag (a canary promoted by moving `stable`) is
/// refused through that tag, saying how to sign it for it; pinned by
/// digest it is taken, and once signed for `stable` it serves through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_for_another_tag_does_not_approve_this_one() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let canary = registry.reference("keybust/endpoint:canary");
    let digest = manifest_digest(&push_signed(
        files.path(),
        &variant("promoted"),
        &canary,
        &ours,
    ));
    registry.retag("keybust/endpoint", "canary", "stable").await;
    let stable = registry.reference("keybust/endpoint:stable");

    let stack = serve_with(&["--verify-key", our_public.to_str().unwrap()]).await;
    let answer = put_reference(&stack, &stable).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(
        answer.body.contains("not for the tag stable"),
        "{}",
        answer.body
    );
    assert_ne!(
        serving(&stack).await["digest"],
        hex_digest(&variant("promoted"))
    );
    let pinned = format!("{}@{digest}", registry.reference("keybust/endpoint"));
    let answer = put_reference(&stack, &pinned).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let signed = keybust_component(&["sign", &stable, "--sign-key", ours.to_str().unwrap()]);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    let answer = put_reference(&stack, &stable).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(&variant("promoted"))
    );
}

/// A tag moved back to a version signed before the newest one taken
/// through it is refused (the rollback the tag's movers could otherwise
/// make), saying how an operator forces it; forced through the admin API
/// with `allow_older`, it serves and the audit log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_moved_back_to_an_older_signed_version_is_refused_unless_forced() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let (ours, our_public) = key_pair(files.path(), "ours");
    let stable = registry.reference("keybust/endpoint:stable");
    push_signed(files.path(), &variant("first"), &stable, &ours);
    registry.retag("keybust/endpoint", "stable", "first").await;
    // Signing times are to the second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    push_signed(files.path(), &variant("second"), &stable, &ours);

    let stack = serve_with(&["--verify-key", our_public.to_str().unwrap()]).await;
    let answer = put_reference(&stack, &stable).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    registry.retag("keybust/endpoint", "first", "stable").await;
    let answer = put_reference(&stack, &stable).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("allow_older"), "{}", answer.body);
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(&variant("second"))
    );

    let forced = stack
        .admin(reqwest::Method::PUT, "/admin/component")
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "reference": stable, "allow_older": true }).to_string())
        .answer()
        .await;
    assert_eq!(forced.status, 200, "{}", forced.body);
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(&variant("first"))
    );
    assert!(stack.keybust.logs().contains("allow_older"));
}
