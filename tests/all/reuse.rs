//! `--instance-reuse`: one instance serves several requests, and every
//! bound of a fresh instance still holds: memory, CPU budget, request
//! timeout, a trap dropping the instance, swaps retiring old instances.

use crate::support::answer::assert_endpoint_answers;
use crate::support::programs::{mode, serve_programs_of};
use crate::support::{self, Answer, Answered, Backend, ENDPOINT, Guest, Options, Stack, hashes};
use keybust::digest::hex_digest;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

const ADMIN_TOKEN: &str = "test-admin-token-77c1";

/// keybust serving the test programs with `args`, and an admin token.
async fn programs_with(args: &[&str]) -> (Stack, tempfile::TempDir) {
    programs_of(Guest::P2, args).await
}

/// The same, the build for `guest`'s wasi:http.
async fn programs_of(guest: Guest, args: &[&str]) -> (Stack, tempfile::TempDir) {
    let mut all = vec!["--admin-token", ADMIN_TOKEN];
    all.extend(args);
    serve_programs_of(guest, &all).await
}

/// How many requests the instance that answered has served, this one included.
async fn served(stack: &Stack) -> u64 {
    let answer = mode(stack, "count").await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let body: Value = serde_json::from_str(&answer.body).unwrap();
    body["served"].as_u64().unwrap()
}

/// Sequential requests, a little apart so the instance is free again.
async fn served_in_turn(stack: &Stack, requests: usize) -> Vec<u64> {
    let mut counts = Vec::new();
    for _ in 0..requests {
        counts.push(served(stack).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    counts
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .parse()
        .unwrap()
}

/// A wasi:http 0.3 component goes through the reuse handler even without
/// the flag, one request per instance: none of them counts as reused, not
/// even while it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_no_wasi_http_0_3_instance_counts_as_reused() {
    let (stack, _dir) = programs_of(Guest::P3, &[]).await;
    assert_eq!(served_in_turn(&stack, 3).await, vec![1; 3]);
    let instantiated = metric(
        &stack.metrics().await,
        "keybust_instantiate_duration_seconds_count",
    );
    let stack = Arc::new(stack);
    let busy = {
        let stack = stack.clone();
        tokio::spawn(async move { mode(&stack, "loop").await })
    };
    // Its instance exists (and would be counted by now).
    stack
        .wait_for_metric(&format!(
            "keybust_instantiate_duration_seconds_count {}",
            instantiated + 1.0
        ))
        .await;
    stack.wait_for_metric("keybust_requests_in_flight 1").await;
    assert_eq!(
        metric(&stack.metrics().await, "keybust_reused_instances"),
        0.0
    );
    assert_eq!(busy.await.unwrap().status, 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_every_request_gets_a_fresh_instance() {
    let (stack, _dir) = programs_with(&[]).await;
    assert_eq!(served_in_turn(&stack, 5).await, vec![1; 5]);
    assert_eq!(
        metric(&stack.metrics().await, "keybust_reused_instances"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_serves_up_to_its_count_then_idles_out() {
    let (stack, _dir) =
        programs_with(&["--instance-reuse", "3", "--instance-idle-timeout", "1s"]).await;
    let counts = served_in_turn(&stack, 9).await;
    assert!(counts.iter().all(|&n| (1..=3).contains(&n)), "{counts:?}");
    assert!(counts.contains(&3), "no instance served three: {counts:?}");
    let metrics = stack.metrics().await;
    let instantiated = metric(&metrics, "keybust_instantiate_duration_seconds_count");
    assert!(
        instantiated < 9.0,
        "{instantiated} instantiations for 9 requests"
    );
    // Idle past --instance-idle-timeout, the kept instance is dropped.
    stack.wait_for_metric("keybust_reused_instances 0").await;
    assert_eq!(served(&stack).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_a_spent_budget_or_the_memory_cap_drops_the_instance() {
    failures_drop_the_instance(Guest::P2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_http_0_3_instance_is_dropped_by_a_trap_a_spent_budget_or_the_memory_cap() {
    failures_drop_the_instance(Guest::P3).await
}

async fn failures_drop_the_instance(guest: Guest) {
    let (stack, _dir) = programs_of(
        guest,
        &[
            "--instance-reuse",
            "1000",
            "--max-instance-memory",
            "8388608",
        ],
    )
    .await;
    for (bad, status) in [("trap", 500), ("loop", 504), ("alloc", 500)] {
        assert_eq!(served(&stack).await, 1, "before {bad}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(served(&stack).await, 2, "before {bad}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(mode(&stack, bad).await.status, status, "{bad}");
        // The instance that failed never serves again: the next request
        // finds a fresh one.
        assert_eq!(served(&stack).await, 1, "after {bad}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        stack.wait_for_metric("keybust_reused_instances 1").await;
        // Start the next round on a fresh instance as well.
        mode(&stack, "trap").await;
    }
    let metrics = stack.metrics().await;
    assert!(
        metrics.contains(r#"keybust_guest_failures_total{kind="timeout"} 1"#),
        "{metrics}"
    );
    // The guest's own panics are logged as its output; the host has none.
    let logs = stack.keybust.logs();
    assert!(
        !logs
            .lines()
            .any(|line| line.contains("panicked") && !line.contains("keybust::guest")),
        "the host panicked:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guest_log_is_drained_per_request_and_bounded() {
    let (stack, _dir) = programs_with(&["--instance-reuse", "10"]).await;
    for _ in 0..2 {
        mode(&stack, "say").await.assert_json(200, r#"{"ok":true}"#);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // One instance said both lines, each logged once its request ended.
    stack.keybust.assert_logged("said in request 1").await;
    stack.keybust.assert_logged("said in request 2").await;
    // Far past the bound: dropped and counted, no trap, and the instance
    // has room for the next request's lines.
    mode(&stack, "chatter")
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stack
        .keybust
        .assert_logged("guest output past 4096 bytes dropped")
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    mode(&stack, "say").await.assert_json(200, r#"{"ok":true}"#);
    stack.keybust.assert_logged("said in request 4").await;
}

async fn admin(stack: &Stack, method: reqwest::Method, path: &str, body: Vec<u8>) -> Answer {
    stack
        .http
        .request(method, stack.keybust.admin_url(path))
        .bearer_auth(ADMIN_TOKEN)
        .body(body)
        .answer()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_retires_the_old_versions_instances() {
    let (stack, _dir) = programs_with(&[
        "--instance-reuse",
        "1000",
        "--instance-idle-timeout",
        "120s",
    ])
    .await;
    assert_eq!(served_in_turn(&stack, 3).await, vec![1, 2, 3]);
    stack.wait_for_metric("keybust_reused_instances 1").await;

    let next = support::variant(support::test_programs(), "reuse-next");
    let swapped = admin(
        &stack,
        reqwest::Method::PUT,
        "/admin/component",
        next.clone(),
    )
    .await;
    assert_eq!(swapped.status, 200, "{}", swapped.body);
    // Long before its idle timeout, the old version's idle instance is gone.
    stack.wait_for_metric("keybust_reused_instances 0").await;
    assert_eq!(served_in_turn(&stack, 2).await, vec![1, 2]);

    // A rollback serves the old version again, on instances of its own.
    let back = admin(
        &stack,
        reqwest::Method::POST,
        "/admin/component/rollback",
        Vec::new(),
    )
    .await;
    assert_eq!(back.status, 200, "{}", back.body);
    stack.wait_for_metric("keybust_reused_instances 0").await;
    assert_eq!(served_in_turn(&stack, 2).await, vec![1, 2]);
    stack.wait_for_metric("keybust_reused_instances 1").await;
    let component: Value = serde_json::from_str(
        &reqwest::get(stack.keybust.admin_url("/admin/component"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    assert_ne!(component["digest"], hex_digest(&next));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_holds_its_contract_on_reused_instances() {
    endpoint_on_reused_instances(Guest::P2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wasi_http_0_3_endpoint_holds_its_contract_on_reused_instances() {
    endpoint_on_reused_instances(Guest::P3).await
}

async fn endpoint_on_reused_instances(guest: Guest) {
    let options = Options {
        env: vec![
            ("KEYBUST_INSTANCE_REUSE", "16".to_owned()),
            ("KEYBUST_REQUEST_TIMEOUT", "1s".to_owned()),
        ],
        guest,
        ..Options::default()
    };
    let stack = Stack::with(Backend::Redis, options).await;
    let token = stack.issuer.token();
    for _ in 0..3 {
        assert_endpoint_answers(
            &stack.http,
            &stack.keybust.url(ENDPOINT),
            &token,
            reqwest::Version::HTTP_11,
        )
        .await;
    }
    stack.seed(hashes::OWNED);
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    assert_eq!(stack.cached(hashes::OWNED), Some(false));
    // A request past --request-timeout (a slow backend) gets 504, and the
    // next one is served.
    stack
        .invalidate(hashes::SLOW)
        .await
        .assert_json(504, r#"{"error":"Gateway timeout"}"#);
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    let metrics = stack.metrics().await;
    let requests = metric(&metrics, "keybust_request_duration_seconds_count");
    let instantiated = metric(&metrics, "keybust_instantiate_duration_seconds_count");
    assert!(
        instantiated * 2.0 < requests,
        "{instantiated} instantiations for {requests} requests"
    );
    stack.keybust.assert_logs_clean(&[]);
}
