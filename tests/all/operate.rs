//! Operating keybust: health, readiness, metrics, request ids and access
//! logs, and a graceful stop under load.

use crate::support::{self, Answer, Backend, Options, Stack, hashes};
use std::sync::Arc;
use std::time::Duration;

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_owned()))).unwrap()
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => {
                buckets.last().map(|b| b.count).unwrap_or(f64::NAN)
            }
            _ => f64::NAN,
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness() {
    let stack = Stack::start(Backend::Embedded).await;
    let health = reqwest::get(stack.keybust.admin_url("/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Ready once the issuer's keys, fetched at start, are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ready = Answer::of(
            reqwest::get(stack.keybust.admin_url("/readyz"))
                .await
                .unwrap(),
        )
        .await;
        if ready.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", ready.body);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let options = Options {
        without: vec!["CONVEX_SERVER_SHARED_SECRET", "CLERK_JWT_ISSUER_DOMAIN"],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let ready = Answer::of(
        reqwest::get(stack.keybust.admin_url("/readyz"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(ready.status, 503);
    assert!(
        ready
            .body
            .contains("CONVEX_SITE_URL or CONVEX_SERVER_SHARED_SECRET is not set"),
        "{}",
        ready.body
    );
    assert!(
        ready.body.contains("CLERK_JWT_ISSUER_DOMAIN is not set"),
        "{}",
        ready.body
    );
    // Still alive.
    assert_eq!(
        reqwest::get(stack.keybust.admin_url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_count_what_was_sent() {
    let stack = Stack::start(Backend::Redis).await;
    let mut sent = std::collections::HashMap::<u16, f64>::new();
    for i in 0..40 {
        let answer = match i % 4 {
            0 => Answer::of(stack.invalidate(hashes::OWNED).await).await,
            1 => Answer::of(stack.post_with("bad", "{}").await).await,
            2 => Answer::of(stack.post("nope").await).await,
            _ => Answer::of(stack.invalidate(hashes::OTHER_OWNER).await).await,
        };
        *sent.entry(answer.status).or_default() += 1.0;
    }
    let text = Answer::of(
        reqwest::get(stack.keybust.admin_url("/metrics"))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(text.status, 200);
    let scrape = parse(&text.body);
    for (status, count) in &sent {
        let status = status.to_string();
        assert_eq!(
            sample(&scrape, "keybust_requests_total", &[("status", &status)]),
            Some(*count),
            "status {status}\n{}",
            text.body
        );
    }
    let total: f64 = sent.values().sum();
    assert_eq!(
        sample(&scrape, "keybust_request_duration_seconds_count", &[]),
        Some(total)
    );
    assert!(sample(&scrape, "keybust_instantiate_duration_seconds_count", &[]).unwrap() >= total);
    assert_eq!(
        sample(
            &scrape,
            "keybust_capability_calls_total",
            &[("capability", "cache"), ("outcome", "ok")]
        ),
        Some(10.0)
    );
    let sessions = sample(
        &scrape,
        "keybust_capability_calls_total",
        &[("capability", "session"), ("outcome", "ok")],
    );
    assert!(sessions >= Some(30.0), "{sessions:?}\n{}", text.body);
    let digest = keybust::digest::hex_digest(keybust::runtime::plugin::EMBEDDED_COMPONENT);
    assert_eq!(
        sample(&scrape, "keybust_component_info", &[("digest", &digest)]),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_and_logged_once_per_request() {
    let stack = Stack::start(Backend::Embedded).await;
    let response = stack
        .request(reqwest::Method::POST, support::ENDPOINT)
        .header("x-request-id", "trace-abc-123")
        .bearer_auth(stack.issuer.token())
        .body(format!(r#"{{"keyHash":"{}"}}"#, hashes::OWNED))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "trace-abc-123");
    let response = stack
        .request(reqwest::Method::GET, "/elsewhere")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let generated = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!generated.is_empty());
    stack.keybust.assert_logged("trace-abc-123").await;
    stack.keybust.assert_logged(&generated).await;
    let logs = stack.keybust.logs();
    let line = logs.lines().find(|l| l.contains("trace-abc-123")).unwrap();
    for field in [
        "method=POST",
        "path=\"/api/invalidate-user-api-key-cache\"",
        "status=200",
        "latency_ms=",
        "digest=",
    ] {
        assert!(line.contains(field), "{field} missing from {line}");
    }
    assert_eq!(logs.matches("trace-abc-123").count(), 1);
    stack.keybust.assert_logs_clean(&[&stack.issuer.token()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line() {
    let options = Options {
        args: vec!["--log-format".into(), "json".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    Answer::of(stack.invalidate(hashes::OWNED).await)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    stack.keybust.assert_logged("keybust::access").await;
    for line in stack.keybust.logs().lines() {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert!(value.get("level").is_some(), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    drains_on_sigterm(Options::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_thread_serves_concurrent_requests_and_drains() {
    drains_on_sigterm(Options {
        env: vec![("KEYBUST_WORKER_THREADS", "1".into())],
        ..Options::default()
    })
    .await;
}

/// Sixteen requests in flight at once (each waits a second on Convex), then
/// SIGTERM: every one is answered and keybust exits 0.
async fn drains_on_sigterm(options: Options) {
    let stack = Arc::new(Stack::with(Backend::Embedded, options).await);
    // Each of these spends a second in the owner lookup.
    let mut in_flight = Vec::new();
    for _ in 0..16 {
        let stack = stack.clone();
        in_flight.push(tokio::spawn(async move {
            Answer::of(stack.invalidate(hashes::OWNED_DELAYED).await).await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while stack.convex.calls().len() < 16 {
        assert!(
            std::time::Instant::now() < deadline,
            "requests never reached Convex"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stack.keybust.signal(libc::SIGTERM);
    for request in in_flight {
        request.await.unwrap().assert_json(200, r#"{"ok":true}"#);
    }
    let mut stack = Arc::into_inner(stack).expect("all clients finished");
    let (stack, status) = tokio::task::spawn_blocking(move || {
        let status = stack.keybust.wait_exit(Duration::from_secs(10));
        (stack, status)
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status:?}");
    // Access lines wait in a buffer; every one is written before exit.
    stack
        .keybust
        .wait_for_lines(&["keybust::access", "status=200"], 16)
        .await;
}

/// `keybust --version` names the commit, the wasmtime it runs on, and the
/// component it embeds.
#[test]
fn version_names_the_build() {
    let output = std::process::Command::new(support::process::binary())
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success());
    let version = String::from_utf8(output.stdout).unwrap();
    let digest = keybust::digest::hex_digest(keybust::runtime::plugin::EMBEDDED_COMPONENT);
    assert!(version.contains(&format!("sha256:{digest}")), "{version}");
    assert!(version.contains("wasmtime 48."), "{version}");
    assert!(version.contains("(git "), "{version}");
}

/// What an operator graphs: requests in flight, the causes of 503s, the
/// age of the issuer's keys, the build, and the process's resources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operational_metrics_are_exposed() {
    let options = Options {
        env: vec![
            ("KEYBUST_MAX_CONCURRENT_REQUESTS", "1".into()),
            ("KEYBUST_QUEUE_TIMEOUT", "50ms".into()),
        ],
        ..Options::default()
    };
    let stack = Arc::new(Stack::with(Backend::Embedded, options).await);
    let slow = {
        let stack = stack.clone();
        tokio::spawn(async move { Answer::of(stack.invalidate(hashes::OWNED_DELAYED).await).await })
    };
    while stack.convex.calls().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let during = stack.metrics().await;
    assert!(
        during.lines().any(|l| l == "keybust_requests_in_flight 1"),
        "{during}"
    );
    let shed = stack
        .request(reqwest::Method::OPTIONS, support::ENDPOINT)
        .send()
        .await
        .unwrap();
    assert_eq!(shed.status(), 503);
    slow.await.unwrap().assert_json(200, r#"{"ok":true}"#);
    let failed = Answer::of(stack.invalidate(hashes::STATUS_500).await).await;
    assert_eq!(failed.status, 503);
    let after = stack.metrics().await;
    for line in [
        "keybust_requests_in_flight 0",
        r#"keybust_unavailable_total{cause="shed"} 1"#,
        r#"keybust_unavailable_total{cause="backend"} 1"#,
    ] {
        assert!(after.lines().any(|l| l == line), "no `{line}` in:\n{after}");
    }
    let value = |name: &str| -> f64 {
        after
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in:\n{after}"))
    };
    assert!(value("keybust_jwks_age_seconds") >= 0.0);
    assert!(value("process_resident_memory_bytes") > 1e6);
    assert!(value("process_open_fds") > 3.0);
    assert!(value("process_cpu_seconds_total") > 0.0);
    let build = after
        .lines()
        .find(|l| l.starts_with("keybust_build_info"))
        .unwrap();
    assert!(
        build.contains("git_sha=") && build.contains("wasmtime=\"48."),
        "{build}"
    );
}
