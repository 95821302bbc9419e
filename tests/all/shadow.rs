//! The shadow stage (README, "Rolling out a new version"): a version that
//! passed the contract gate runs beside the serving one on live requests,
//! answering none and reaching no backend, until it has agreed often
//! enough or long enough; one divergence refuses it.

use crate::support::fleet::{self, push, put_bytes, rollout, serving, wait_serving};
use crate::support::programs::behaving_as;
use crate::support::registry::OciRegistry;
use crate::support::{Answered, Stack, hashes};
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// keybust with the shadow stage on, shadowing every request, and `extra`.
async fn shadowing(extra: &[&str]) -> Stack {
    shadowing_with(extra, Vec::new()).await
}

/// The same, with `env` besides.
async fn shadowing_with(extra: &[&str], env: Vec<(&'static str, String)>) -> Stack {
    let mut args = vec!["--shadow", "on", "--shadow-share", "100%"];
    args.extend_from_slice(extra);
    fleet::serve_with_env(&args, env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_wrong_only_on_a_shape_the_gate_lacks_is_refused_in_shadow() {
    let stack = shadowing(&["--shadow-requests", "1000", "--shadow-window", "60s"]).await;
    let extra = behaving_as("policy-extra-field").await;

    // The gate has no row with an extra field: it passes, and waits.
    let answer = put_bytes(&stack, extra.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let status = rollout(&stack).await;
    assert_eq!(status["candidate"]["digest"], hex_digest(&extra));
    assert_eq!(status["candidate"]["stage"], "shadow");
    assert_eq!(
        serving(&stack).await["candidate"]["digest"],
        hex_digest(&extra)
    );
    stack
        .wait_for_metric(r#"keybust_rollout_stage{stage="shadow"} 1"#)
        .await;

    // Ordinary requests: both agree, and clients get the serving answers.
    let lookups_before = stack.convex.calls().len();
    for _ in 0..5 {
        stack
            .invalidate(hashes::OWNED)
            .await
            .assert_json(200, r#"{"ok":true}"#);
    }
    stack
        .wait_for_metric(r#"keybust_shadow_requests_total{result="agreed"} 5"#)
        .await;
    // Only the serving version reached Convex: one lookup per request.
    assert_eq!(stack.convex.calls().len(), lookups_before + 5);

    // A body with one more field: the client still gets the serving
    // version's answer; the candidate's 500 refuses it.
    let body = format!(
        r#"{{"keyHash":"{}","note":"from a newer client"}}"#,
        hashes::OWNED
    );
    stack.post(body).await.assert_json(200, r#"{"ok":true}"#);
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="shadow",result="refused"} 1"#)
        .await;
    let status = rollout(&stack).await;
    assert!(status["candidate"].is_null(), "{status}");
    let decision = &status["last_decision"];
    assert_eq!(decision["result"], "refused");
    assert_eq!(decision["stage"], "shadow");
    let reason = decision["reason"].as_str().unwrap();
    assert!(
        reason.contains("a JSON object with the fields [keyHash, note]"),
        "{reason}"
    );
    assert!(
        reason.contains("the serving version answered 200, the candidate 500"),
        "{reason}"
    );
    assert!(
        !reason.contains(hashes::OWNED),
        "the hash is shown: {reason}"
    );
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
    assert!(
        !stack
            .metrics()
            .await
            .contains("keybust_rollout_stage{stage=\"shadow\"} 1"),
    );

    // Refused for good: the same bytes are refused at once.
    let again = put_bytes(&stack, extra).await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert!(
        again.body.contains("refused earlier at the shadow stage"),
        "{}",
        again.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_version_serves_after_enough_agreeing_requests() {
    promoted_after_agreeing(&[]).await;
}

/// On kept instances the serving version's calls are recorded through its
/// request's link to the instance, not the store: the candidate must
/// still be answered, and agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_reused_instances_the_serving_versions_calls_are_recorded_too() {
    promoted_after_agreeing(&["--instance-reuse", "10"]).await;
}

/// Sends five requests a correct candidate agrees on, and sees it serve.
async fn promoted_after_agreeing(extra: &[&str]) {
    let mut args = vec!["--shadow-requests", "5", "--shadow-window", "60s"];
    args.extend_from_slice(extra);
    let stack = shadowing(&args).await;
    let policy = behaving_as("policy").await;
    assert_eq!(put_bytes(&stack, policy.clone()).await.status, 202);
    for _ in 0..5 {
        stack
            .invalidate(hashes::OWNED)
            .await
            .assert_json(200, r#"{"ok":true}"#);
    }
    wait_serving(&stack, &hex_digest(&policy), Duration::from_secs(10)).await;
    let status = rollout(&stack).await;
    assert!(status["candidate"].is_null(), "{status}");
    assert_eq!(status["last_decision"]["result"], "promoted");
    assert!(
        status["last_decision"]["reason"]
            .as_str()
            .unwrap()
            .contains("agreed with the serving version on 5 requests"),
        "{status}"
    );
    stack
        .wait_for_metric(r#"keybust_rollout_decisions_total{stage="shadow",result="passed"} 1"#)
        .await;
    // The new version serves for real, and the old one is the rollback target.
    let component = serving(&stack).await;
    assert_eq!(component["previous_digest"], hex_digest(EMBEDDED_COMPONENT));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_traffic_the_window_ends_the_stage() {
    let stack = shadowing(&["--shadow-window", "2s"]).await;
    let policy = behaving_as("policy").await;
    let started = Instant::now();
    assert_eq!(put_bytes(&stack, policy.clone()).await.status, 202);
    wait_serving(&stack, &hex_digest(&policy), Duration::from_secs(10)).await;
    assert!(started.elapsed() >= Duration::from_secs(2));
    stack
        .keybust
        .assert_logged("its shadow window passed: 0 agreeing requests, no divergence")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_promotes_or_aborts_the_candidate() {
    let stack = shadowing(&["--shadow-window", "60s"]).await;

    // Nothing waits: both are 409.
    for action in ["/admin/rollout/promote", "/admin/rollout/abort"] {
        let answer = stack
            .admin(reqwest::Method::POST, action)
            .bearer_auth(fleet::ADMIN_TOKEN)
            .answer()
            .await;
        assert_eq!(answer.status, 409, "{action}: {}", answer.body);
    }
    // Without the token, refused.
    let answer = stack
        .admin(reqwest::Method::POST, "/admin/rollout/promote")
        .answer()
        .await;
    assert_eq!(answer.status, 401);

    let aborted = fleet::variant("shadow-aborted");
    assert_eq!(put_bytes(&stack, aborted.clone()).await.status, 202);
    let answer = stack
        .admin(reqwest::Method::POST, "/admin/rollout/abort")
        .bearer_auth(fleet::ADMIN_TOKEN)
        .answer()
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let status: Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(status["last_decision"]["result"], "aborted");
    assert!(status["candidate"].is_null());
    let again = put_bytes(&stack, aborted).await;
    assert_eq!(again.status, 422, "{}", again.body);

    let promoted = fleet::variant("shadow-promoted");
    assert_eq!(put_bytes(&stack, promoted.clone()).await.status, 202);
    let answer = stack
        .admin(reqwest::Method::POST, "/admin/rollout/promote")
        .bearer_auth(fleet::ADMIN_TOKEN)
        .answer()
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(serving(&stack).await["digest"], hex_digest(&promoted));
    let logs = stack.keybust.logs();
    assert!(logs.contains("POST /admin/rollout/promote"), "{logs}");
    assert!(logs.contains("POST /admin/rollout/abort"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_tag_brings_its_new_version_through_the_shadow_stage() {
    let registry = tokio::task::spawn_blocking(OciRegistry::start)
        .await
        .unwrap();
    let files = tempfile::tempdir().unwrap();
    let tag = registry.reference("keybust/shadow:stable");
    let v1 = fleet::variant("shadow-follow-v1");
    push(files.path(), &v1, &tag);
    let args = [
        "--component",
        tag.as_str(),
        "--follow-interval",
        "1s",
        "--shadow-window",
        "3s",
    ];
    let stack = shadowing(&args).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));

    let v2 = fleet::variant("shadow-follow-v2");
    push(files.path(), &v2, &tag);
    stack
        .wait_for_metric(r#"keybust_follow_polls_total{result="candidate"} 1"#)
        .await;
    let component = serving(&stack).await;
    if component["digest"] == hex_digest(&v1) {
        // Still waiting: the admin API says why the tag and the serving
        // version differ.
        let follow = &component["follow"];
        assert_eq!(follow["in_step"], false, "{component}");
        assert!(
            follow["why"]
                .as_str()
                .unwrap()
                .contains("a candidate in its shadow stage"),
            "{component}"
        );
    }
    wait_serving(&stack, &hex_digest(&v2), Duration::from_secs(15)).await;
    assert_eq!(serving(&stack).await["follow"]["in_step"], true);
    // Taken once: the follower does not bring it again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        stack
            .metrics()
            .await
            .contains("keybust_follow_polls_total{result=\"candidate\"} 1\n")
    );
}

/// keybust serving the file `component`, its state in `state`, shadowing
/// every request for a minute before a candidate may serve.
async fn shadowing_file(component: &Path, state: &Path) -> Stack {
    let component = component.display().to_string();
    let args = [
        "--shadow-requests",
        "1000",
        "--shadow-window",
        "60s",
        "--component",
        &component,
    ];
    let env = vec![("KEYBUST_STATE_DIR", state.display().to_string())];
    shadowing_with(&args, env).await
}

/// Writes `bytes` to `path` as deploy tools do: a new file renamed over it.
fn deploy(path: &Path, bytes: &[u8]) {
    let partial = path.with_extension("wasm.partial");
    std::fs::write(&partial, bytes).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// A version waiting when keybust stops is still a candidate when it
/// starts again: the file's new bytes, or an upload, go through the stages
/// again, never straight into service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_is_still_a_candidate_after_a_restart() {
    let files = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let path = files.path().join("endpoint.wasm");
    let (v1, v2, v3) = (
        fleet::variant("restart-v1"),
        fleet::variant("restart-v2"),
        fleet::variant("restart-v3"),
    );
    deploy(&path, &v1);
    let stack = shadowing_file(&path, state.path()).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));

    // The file's new bytes wait as the candidate; a restart keeps them so.
    deploy(&path, &v2);
    stack.keybust.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(10);
    while rollout(&stack).await["candidate"]["digest"] != hex_digest(&v2) {
        assert!(Instant::now() < deadline, "{}", stack.keybust.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stack);
    let stack = shadowing_file(&path, state.path()).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));
    let status = rollout(&stack).await;
    assert_eq!(status["candidate"]["digest"], hex_digest(&v2), "{status}");
    assert_eq!(status["candidate"]["stage"], "shadow", "{status}");

    // An upload waiting as the candidate (the file still holds v2, the
    // last one it held): a restart brings the upload back as the candidate.
    assert_eq!(put_bytes(&stack, v3.clone()).await.status, 202);
    drop(stack);
    let stack = shadowing_file(&path, state.path()).await;
    assert_eq!(serving(&stack).await["digest"], hex_digest(&v1));
    let status = rollout(&stack).await;
    assert_eq!(status["candidate"]["digest"], hex_digest(&v3), "{status}");
    assert_eq!(status["candidate"]["source"], "admin", "{status}");
    stack
        .keybust
        .assert_logged("the version waiting as the candidate when keybust stopped")
        .await;
}
