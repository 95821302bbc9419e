//! Swapping the component in place: the admin API, the watched file and
//! SIGHUP, under load, with bad components refused.

use crate::support::load::Load;
use crate::support::{self, Answer, Answered, Backend, Options, Stack, hashes};
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "test-admin-token-5be0";

fn variant(tag: &str) -> Vec<u8> {
    support::variant(EMBEDDED_COMPONENT, tag)
}

/// Writes `bytes` to `path` the way deploy tools do: a new file renamed over the old.
fn deploy(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("wasm.partial");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn component(stack: &Stack) -> Value {
    let text = reqwest::get(stack.keybust.admin_url("/admin/component"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

async fn put(stack: &Stack, token: Option<&str>, bytes: Vec<u8>) -> Answer {
    let mut request = stack
        .admin(reqwest::Method::PUT, "/admin/component")
        .body(bytes);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.answer().await
}

/// `POST /admin/component/rollback` with the admin token.
async fn rollback(stack: &Stack) -> Answer {
    stack
        .admin(reqwest::Method::POST, "/admin/component/rollback")
        .bearer_auth(ADMIN_TOKEN)
        .answer()
        .await
}

async fn wait_for_digest(stack: &Stack, digest: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if component(stack).await["digest"] == digest {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "digest never became {digest}:\n{}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn with_admin_token(extra: Vec<String>) -> Options {
    let mut args = vec!["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()];
    args.extend(extra);
    Options {
        args,
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_api_describes_swaps_and_rolls_back() {
    let stack = Stack::with(Backend::Embedded, with_admin_token(vec![])).await;
    let first = component(&stack).await;
    assert_eq!(first["digest"], hex_digest(EMBEDDED_COMPONENT));
    assert_eq!(first["source"], "embedded");
    assert!(first["loaded_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(first["previous_digest"], Value::Null);

    let next = variant("one");
    let answer = put(&stack, Some(ADMIN_TOKEN), next.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let swapped: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(swapped["digest"], hex_digest(&next));
    assert_eq!(swapped["source"], "admin");
    assert_eq!(swapped["previous_digest"], hex_digest(EMBEDDED_COMPONENT));
    assert_eq!(component(&stack).await["digest"], hex_digest(&next));
    // It serves.
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    let answer = rollback(&stack).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let now = component(&stack).await;
    assert_eq!(now["digest"], hex_digest(EMBEDDED_COMPONENT));
    assert_eq!(now["previous_digest"], hex_digest(&next));
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_components_are_refused_and_the_old_one_keeps_serving() {
    let stack = Stack::with(Backend::Embedded, with_admin_token(vec![])).await;
    let digest = hex_digest(EMBEDDED_COMPONENT);
    let core_module = b"\0asm\x01\0\0\0".to_vec();
    let empty_component = b"\0asm\x0d\0\x01\0".to_vec();
    let cases: [(&str, Vec<u8>, &str); 4] = [
        (
            "garbage",
            b"definitely not wasm".to_vec(),
            "not WebAssembly",
        ),
        (
            "core module",
            core_module,
            "a core WebAssembly module, not a component",
        ),
        (
            "component for another world",
            empty_component,
            "does not fit",
        ),
        (
            "truncated component",
            EMBEDDED_COMPONENT[..EMBEDDED_COMPONENT.len() / 2].to_vec(),
            "not a valid component",
        ),
    ];
    for (what, bytes, reason) in cases {
        let answer = put(&stack, Some(ADMIN_TOKEN), bytes).await;
        assert_eq!(answer.status, 422, "{what}: {}", answer.body);
        assert!(answer.body.contains(reason), "{what}: {}", answer.body);
        assert_eq!(component(&stack).await["digest"], digest, "{what}");
        stack
            .invalidate(hashes::OWNED)
            .await
            .assert_json(200, r#"{"ok":true}"#);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_mutations_need_the_token() {
    // No token configured: refused.
    let stack = Stack::start(Backend::Embedded).await;
    assert_eq!(
        put(&stack, Some("anything"), variant("x")).await.status,
        403
    );
    let rollback = stack
        .admin(reqwest::Method::POST, "/admin/component/rollback")
        .send()
        .await
        .unwrap();
    assert_eq!(rollback.status(), 403);
    // Token configured: missing is 401, wrong is 403.
    let stack = Stack::with(Backend::Embedded, with_admin_token(vec![])).await;
    assert_eq!(put(&stack, None, variant("x")).await.status, 401);
    assert_eq!(
        put(&stack, Some("wrong-token"), variant("x")).await.status,
        403
    );
    assert_eq!(
        component(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
    stack.keybust.assert_logs_clean(&[ADMIN_TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_logged_and_the_old_one_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoint.wasm");
    deploy(&path, EMBEDDED_COMPONENT);
    let options = Options {
        args: vec!["--component".into(), path.display().to_string()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    assert_eq!(
        component(&stack).await["source"],
        path.display().to_string()
    );
    deploy(&path, b"not a component");
    stack.keybust.assert_logged("component reload failed").await;
    stack.keybust.assert_logged("not WebAssembly").await;
    assert_eq!(
        component(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
    // SIGHUP re-reads the same bad file and refuses it again.
    stack.keybust.signal(libc::SIGHUP);
    stack.keybust.assert_logged("SIGHUP").await;
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
}

/// 32 clients send valid requests for at least 10 s while 50 swaps land,
/// alternating between two builds, a third each through the admin API,
/// SIGHUP and the watched file. No request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_drop_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoint.wasm");
    let builds = [variant("a"), variant("b")];
    let digests = [hex_digest(&builds[0]), hex_digest(&builds[1])];
    deploy(&path, &builds[0]);
    let options = with_admin_token(vec!["--component".into(), path.display().to_string()]);
    let stack = Arc::new(Stack::with(Backend::Redis, options).await);
    wait_for_digest(&stack, &digests[0]).await;

    let load = Load::start(&stack, 32);

    let started = Instant::now();
    // serving: index into `builds`; file: what the file holds.
    let (mut serving, mut file) = (0usize, 0usize);
    for step in 0..50 {
        let next = 1 - serving;
        match step % 3 {
            0 => {
                let answer = put(&stack, Some(ADMIN_TOKEN), builds[next].clone()).await;
                assert_eq!(answer.status, 200, "{}", answer.body);
            }
            1 => {
                // The file still holds the other build: SIGHUP brings it back.
                assert_eq!(file, next);
                stack.keybust.signal(libc::SIGHUP);
            }
            _ => {
                deploy(&path, &builds[next]);
                file = next;
            }
        }
        serving = next;
        wait_for_digest(&stack, &digests[serving]).await;
    }
    let swaps_took = started.elapsed();
    while started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (sent, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 500, "only {sent} requests in 10 s");
    assert_eq!(component(&stack).await["digest"], digests[serving]);

    let metrics = reqwest::get(stack.keybust.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ok_swaps = metric_value(
        &metrics,
        "keybust_component_swaps_total",
        &[("result", "ok")],
    );
    assert_eq!(ok_swaps, Some(50.0), "swaps took {swaps_took:?}\n{metrics}");
    assert_eq!(
        metric_value(
            &metrics,
            "keybust_component_swaps_total",
            &[("result", "failed")]
        ),
        Some(0.0)
    );
}

fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).unwrap();
    scrape
        .samples
        .iter()
        .find(|sample| {
            sample.metric == name && labels.iter().all(|(k, v)| sample.labels.get(k) == Some(*v))
        })
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

/// The same bytes twice (a retried upload, or the watch and a SIGHUP on one
/// file) change nothing: the version before stays the rollback target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_swap_keeps_the_rollback_target() {
    let stack = Stack::with(Backend::Embedded, with_admin_token(vec![])).await;
    let embedded = hex_digest(EMBEDDED_COMPONENT);
    let next = variant("repeated");
    let next_digest = hex_digest(&next);
    let first = put(&stack, Some(ADMIN_TOKEN), next.clone()).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let again = put(&stack, Some(ADMIN_TOKEN), next).await;
    assert_eq!(again.status, 200, "{}", again.body);
    let again: Value = serde_json::from_str(&again.body).unwrap();
    assert_eq!(again["already_serving"], true, "{again}");
    let now = component(&stack).await;
    assert_eq!(now["digest"], next_digest.as_str());
    assert_eq!(now["previous_digest"], embedded.as_str(), "{now}");
    assert_eq!(rollback(&stack).await.status, 200);
    assert_eq!(component(&stack).await["digest"], embedded.as_str());
}

/// A Kubernetes ConfigMap (or Secret) mount: the component's name is a
/// symbolic link into `..data`, itself a link to a timestamped directory.
/// An update writes a new directory and renames a new `..data` link over
/// the old one; the component's own name is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_update_is_picked_up_by_the_watch() {
    use std::os::unix::fs::symlink;
    let mount = tempfile::tempdir().unwrap();
    let write_version = |name: &str, bytes: &[u8]| {
        let dir = mount.path().join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("endpoint.wasm"), bytes).unwrap();
    };
    write_version("..2026_11_29_10_00_00.1", EMBEDDED_COMPONENT);
    symlink("..2026_11_29_10_00_00.1", mount.path().join("..data")).unwrap();
    let path = mount.path().join("endpoint.wasm");
    symlink("..data/endpoint.wasm", &path).unwrap();
    let options = Options {
        args: vec!["--component".into(), path.display().to_string()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    assert_eq!(
        component(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );

    // What the kubelet does on an update.
    let next = variant("configmap-2");
    write_version("..2026_11_29_10_05_00.2", &next);
    symlink("..2026_11_29_10_05_00.2", mount.path().join("..data_tmp")).unwrap();
    std::fs::rename(mount.path().join("..data_tmp"), mount.path().join("..data")).unwrap();
    std::fs::remove_dir_all(mount.path().join("..2026_11_29_10_00_00.1")).unwrap();

    let deadline = Instant::now() + Duration::from_secs(2);
    while component(&stack).await["digest"] != hex_digest(&next) {
        assert!(
            Instant::now() < deadline,
            "the update was not picked up within 2 s:\n{}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
}

/// keybust with the admin token, its state in `state`, and `extra` arguments.
async fn with_state(state: &Path, extra: Vec<String>) -> Stack {
    let mut options = with_admin_token(extra);
    options.env = vec![("KEYBUST_STATE_DIR", state.display().to_string())];
    Stack::with(Backend::Embedded, options).await
}

async fn stop(mut stack: Stack) {
    stack.keybust.signal(libc::SIGTERM);
    assert!(stack.keybust.wait_exit(Duration::from_secs(10)).success());
}

/// One state directory, one live process: a second keybust given the
/// same state directory refuses to start and names it, while the first
/// serves on; once the first has stopped, the directory is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_same_state_directory_is_refused() {
    let state = tempfile::tempdir().unwrap();
    let first = with_state(state.path(), Vec::new()).await;
    let mut second = std::process::Command::new(support::process::binary());
    second
        .arg("serve")
        .env_clear()
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_CACHE", "embedded")
        .env("KEYBUST_STATE_DIR", state.path());
    let said = support::process::refused(second);
    assert!(
        said.contains("is in use by another keybust process"),
        "{said}"
    );
    first
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stop(first).await;
    let again = with_state(state.path(), Vec::new()).await;
    again
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
}

/// A swap made through the admin API, and its rollback target, survive a
/// restart; a rollback after the restart is recorded too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_survives_a_restart_with_its_rollback_target() {
    let state = tempfile::tempdir().unwrap();
    let next = variant("durable");
    let stack = with_state(state.path(), vec![]).await;
    let answer = put(&stack, Some(ADMIN_TOKEN), next.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    stop(stack).await;

    let stack = with_state(state.path(), vec![]).await;
    let now = component(&stack).await;
    assert_eq!(now["digest"], hex_digest(&next));
    assert_eq!(now["source"], "admin");
    assert_eq!(now["previous_digest"], hex_digest(EMBEDDED_COMPONENT));
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    assert_eq!(rollback(&stack).await.status, 200);
    stop(stack).await;

    let stack = with_state(state.path(), vec![]).await;
    let now = component(&stack).await;
    assert_eq!(now["digest"], hex_digest(EMBEDDED_COMPONENT));
    assert_eq!(now["previous_digest"], hex_digest(&next));
}

/// A rollback from the version the `--component` file was changed to
/// lasts through every restart while the file still holds that version,
/// not only the first: a restart that restores a record must not note the
/// restored version as what the file holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_from_a_changed_file_lasts_through_restarts() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("endpoint.wasm");
    std::fs::write(&file, EMBEDDED_COMPONENT).unwrap();
    let newer = variant("file-newer");
    let args = vec!["--component".to_owned(), file.display().to_string()];
    let stack = with_state(state.path(), args.clone()).await;
    support::certs::replace(&file, &newer);
    wait_for_digest(&stack, &hex_digest(&newer)).await;
    assert_eq!(rollback(&stack).await.status, 200);
    stop(stack).await;

    for restart in 1..=2 {
        let stack = with_state(state.path(), args.clone()).await;
        let now = component(&stack).await;
        assert_eq!(
            now["digest"],
            hex_digest(EMBEDDED_COMPONENT),
            "restart {restart}: {now}"
        );
        stop(stack).await;
    }
}

/// A restart with another `--component` serves it, not the recorded swap;
/// and so does one whose `--component` file changed while keybust was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_component_setting_wins_over_the_record() {
    let state = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let swapped = variant("swapped-in");
    let stack = with_state(state.path(), vec![]).await;
    assert_eq!(
        put(&stack, Some(ADMIN_TOKEN), swapped.clone()).await.status,
        200
    );
    stop(stack).await;

    let path = files.path().join("endpoint.wasm");
    let configured = variant("configured");
    deploy(&path, &configured);
    let args = vec!["--component".to_owned(), path.display().to_string()];
    let stack = with_state(state.path(), args.clone()).await;
    let now = component(&stack).await;
    assert_eq!(now["digest"], hex_digest(&configured));
    assert_eq!(now["source"], path.display().to_string());
    // A swap under this setting is kept over a restart...
    assert_eq!(
        put(&stack, Some(ADMIN_TOKEN), swapped.clone()).await.status,
        200
    );
    stop(stack).await;
    let stack = with_state(state.path(), args.clone()).await;
    assert_eq!(component(&stack).await["digest"], hex_digest(&swapped));
    stop(stack).await;

    // ...until the file itself changes while keybust is down.
    let newer = variant("configured-2");
    deploy(&path, &newer);
    let stack = with_state(state.path(), args).await;
    assert_eq!(component(&stack).await["digest"], hex_digest(&newer));
}

/// The two kinds of component (wasi:http 0.2 and 0.3) swap into each other
/// and back, by the admin API and a rollback, while 8 clients keep sending
/// valid requests: each swap serves at once, and no request fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_http_0_2_and_0_3_builds_swap_into_each_other_under_load() {
    let p3 = tokio::task::spawn_blocking(support::programs::endpoint_p3)
        .await
        .unwrap();
    let builds = [(EMBEDDED_COMPONENT, "0.2"), (p3, "0.3")];
    let stack = Arc::new(Stack::with(Backend::Embedded, with_admin_token(vec![])).await);
    assert_eq!(component(&stack).await["wasi_http"], "0.2");

    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (stack, stop) = (stack.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let (mut sent, mut failures) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let answer = stack.invalidate(hashes::OWNED).await;
                sent += 1;
                if answer.status != 200 || answer.body != r#"{"ok":true}"# {
                    failures.push(format!("{} {}", answer.status, answer.body));
                }
            }
            (sent, failures)
        }));
    }
    for step in 1..=6 {
        let (bytes, kind) = builds[step % 2];
        let answer = put(&stack, Some(ADMIN_TOKEN), bytes.to_vec()).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let now = component(&stack).await;
        assert_eq!(now["digest"], hex_digest(bytes));
        assert_eq!(now["wasi_http"], kind);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Serving the 0.2 build now; the rollback target is the 0.3 one.
    let answer = rollback(&stack).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let now = component(&stack).await;
    assert_eq!(now["wasi_http"], "0.3");
    assert_eq!(now["digest"], hex_digest(p3));
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let (mut sent, mut failures) = (0, Vec::new());
    for client in clients {
        let (n, failed) = client.await.unwrap();
        sent += n;
        failures.extend(failed);
    }
    assert!(
        failures.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(sent > 100, "only {sent} requests");
}
