//! The contract gate (docs/contract.md, "The contract gate"): a version
//! that fits the world but does not behave is refused before it serves a
//! client, whatever brings it (the admin API, a followed tag, the start,
//! `keybust component check`), and the refusal is remembered across
//! restarts. The gate itself reaches no backend.

use crate::support::fleet::{self, keybust_component, push, put_bytes, serving};
use crate::support::programs::{behaving_as, with_default_mode};
use crate::support::registry::OciRegistry;
use crate::support::{Answer, Answered, Backend, Options, Stack, hashes, test_programs};
use keybust::contract::rows;
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use serde_json::Value;
use std::time::Duration;

/// The test programs as built: every request, whatever it is, gets
/// `200 {"ok":true}` and nothing is deleted.
async fn does_nothing() -> Vec<u8> {
    tokio::task::spawn_blocking(|| test_programs().to_vec())
        .await
        .unwrap()
}

fn error_of(answer: &Answer) -> String {
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    body["error"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_does_nothing_is_refused_by_the_admin_api() {
    let stack = fleet::serve_with(&[]).await;
    let nothing = does_nothing().await;

    let answer = put_bytes(&stack, nothing.clone()).await;
    assert_eq!(answer.status, 422, "{}", answer.body);
    let error = error_of(&answer);
    assert!(
        error.contains(
            "refused at the contract gate: contract row E1 (an origin off the allow-list)"
        ),
        "{error}"
    );
    assert!(error.contains("answered 200, not 403"), "{error}");
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
    // The incumbent serves on.
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    // Asked again, it is refused from the record, naming the first refusal.
    let again = put_bytes(&stack, nothing).await;
    assert_eq!(again.status, 422, "{}", again.body);
    let error = error_of(&again);
    assert!(
        error
            .contains("refused earlier at the contract gate (it came from admin): contract row E1"),
        "{error}"
    );
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="gate",result="refused"} 2"#)
        .await;
    // The version that serves passed the gate at start.
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="gate",result="passed"} 1"#)
        .await;
    let logs = stack.keybust.logs();
    assert!(
        logs.contains("the new version is refused at the contract gate"),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_with_one_wrong_effect_is_refused_at_the_row_it_breaks() {
    let stack = fleet::serve_with(&[]).await;
    let lookups_before = stack.convex.calls().len();
    for (mode, row, shown) in [
        // Deletes a key, but not the one looked up.
        (
            "policy-other-key",
            "E13 (the caller owns the key)",
            "cache.delete(user-api-key:0100001101000011",
        ),
        (
            "policy-no-prefix",
            "E13 (the caller owns the key)",
            "cache.delete(<hash>)",
        ),
        (
            "policy-twice",
            "E13 (the caller owns the key)",
            "[session.validate(<token>), convex.post(/api/internal-get-key-owner, {\"keyHash\":\"<hash>\"}), cache.delete(user-api-key:<hash>), cache.delete(user-api-key:<hash>)]",
        ),
        // Deletes without asking Convex: the first row where it matters is
        // Convex not being configured.
        (
            "policy-no-lookup",
            "E8 (Convex not configured)",
            "made the calls [session.validate(<token>), cache.delete(user-api-key:<hash>)]",
        ),
        // 200 when the delete failed.
        (
            "policy-ignores-delete",
            "E14 (the cache delete fails)",
            "answered 200, not 503",
        ),
    ] {
        let answer = put_bytes(&stack, behaving_as(mode).await).await;
        assert_eq!(answer.status, 422, "{mode}: {}", answer.body);
        let error = error_of(&answer);
        assert!(
            error.contains(&format!("contract row {row}: ")),
            "{mode}: {error}"
        );
        assert!(error.contains(shown), "{mode}: {error}");
        assert!(
            !error.contains(rows::HASH),
            "{mode} shows the hash: {error}"
        );
        assert_eq!(
            serving(&stack).await["digest"],
            hex_digest(EMBEDDED_COMPONENT),
            "{mode}"
        );
    }
    // None of the gate's runs reached Convex.
    assert_eq!(stack.convex.calls().len(), lookups_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_new_version_passes_without_reaching_a_backend() {
    let options = Options {
        args: vec!["--admin-token".to_owned(), fleet::ADMIN_TOKEN.to_owned()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Redis, options).await;
    // The key the gate's E13 rows delete, in the real cache: it must stay.
    stack.seed(rows::HASH);
    let lookups_before = stack.convex.calls().len();

    let policy = behaving_as("policy").await;
    let answer = put_bytes(&stack, policy.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(serving(&stack).await["digest"], hex_digest(&policy));
    assert_eq!(
        stack.cached(rows::HASH),
        Some(true),
        "the gate deleted a key"
    );
    assert_eq!(stack.convex.calls().len(), lookups_before);
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="gate",result="passed"} 2"#)
        .await;

    // The new version serves for real.
    stack.seed(hashes::OWNED);
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    assert_eq!(stack.cached(hashes::OWNED), Some(false));
    stack
        .keybust
        .assert_logged("the new version passed the contract gate")
        .await;
}

/// The gate's runs, at start and at a swap, each take an instance of
/// their own, dropped after: with `--instance-reuse`, none is kept for the
/// clients' requests (which would then run where a rehearsal ran), and
/// none is counted as a client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_runs_leave_no_instance_behind_for_clients() {
    let stack = fleet::serve_with(&["--instance-reuse", "100"]).await;
    let next = fleet::variant("gate-reuse");
    assert_eq!(put_bytes(&stack, next).await.status, 200);
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("\nkeybust_reused_instances 0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nkeybust_instantiate_duration_seconds_count 0\n"),
        "{metrics}"
    );
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stack
        .wait_for_metric("keybust_instantiate_duration_seconds_count 1")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gate_off_any_fitting_version_serves_and_readyz_warns() {
    // The shadow stage asked for too: it goes with the gate.
    let stack = fleet::serve_with(&["--contract-gate", "off", "--shadow", "on"]).await;
    let ready = stack.admin(reqwest::Method::GET, "/readyz").answer().await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    let body: Value = serde_json::from_str(&ready.body).unwrap();
    assert_eq!(body["status"], "ready");
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap()
            .contains("the contract gate is off"),
        "{body}"
    );
    stack
        .keybust
        .assert_logged("the contract gate is off (--contract-gate off)")
        .await;

    let rollout = stack
        .admin(reqwest::Method::GET, "/admin/rollout")
        .answer()
        .await;
    let rollout: Value = serde_json::from_str(&rollout.body).unwrap();
    assert_eq!(
        (&rollout["gate"], &rollout["shadow"]),
        (&"off".into(), &"off".into())
    );

    let nothing = does_nothing().await;
    let answer = put_bytes(&stack, nothing.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(serving(&stack).await["digest"], hex_digest(&nothing));
}

#[test]
fn component_check_runs_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let nothing = write("nothing.wasm", test_programs());
    let output = keybust_component(&["check", &nothing]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("refused at the contract gate: contract row E1"),
        "{stderr}"
    );

    let ignores = write("ignores.wasm", &with_default_mode("policy-ignores-delete"));
    let output = keybust_component(&["check", &ignores]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("contract row E14"), "{stderr}");

    let good = write("good.wasm", EMBEDDED_COMPONENT);
    let output = keybust_component(&["check", &good]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "passes the contract gate ({} rows",
            rows::ROWS.len()
        )),
        "{stdout}"
    );

    // Off, the gate is not run, and says so.
    let output = keybust_component(&["check", &nothing, "--contract-gate", "off"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("the contract gate not run"), "{stdout}");
}

/// keybust following `tag` every second, keeping its state in `state`.
async fn follower(tag: &str, state: &std::path::Path) -> Stack {
    let options = Options {
        args: vec![
            "--component".to_owned(),
            tag.to_owned(),
            "--follow-interval".to_owned(),
            "1s".to_owned(),
            "--admin-token".to_owned(),
            fleet::ADMIN_TOKEN.to_owned(),
        ],
        env: vec![
            ("DOCKER_CONFIG", "/nonexistent".to_owned()),
            ("KEYBUST_STATE_DIR", state.display().to_string()),
        ],
        ..Options::default()
    };
    Stack::with(Backend::Embedded, options).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_refuses_a_version_that_does_nothing_and_remembers_it() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let tag = registry.reference("keybust/gate:stable");
    let v1 = fleet::variant("gate-v1");
    push(files.path(), &v1, &tag);

    let stack = follower(&tag, state.path()).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));
    // `keybust component push` runs the gate itself; the registry takes
    // anything.
    registry
        .push_unchecked("keybust/gate", "stable", does_nothing().await)
        .await;
    stack
        .wait_for_metric(r#"keybust_follow_polls_total{result="refused"} 1"#)
        .await;
    // Never taken again while the tag stays put.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains("keybust_follow_polls_total{result=\"refused\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keybust_rollout_decisions_total{stage=\"gate\",result=\"refused\"} 1\n"),
        "{metrics}"
    );
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));
    assert!(stack.keybust.logs().contains("contract row E1"));
    // The admin API says the tag and the serving version differ, and why.
    let follow = &serving(&stack).await["follow"];
    assert_eq!(follow["reference"], tag.as_str());
    assert_eq!(follow["in_step"], false, "{follow}");
    assert_eq!(follow["serving_digest"], hex_digest(&v1));
    assert!(
        follow["why"].as_str().unwrap().contains("contract row E1"),
        "{follow}"
    );
    drop(stack);

    // A restart pulls the tag, which still names the refused version: the
    // record refuses it without running it, and the last accepted serves.
    let stack = follower(&tag, state.path()).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));
    stack
        .keybust
        .assert_logged("the configured component was refused before")
        .await;
    let follow = &serving(&stack).await["follow"];
    assert_eq!(follow["in_step"], false, "{follow}");
    assert!(
        follow["why"]
            .as_str()
            .unwrap()
            .contains("refused at the contract gate: contract row E1"),
        "{follow}"
    );
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="gate",result="refused"} 1"#)
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let metrics = stack.metrics().await;
    assert!(
        metrics
            .lines()
            .filter(|line| line.starts_with("keybust_follow_polls_total{result=\"refused\"}"))
            .all(|line| line.ends_with(" 0")),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"passed\"} 2"), "{metrics}");
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    // The tag moves on to a good version: followed as usual.
    let v2 = fleet::variant("gate-v2");
    push(files.path(), &v2, &tag);
    stack
        .wait_for_metric(r#"keybust_follow_polls_total{result="swapped"} 1"#)
        .await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v2));
    assert_eq!(serving(&stack).await["follow"]["in_step"], true);

    // An operator's rollback diverges from the tag, and says so.
    let back = stack
        .admin(reqwest::Method::POST, "/admin/component/rollback")
        .bearer_auth(fleet::ADMIN_TOKEN)
        .answer()
        .await;
    assert_eq!(back.status, 200, "{}", back.body);
    let follow = &serving(&stack).await["follow"];
    assert_eq!(follow["in_step"], false, "{follow}");
    assert_eq!(follow["component_digest"], hex_digest(&v2));
    assert!(
        follow["why"]
            .as_str()
            .unwrap()
            .contains("admin swap or rollback"),
        "{follow}"
    );
}
