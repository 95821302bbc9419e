//! The weighted canary (README, "Rolling out a new version"): a candidate
//! serves a growing share of clients, step by step, compared at each
//! step's end with the serving version; worse, it is rolled back and
//! recorded as refused.

use crate::support::Stack;
use crate::support::fleet::{put_bytes, rollout, serve_with, serving, wait_serving};
use crate::support::load::Load;
use crate::support::programs::behaving_as;
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// keybust with the admin token, `--rollout-*` as `extra` says, and the
/// shadow stage as `shadow` says.
async fn canary(shadow: &str, extra: &[&str]) -> Arc<Stack> {
    let mut args = vec!["--shadow", shadow];
    args.extend_from_slice(extra);
    Arc::new(serve_with(&args).await)
}

/// The metric line's value, 0 when it is not there.
fn counted(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_20_ms_slower_is_rolled_back_at_its_first_step() {
    let stack = canary(
        "off",
        &[
            "--rollout-steps",
            "50%,100%",
            "--rollout-step-duration",
            "4s",
            "--rollout-min-requests",
            "30",
        ],
    )
    .await;
    let slow = behaving_as("policy-slow").await;
    let load = Load::start(&stack, 4);

    let answer = put_bytes(&stack, slow.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    let status = rollout(&stack).await;
    assert_eq!(status["candidate"]["stage"], "canary", "{status}");
    assert_eq!(status["candidate"]["canary"]["step"], 1, "{status}");
    assert_eq!(status["candidate"]["canary"]["steps"], 1, "{status}");
    assert_eq!(status["candidate"]["canary"]["weight"], 0.5, "{status}");
    assert_eq!(status["canary"]["steps"][0], 0.5, "{status}");
    stack
        .wait_for_metric(r#"keybust_rollout_stage{stage="canary"} 1"#)
        .await;

    // Its step ends 4 s in: rolled back then.
    let deadline = Instant::now() + Duration::from_secs(15);
    while rollout(&stack).await["last_decision"].is_null() {
        assert!(Instant::now() < deadline, "{}", stack.keybust.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (sent, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );

    let status = rollout(&stack).await;
    assert!(status["candidate"].is_null(), "{status}");
    let decision = &status["last_decision"];
    assert_eq!(decision["digest"], hex_digest(&slow), "{status}");
    assert_eq!(decision["stage"], "canary", "{status}");
    assert_eq!(decision["result"], "refused", "{status}");
    let reason = decision["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("rolled back at canary step 1 of 1 (50%): its p99 was"),
        "{reason}"
    );
    stack
        .keybust
        .assert_logged("rolled back at canary step 1 of 1 (50%)")
        .await;
    let metrics = stack.metrics().await;
    assert_eq!(
        counted(
            &metrics,
            r#"keybust_rollout_decisions_total{stage="canary",result="refused"}"#
        ),
        1,
        "{metrics}"
    );
    // It served clients (its half of the step), and answered them right.
    let candidate_ok = counted(
        &metrics,
        r#"keybust_version_requests_total{version="candidate",result="ok"}"#,
    );
    assert!(candidate_ok >= 30, "{metrics}");
    assert_eq!(
        counted(
            &metrics,
            r#"keybust_version_requests_total{version="candidate",result="error"}"#
        ),
        0,
        "{metrics}"
    );
    assert!(!metrics.contains(r#"keybust_rollout_stage{stage="canary"} 1"#));
    assert_eq!(
        serving(&stack).await["digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );

    // Recorded as refused: the same bytes are refused at once.
    let again = put_bytes(&stack, slow).await;
    assert_eq!(again.status, 422, "{}", again.body);
    assert!(
        again
            .body
            .contains("refused earlier at the weighted canary"),
        "{}",
        again.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correct_version_goes_through_gate_shadow_and_steps_under_load() {
    let stack = canary(
        "on",
        &[
            "--shadow-share",
            "100%",
            "--shadow-requests",
            "20",
            "--shadow-window",
            "60s",
            "--rollout-steps",
            "25%,50%,100%",
            "--rollout-step-duration",
            "3s",
            "--rollout-min-requests",
            "30",
        ],
    )
    .await;
    let policy = behaving_as("policy").await;
    let load = Load::start(&stack, 8);
    let started = Instant::now();

    let answer = put_bytes(&stack, policy.clone()).await;
    assert_eq!(answer.status, 202, "{}", answer.body);
    wait_serving(&stack, &hex_digest(&policy), Duration::from_secs(40)).await;
    let took = started.elapsed();
    let before_stop = load.sent();
    let (sent, failures) = load.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {sent} failed: {failures:?}",
        failures.len()
    );
    assert!(before_stop > 200, "only {before_stop} requests: no load");
    // Two steps of 3 s after the shadow stage.
    assert!(took >= Duration::from_secs(6), "{took:?}");

    let status = rollout(&stack).await;
    let decision = &status["last_decision"];
    assert_eq!(decision["stage"], "canary", "{status}");
    assert_eq!(decision["result"], "promoted", "{status}");
    assert!(
        decision["reason"]
            .as_str()
            .unwrap()
            .contains("it did no worse than the serving version over 2 canary steps"),
        "{status}"
    );
    let logs = stack.keybust.logs();
    for line in [
        "the candidate passed its shadow stage; canary step 1 of 2: the candidate serves 25% of requests for 3s",
        "the candidate did no worse over canary step 1; canary step 2 of 2: the candidate serves 50% of requests for 3s",
    ] {
        assert!(logs.contains(line), "no {line:?} in:\n{logs}");
    }
    let metrics = stack.metrics().await;
    for series in [
        r#"keybust_rollout_decisions_total{stage="shadow",result="passed"}"#,
        r#"keybust_rollout_decisions_total{stage="canary",result="passed"}"#,
    ] {
        assert_eq!(counted(&metrics, series), 1, "{series} in:\n{metrics}");
    }
    assert!(
        counted(
            &metrics,
            r#"keybust_version_requests_total{version="candidate",result="ok"}"#
        ) >= 60,
        "{metrics}"
    );
    assert_eq!(
        serving(&stack).await["previous_digest"],
        hex_digest(EMBEDDED_COMPONENT)
    );
}
