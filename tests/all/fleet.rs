//! Fleets: components published to a real OCI registry with `keybust
//! component push`, checked with `keybust component check`, pulled at
//! start, pinned by digest, followed by every instance, and swapped in by
//! reference through the admin API.

use crate::support::fleet::{
    OTHER_WORLD, key_pair, keybust_component, manifest_digest, push, put_reference, serve,
    serve_with, serving, variant,
};
use crate::support::process::refused_start;
use crate::support::registry::OciRegistry;
use crate::support::{self, hashes};
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use serde_json::Value;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Three instances follow one tag under load: a new push reaches all three
/// within 5 s with no failed request; broken pushes (bytes that are not a
/// component, a component for another world, one that fits but does
/// nothing) leave all three serving, and each one logs and counts the
/// refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_follows_a_tag() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let tag = registry.reference("keybust/endpoint:stable");
    push(files.path(), EMBEDDED_COMPONENT, &tag);

    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(serve(&tag, &["--follow-interval", "1s"]).await);
    }
    for stack in &fleet {
        assert_eq!(
            serving(stack).await["digest"],
            hex_digest(EMBEDDED_COMPONENT)
        );
        assert_eq!(serving(stack).await["source"], tag);
    }
    let fleet = Arc::new(fleet);

    // 16 connections keep sending valid requests across the fleet.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..16 {
        let (fleet, stop, failures, sent) =
            (fleet.clone(), stop.clone(), failures.clone(), sent.clone());
        clients.push(tokio::spawn(async move {
            let stack = &fleet[client % 3];
            while !stop.load(Ordering::Relaxed) {
                let answer = stack.invalidate(hashes::OWNED).await;
                sent.fetch_add(1, Ordering::Relaxed);
                if answer.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let next = variant("fleet-v2");
    let pushed_at = Instant::now();
    push(files.path(), &next, &tag);
    for stack in fleet.iter() {
        while serving(stack).await["digest"] != hex_digest(&next) {
            assert!(
                pushed_at.elapsed() < Duration::from_secs(5),
                "an instance did not follow within 5 s:\n{}",
                stack.keybust.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Broken pushes, one after the other: each instance refuses each. The
    // last one fits the world but does nothing (the contract gate's
    // business).
    let nothing = tokio::task::spawn_blocking(|| support::test_programs().to_vec())
        .await
        .unwrap();
    for (refusals, (what, bytes)) in [
        ("not a component", b"definitely not wasm".to_vec()),
        ("another world", OTHER_WORLD.to_vec()),
        ("does nothing", nothing),
    ]
    .into_iter()
    .enumerate()
    {
        let refusals = refusals + 1;
        registry
            .push_unchecked("keybust/endpoint", "stable", bytes)
            .await;
        for stack in fleet.iter() {
            stack
                .wait_for_metric(&format!(
                    "keybust_follow_polls_total{{result=\"refused\"}} {refusals}"
                ))
                .await;
            assert_eq!(serving(stack).await["digest"], hex_digest(&next), "{what}");
        }
    }
    // Refused versions are not tried again while the tag stays put.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    for stack in fleet.iter() {
        let metrics = stack.metrics().await;
        assert!(
            metrics.contains("keybust_follow_polls_total{result=\"refused\"} 3\n"),
            "{metrics}"
        );
        assert!(
            metrics
                .contains("keybust_rollout_decisions_total{stage=\"gate\",result=\"refused\"} 1\n"),
            "{metrics}"
        );
        let unchanged = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("keybust_follow_polls_total{result=\"unchanged\"} ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0);
        assert!(unchanged >= 1.0, "{metrics}");
        let logs = stack.keybust.logs();
        assert!(logs.contains("not WebAssembly"), "{logs}");
        assert!(logs.contains("does not fit"), "{logs}");
        assert!(logs.contains("contract row E1"), "{logs}");
        assert!(logs.contains("the followed tag's new version is refused"));
    }

    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    assert!(sent.load(Ordering::Relaxed) > 100, "the load did not run");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "failed requests");
}

/// A digest-pinned reference serves exactly those bytes; bytes that do not
/// match the digest that names them are refused at start, by `check`, and
/// by the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_reference_is_checked_against_the_bytes_pulled() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let tag = registry.reference("keybust/pinned:v1");
    let pushed = push(files.path(), EMBEDDED_COMPONENT, &tag);
    let manifest = manifest_digest(&pushed);
    let pinned = registry.reference(&format!("keybust/pinned@{manifest}"));

    let stack = serve(&pinned, &[]).await;
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
    let check = keybust_component(&["check", &pinned]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    // The registry's copy of the component goes bad (same length).
    let blob = registry.blob_path(&format!("sha256:{}", hex_digest(EMBEDDED_COMPONENT)));
    let mut bytes = std::fs::read(&blob).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&blob, &bytes).unwrap();

    let check = keybust_component(&["check", &pinned]);
    assert_eq!(check.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&check.stderr).contains("digest mismatch"));

    let answer = put_reference(&stack, &pinned).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    assert!(answer.body.contains("digest mismatch"), "{}", answer.body);

    let stderr = refused_start(&["--component", &pinned]);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(
        stderr.contains("no earlier version of it is recorded"),
        "{stderr}"
    );
}

/// `check` and `push` gate a rollout: a component for another world is
/// refused by both, with the reason, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_push_refuse_what_a_swap_would() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let good = files.path().join("good.wasm");
    std::fs::write(&good, EMBEDDED_COMPONENT).unwrap();
    let bad = files.path().join("bad.wasm");
    std::fs::write(&bad, OTHER_WORLD).unwrap();

    let ok = keybust_component(&["check", good.to_str().unwrap()]);
    assert!(ok.status.success());
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(said.contains(&hex_digest(EMBEDDED_COMPONENT)), "{said}");
    assert!(
        said.contains("keybust:gateway/endpoint (wasi:http 0.2)"),
        "{said}"
    );
    // The wasi:http 0.3 build is checked, and named, as what it is.
    let p3 = files.path().join("p3.wasm");
    let p3_bytes = tokio::task::spawn_blocking(support::programs::endpoint_p3)
        .await
        .unwrap();
    std::fs::write(&p3, p3_bytes).unwrap();
    let ok = keybust_component(&["check", p3.to_str().unwrap()]);
    assert!(ok.status.success());
    let said = String::from_utf8_lossy(&ok.stdout);
    assert!(said.contains(&hex_digest(p3_bytes)), "{said}");
    assert!(
        said.contains("keybust:gateway/endpoint-p3 (wasi:http 0.3)"),
        "{said}"
    );
    let refused = keybust_component(&["check", bad.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("does not fit"));

    let tag = registry.reference("keybust/gate:v1");
    let refused = keybust_component(&["push", bad.to_str().unwrap(), &tag]);
    assert_eq!(refused.status.code(), Some(1));
    let check = keybust_component(&["check", &tag]);
    assert!(!check.status.success(), "nothing was published");
}

/// `push` publishes the layout `wkg oci push` writes and other wasm tools
/// read: an OCI image manifest with one `application/wasm` layer, and a
/// wasm config that names the component's layer, imports and exports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_writes_the_wasm_artifact_layout() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let pushed = push(
        files.path(),
        EMBEDDED_COMPONENT,
        &registry.reference("keybust/layout:v1"),
    );
    let blob = |digest: &str| -> Value {
        serde_json::from_slice(&std::fs::read(registry.blob_path(digest)).unwrap()).unwrap()
    };
    let manifest = blob(&manifest_digest(&pushed));
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let component = format!("sha256:{}", hex_digest(EMBEDDED_COMPONENT));
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{manifest}");
    assert_eq!(layers[0]["mediaType"], "application/wasm");
    assert_eq!(layers[0]["digest"], component.as_str());
    assert_eq!(layers[0]["size"], EMBEDDED_COMPONENT.len());

    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    assert_eq!(config["architecture"], "wasm", "{config}");
    assert_eq!(config["os"], "wasip2");
    assert_eq!(config["layerDigests"], serde_json::json!([component]));
    let created = config["created"].as_str().unwrap_or_default();
    assert!(
        created.starts_with("20") && created.contains('T'),
        "{config}"
    );
    let names = |key: &str| -> Vec<String> {
        config["component"][key]
            .as_array()
            .unwrap_or_else(|| panic!("no component.{key}: {config}"))
            .iter()
            .map(|name| name.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names("exports"),
        ["wasi:http/incoming-handler@0.2.12"],
        "{config}"
    );
    let imports = names("imports");
    for import in [
        "keybust:gateway/convex@0.1.0",
        "keybust:gateway/cache@0.1.0",
        "keybust:gateway/session@0.1.0",
        "keybust:gateway/origins@0.1.0",
    ] {
        assert!(imports.iter().any(|name| name == import), "{imports:?}");
    }
    assert!(
        imports
            .iter()
            .all(|name| name.contains(':') && name.contains('/')),
        "only interfaces, by their full names: {imports:?}"
    );
}

/// The admin API swaps in a component named by reference, on one instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_pulls_a_reference() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let next = variant("by-reference");
    let tag = registry.reference("keybust/admin:v2");
    push(files.path(), &next, &tag);
    let stack = serve_with(&[]).await;
    let answer = put_reference(&stack, &tag).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let now = serving(&stack).await;
    assert_eq!(now["digest"], hex_digest(&next));
    assert_eq!(now["source"], tag);
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    // A tag or digest the registry does not hold: 404, not "cannot reach".
    let missing_digest = format!(
        "{}@sha256:{}",
        registry.reference("keybust/admin"),
        "0".repeat(64)
    );
    for missing in [
        registry.reference("keybust/admin:no-such-tag"),
        missing_digest,
    ] {
        let answer = put_reference(&stack, &missing).await;
        assert_eq!(answer.status, 404, "{missing}: {}", answer.body);
        assert!(
            answer.body.contains("not in the registry"),
            "{}",
            answer.body
        );
    }
    assert_eq!(serving(&stack).await["digest"], hex_digest(&next));
}

/// A registry that wants a login gets it from KEYBUST_REGISTRY_USERNAME and
/// KEYBUST_REGISTRY_PASSWORD, or from a docker config.json; without either,
/// it refuses, and keybust says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_credentials_come_from_the_environment_or_a_docker_config() {
    let registry = tokio::task::spawn_blocking(|| {
        OciRegistry::start_with_login(Some(("deployer", "s3cret-registry-pw")))
    })
    .await
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("endpoint.wasm");
    std::fs::write(&file, EMBEDDED_COMPONENT).unwrap();
    let tag = registry.reference("keybust/private:v1");
    let run = |args: &[&str], env: &[(&str, String)]| {
        std::process::Command::new(support::process::binary())
            .args(args)
            .env_clear()
            .env("DOCKER_CONFIG", "/nonexistent")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap()
    };

    let anonymous = run(&["component", "push", file.to_str().unwrap(), &tag], &[]);
    assert!(
        !anonymous.status.success(),
        "an anonymous push must be refused"
    );
    let login = [
        ("KEYBUST_REGISTRY_USERNAME", "deployer".to_owned()),
        ("KEYBUST_REGISTRY_PASSWORD", "s3cret-registry-pw".to_owned()),
    ];
    let pushed = run(&["component", "push", file.to_str().unwrap(), &tag], &login);
    assert!(
        pushed.status.success(),
        "{}",
        String::from_utf8_lossy(&pushed.stderr)
    );

    // `docker login` writes base64("user:password") under the registry's host.
    let docker = files.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let host = format!("127.0.0.1:{}", registry.port);
    std::fs::write(
        docker.join("config.json"),
        serde_json::json!({
            "auths": { host: { "auth": base64_login("deployer", "s3cret-registry-pw") } }
        })
        .to_string(),
    )
    .unwrap();
    let checked = run(
        &["component", "check", &tag],
        &[("DOCKER_CONFIG", docker.display().to_string())],
    );
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let refused = run(&["component", "check", &tag], &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!stderr.contains("s3cret-registry-pw"), "{stderr}");
}

fn base64_login(user: &str, password: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// `--follow-interval` is refused, with the reason, without a tag to follow
/// or outside 1 s to 24 h; so is a file with `--verify-key`.
#[test]
fn unusable_follow_and_verify_settings_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let pinned = "oci://127.0.0.1:5000/k@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let file = dir.path().join("endpoint.wasm");
    std::fs::write(&file, EMBEDDED_COMPONENT).unwrap();
    let key = dir.path().join("cosign.pub");
    let (_, public) = key_pair(dir.path(), "cosign");
    std::fs::rename(public, &key).unwrap();
    let cases: [(Vec<&str>, &str); 4] = [
        (vec!["--follow-interval", "1s"], "--follow-interval needs"),
        (
            vec!["--component", pinned, "--follow-interval", "1s"],
            "--follow-interval needs",
        ),
        (
            vec![
                "--component",
                "oci://127.0.0.1:5000/k:v1",
                "--follow-interval",
                "0s",
            ],
            "must be from 1s to 24h",
        ),
        (
            vec![
                "--component",
                file.to_str().unwrap(),
                "--verify-key",
                key.to_str().unwrap(),
            ],
            "a file cannot be verified",
        ),
    ];
    for (args, reason) in cases {
        let stderr = refused_start(&args);
        assert!(stderr.contains(reason), "{args:?}: {stderr}");
    }
}
