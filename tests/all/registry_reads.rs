//! What keybust reads from a registry is bounded while it arrives, and
//! comes only from where the registry rule allows: a manifest that goes
//! on is cut off at its bound, and a redirect to plain HTTP on a host
//! neither the registry's own nor named `--insecure-registry` is not
//! followed, and a layer's `urls` are never fetched.

use crate::support::fleet::{manifest_digest, push, put_reference, serve_with, variant};
use crate::support::misbehaving_registry::MisbehavingRegistry;
use crate::support::registry::OciRegistry;
use std::sync::atomic::Ordering;

/// A 256 MiB manifest is refused as too large, and keybust stops reading
/// it near the 256 KiB bound: what the registry could hand over before
/// the connection closed stays within what the sockets buffer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_past_its_bound_is_cut_off_while_it_streams() {
    let registry = MisbehavingRegistry::bottomless(256 << 20).await;
    let stack = serve_with(&[]).await;
    let answer = put_reference(&stack, &registry.reference("keybust/endpoint:huge")).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("too large"), "{}", answer.body);
    let taken = registry.taken.load(Ordering::Relaxed);
    assert!(
        taken < 32 << 20,
        "{taken} bytes of the manifest were sent before keybust stopped"
    );
}

/// A registry redirecting its blobs to plain HTTP on another host gets no
/// request there, and the pull fails; with that host named in
/// `--insecure-registry`, the redirect is followed and the pull serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirected_to_plain_http_elsewhere_is_not_fetched() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let bytes = variant("redirected");
    manifest_digest(&push(
        files.path(),
        &bytes,
        &registry.reference("keybust/endpoint:redirected"),
    ));
    let proxy = MisbehavingRegistry::redirecting_blobs(&registry).await;
    let reference = proxy.reference("keybust/endpoint:redirected");

    let stack = serve_with(&[]).await;
    let answer = put_reference(&stack, &reference).await;
    assert_eq!(answer.status, 502, "{}", answer.body);
    assert!(answer.body.contains("redirect"), "{}", answer.body);
    assert_eq!(proxy.taken.load(Ordering::Relaxed), 0);
    drop(stack);

    let stack = serve_with(&["--insecure-registry", &proxy.redirect_target]).await;
    let answer = put_reference(&stack, &reference).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(proxy.taken.load(Ordering::Relaxed), 1);
}

/// A manifest whose layer names `urls` (here after the registry lost the
/// blob, so a client falling back to them would fetch from there) is
/// refused, and nothing is fetched from those URLs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_naming_urls_is_refused_and_they_are_not_fetched() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let bytes = variant("layer-urls");
    let elsewhere = MisbehavingRegistry::serving(bytes.clone()).await;
    let url = format!("http://{}/component.wasm", elsewhere.redirect_target);
    registry
        .push_with_layer_urls("keybust/endpoint", "urls", bytes.clone(), vec![url])
        .await;
    let digest = format!("sha256:{}", keybust::digest::hex_digest(&bytes));
    std::fs::remove_file(registry.blob_path(&digest)).unwrap();

    let stack = serve_with(&[]).await;
    let answer = put_reference(&stack, &registry.reference("keybust/endpoint:urls")).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("urls"), "{}", answer.body);
    assert_eq!(elsewhere.taken.load(Ordering::Relaxed), 0);
}
