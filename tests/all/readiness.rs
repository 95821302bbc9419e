//! Readiness that tells the truth, a drain that closes the door, and an
//! admin plane fit for a cluster: what an orchestrator and an operator see
//! of one keybust process.

use crate::support::redis::SilentFirstConnection;
use crate::support::{Answer, Backend, Options, Redis, Stack, hashes};
use serde_json::Value;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "test-admin-token-readiness";

async fn readyz(url: &str) -> (u16, Value) {
    let response = reqwest::get(url).await.unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    (status, serde_json::from_str(&body).unwrap())
}

/// Polls `/readyz` at `url` until it answers `status`, failing after 10 s.
async fn wait_for_readiness(url: &str, status: u16) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (now, body) = readyz(url).await;
        if now == status {
            return body;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {now}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Redis stops answering without closing: readiness turns 503 within
/// seconds, and back to 200 once a connection answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_a_redis_that_goes_silent() {
    let redis = Redis::start();
    let front = SilentFirstConnection::start(redis.port).await;
    let options = Options {
        env: vec![
            ("REDIS_URL", front.url()),
            ("KEYBUST_CACHE_TIMEOUT", "300ms".into()),
            ("KEYBUST_CACHE_CHECK_INTERVAL", "200ms".into()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let url = stack.keybust.admin_url("/readyz");
    wait_for_readiness(&url, 200).await;
    front.silence();
    let body = wait_for_readiness(&url, 503).await;
    assert!(body["reasons"].to_string().contains("cache"), "{body}");
    wait_for_readiness(&url, 200).await;
}

/// `serve` with no cache backend warns and stays unready: its in-process
/// store is not the gateway's cache. Choosing it on purpose makes it ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_without_a_cache_backend_is_unready_unless_chosen() {
    let options = Options {
        without: vec!["KEYBUST_CACHE"],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let url = stack.keybust.admin_url("/readyz");
    let (status, body) = readyz(&url).await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["reasons"].to_string().contains("no cache backend"),
        "{body}"
    );
    stack
        .keybust
        .assert_logged("no cache backend is configured")
        .await;
    assert!(stack.keybust.logs().contains("WARN"));
    // Probed again and again, as an orchestrator does: probes are not
    // admin actions, and write no audit line however often they fail.
    for _ in 0..3 {
        assert_eq!(readyz(&url).await.0, 503);
    }
    // An audited request after them: once its line is in, theirs would be.
    let component = reqwest::get(stack.keybust.admin_url("/admin/component"))
        .await
        .unwrap();
    assert_eq!(component.status(), 200);
    stack.keybust.assert_logged("GET /admin/component").await;
    let logs = stack.keybust.logs();
    assert!(
        !logs
            .lines()
            .any(|line| line.contains("keybust::audit") && line.contains("/readyz")),
        "{logs}"
    );

    let chosen = Stack::start(Backend::Embedded).await;
    wait_for_readiness(&chosen.keybust.admin_url("/readyz"), 200).await;
}

/// SIGTERM under load: readiness turns at once, the listener closes after
/// the shutdown delay (a new connection is refused, not left waiting),
/// every accepted request is answered, and the exit code is 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_turns_readiness_closes_the_listener_and_drains() {
    let options = Options {
        env: vec![("KEYBUST_SHUTDOWN_DELAY", "1s".into())],
        ..Options::default()
    };
    let stack = Arc::new(Stack::with(Backend::Embedded, options).await);
    let url = stack.keybust.admin_url("/readyz");
    wait_for_readiness(&url, 200).await;
    let mut in_flight = Vec::new();
    for _ in 0..8 {
        let stack = stack.clone();
        in_flight.push(tokio::spawn(async move {
            stack.invalidate(hashes::OWNED_DELAYED).await
        }));
    }
    while stack.convex.calls().len() < 8 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let signalled = Instant::now();
    stack.keybust.signal(libc::SIGTERM);
    // At once: as soon as the process has taken the signal, well within
    // the one-second delay.
    let body = loop {
        let (status, body) = readyz(&url).await;
        if status == 503 {
            break body;
        }
        assert!(
            signalled.elapsed() < Duration::from_millis(800),
            "still ready after SIGTERM: {body}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert!(body["reasons"].to_string().contains("draining"), "{body}");
    // Within the delay the listener still accepts.
    let during = reqwest::get(stack.keybust.url("/other")).await.unwrap();
    assert_eq!(during.status(), 404);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let addr = stack.keybust.addr();
    let after = tokio::net::TcpStream::connect(addr).await;
    assert!(after.is_err(), "a connection after the delay was accepted");
    for request in in_flight {
        request.await.unwrap().assert_json(200, r#"{"ok":true}"#);
    }
    let mut stack = Arc::into_inner(stack).expect("all clients finished");
    let exit =
        tokio::task::spawn_blocking(move || stack.keybust.wait_exit(Duration::from_secs(10)))
            .await
            .unwrap();
    assert!(exit.success(), "{exit:?}");
}

fn admin_options(extra: &[&str]) -> Options {
    let mut args = vec!["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    Options {
        args,
        ..Options::default()
    }
}

/// The metrics listener answers probes and scrapes, and nothing else: no
/// component uploads from the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_probes_only() {
    let stack = Stack::with(
        Backend::Embedded,
        admin_options(&["--metrics-listen", "127.0.0.1:0"]),
    )
    .await;
    let metrics = stack.keybust.process().metrics_url("");
    for path in ["/healthz", "/readyz", "/metrics"] {
        let response = reqwest::get(format!("{metrics}{path}")).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    let upload = stack
        .http
        .put(format!("{metrics}/admin/component"))
        .bearer_auth(ADMIN_TOKEN)
        .body(b"\0asm".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(upload.status(), 404);
    let described = reqwest::get(format!("{metrics}/admin/component"))
        .await
        .unwrap();
    assert_eq!(described.status(), 404);
}

/// Every admin request to the component API, accepted or refused, leaves
/// one audit line with the peer, the action, the digest and the outcome;
/// the token given as a flag is warned about.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_leave_audit_lines() {
    let stack = Stack::with(Backend::Embedded, admin_options(&[])).await;
    let bytes = crate::support::variant(keybust::runtime::plugin::EMBEDDED_COMPONENT, "audited");
    let digest = keybust::digest::hex_digest(&bytes);
    let put = |token: &'static str| {
        stack
            .admin(reqwest::Method::PUT, "/admin/component")
            .bearer_auth(token)
            .body(bytes.clone())
            .send()
    };
    assert_eq!(put(ADMIN_TOKEN).await.unwrap().status(), 200);
    assert_eq!(put("not-the-token").await.unwrap().status(), 403);
    stack.keybust.assert_logged("outcome=403").await;
    let logs = stack.keybust.logs();
    let audit: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("keybust::audit"))
        .collect();
    assert_eq!(audit.len(), 2, "{logs}");
    assert!(audit[0].contains("PUT /admin/component"), "{}", audit[0]);
    assert!(
        audit[0].contains(&digest) && audit[0].contains("outcome=200"),
        "{}",
        audit[0]
    );
    assert!(audit[0].contains("peer=127.0.0.1:"), "{}", audit[0]);
    assert!(audit[1].contains("outcome=403"), "{}", audit[1]);
    assert!(logs.contains("--admin-token on the command line"), "{logs}");
    stack
        .keybust
        .assert_logs_clean(&[ADMIN_TOKEN, "not-the-token"]);
}

/// The token can come from a file (a mounted secret), without a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_can_come_from_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).unwrap();
    let options = Options {
        env: vec![("KEYBUST_ADMIN_TOKEN_FILE", file.display().to_string())],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let rollback = |token: &'static str| {
        stack
            .admin(reqwest::Method::POST, "/admin/component/rollback")
            .bearer_auth(token)
            .send()
    };
    // Authorized: nothing to roll back to (409), not refused.
    assert_eq!(rollback(ADMIN_TOKEN).await.unwrap().status(), 409);
    assert_eq!(rollback("wrong").await.unwrap().status(), 403);
    assert!(!stack.keybust.logs().contains("on the command line"));
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

/// A cache backend that stays down is logged once when it goes down, with
/// its cause (also in `/readyz`'s reasons), and once when it answers
/// again: not a WARN per background check (1,800 lines an hour at the
/// default interval, here one every 100 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_backend_that_stays_down_is_logged_once_with_its_cause() {
    // A port with nothing listening: every check is refused.
    let mut redis = Redis::start();
    redis.stop();
    let options = Options {
        env: vec![
            ("REDIS_URL", redis.url()),
            ("KEYBUST_CACHE_TIMEOUT", "300ms".into()),
            ("KEYBUST_CACHE_CHECK_INTERVAL", "100ms".into()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let url = stack.keybust.admin_url("/readyz");
    let body = wait_for_readiness(&url, 503).await;
    assert!(
        body["reasons"].to_string().contains("refused"),
        "the reason does not say the connection was refused: {body}"
    );
    // About 30 failed checks.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    wait_for_readiness(&url, 200).await;
    let logs = stack.keybust.logs();
    let down: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("keybust::capabilities::cache"))
        .collect();
    assert_eq!(down.len(), 1, "{down:#?}");
    assert!(down[0].contains("refused"), "no cause in: {}", down[0]);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stack.keybust.logs().contains("cache backend answers again") {
        assert!(Instant::now() < deadline, "{}", stack.keybust.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An Upstash front that refuses connections is reported with that cause,
/// not only as "error sending request" (the HTTP client's own words, which
/// keep the cause in their sources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstash_is_reported_with_its_cause() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let options = Options {
        env: vec![
            ("UPSTASH_REDIS_REST_URL", url),
            ("UPSTASH_REDIS_REST_TOKEN", "upstash-token".into()),
            ("KEYBUST_CACHE_CHECK_INTERVAL", "100ms".into()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let body = wait_for_readiness(&stack.keybust.admin_url("/readyz"), 503).await;
    assert!(
        body["reasons"].to_string().contains("refused"),
        "the reason does not say the connection was refused: {body}"
    );
}
