//! The metrics a scrape reads: they parse as Prometheus text, count what
//! was sent by status, cause and capability, and name the running build.

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
async fn metrics_parse_and_count_what_was_sent() {
    let stack = Stack::start(Backend::Redis).await;
    let mut sent = std::collections::HashMap::<u16, f64>::new();
    for i in 0..40 {
        let answer = match i % 4 {
            0 => stack.invalidate(hashes::OWNED).await,
            1 => stack.post_with("bad", "{}").await,
            2 => stack.post("nope").await,
            _ => stack.invalidate(hashes::OTHER_OWNER).await,
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
        tokio::spawn(async move { stack.invalidate(hashes::OWNED_DELAYED).await })
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
    let failed = stack.invalidate(hashes::STATUS_500).await;
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

/// A live `/metrics`, after traffic, passes `promtool check metrics`:
/// every metric has its help text (counters were reported as having none
/// while the text was OpenMetrics under another name). A scraper that asks
/// for OpenMetrics, as Prometheus does, gets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_scrape_passes_promtool() {
    let stack = Stack::start(Backend::Redis).await;
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    let _ = stack.post("nope").await;
    let response = reqwest::get(stack.keybust.admin_url("/metrics"))
        .await
        .unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let (passed, said) = support::promtool::run(&["check", "metrics"], &text);
    assert!(passed && said.trim().is_empty(), "{said}\n{text}");

    let response = reqwest::Client::new()
        .get(stack.keybust.admin_url("/metrics"))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(text.contains("# TYPE keybust_requests counter\n"), "{text}");
}

/// Before the issuer's keys are first fetched there is no key age to
/// report, so `keybust_jwks_age_seconds` is absent rather than 0 (which
/// read as "fresh keys", so a stale-keys alert could never fire), and the
/// readiness and backend gauges say why. Series whose labels are known up
/// front are there from the first scrape, at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_not_known_yet_is_absent_and_readiness_has_a_gauge() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let unreachable = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let options = Options {
        env: vec![("CLERK_JWT_ISSUER_DOMAIN", unreachable)],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let scrape = parse(&stack.metrics().await);
        if sample(&scrape, "keybust_backend_up", &[("backend", "issuer")]).is_some() {
            break scrape;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no issuer fetch was tried"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(sample(&scrape, "keybust_jwks_age_seconds", &[]), None);
    assert_eq!(
        sample(&scrape, "keybust_ready", &[("reason", "jwks_not_fetched")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "keybust_backend_up", &[("backend", "issuer")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&scrape, "keybust_backend_up", &[("backend", "cache")]),
        Some(1.0)
    );
    for (name, labels) in [
        ("keybust_unavailable_total", [("cause", "shed")]),
        ("keybust_guest_failures_total", [("kind", "timeout")]),
        ("keybust_component_swaps_total", [("result", "failed")]),
    ] {
        assert_eq!(sample(&scrape, name, &labels), Some(0.0), "{name}");
    }

    // With an issuer that answers, the keys have an age and all is ready.
    let stack = Stack::start(Backend::Embedded).await;
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
    let scrape = parse(&stack.metrics().await);
    assert!(sample(&scrape, "keybust_jwks_age_seconds", &[]).is_some_and(|age| age >= 0.0));
    assert_eq!(
        sample(&scrape, "keybust_ready", &[("reason", "none")]),
        Some(1.0)
    );
    for backend in ["cache", "convex", "issuer"] {
        assert_eq!(
            sample(&scrape, "keybust_backend_up", &[("backend", backend)]),
            Some(1.0),
            "{backend}"
        );
    }
}

/// Open connections are counted per listener: one a client holds open on
/// the public listener shows, and goes when the client closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_connections_are_counted_per_listener() {
    let stack = Stack::start(Backend::Embedded).await;
    let open = |text: &str, listener: &str| {
        sample(
            &parse(text),
            "keybust_open_connections",
            &[("listener", listener)],
        )
    };
    let held = tokio::net::TcpStream::connect(stack.keybust.addr())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = stack.metrics().await;
        if open(&text, "public") == Some(1.0) {
            // The scrape's own connection, at least.
            assert!(open(&text, "admin").is_some_and(|n| n >= 1.0), "{text}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = stack.metrics().await;
        if open(&text, "public") == Some(0.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
