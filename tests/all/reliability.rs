//! The reliability and least-privilege rules: what a backend going silent,
//! a client hanging up or dawdling, a planted cache entry, a crafted token
//! or a greedy component must not be able to do. Each test fails against a
//! build from before its fix (`KEYBUST_TEST_BINARY` runs the suite against
//! another build).

use crate::support::raw;
use crate::support::redis::SilentFirstConnection;
use crate::support::{self, Answer, Backend, Keybust, Options, Redis, Stack, hashes};
use reqwest::Method;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

const ALLOWED: &str = "https://app.worldmonitor.app";

fn env(pairs: &[(&'static str, &str)]) -> Options {
    Options {
        env: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ..Options::default()
    }
}

/// A Redis connection that stops answering without closing is replaced:
/// the first delete on it times out, and deletes recover within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_gone_silent_is_replaced() {
    let redis = Redis::start();
    let front = SilentFirstConnection::start(redis.port).await;
    let options = env(&[
        ("REDIS_URL", &front.url()),
        ("KEYBUST_CACHE_TIMEOUT", "300ms"),
        ("KEYBUST_CACHE_TIMEOUT_MS", "300"),
    ]);
    let stack = Stack::with(Backend::Embedded, options).await;
    let key = format!("user-api-key:{}", hashes::OWNED);
    // The connection works, then goes silent.
    let working = Answer::of(stack.invalidate(hashes::OWNED).await).await;
    working.assert_json(200, r#"{"ok":true}"#);
    front.silence();
    redis.set(&key, "cached");
    let first = Answer::of(stack.invalidate(hashes::OWNED).await).await;
    first.assert_json(503, r#"{"error":"Service unavailable"}"#);
    Stack::wait_for_ok(|| async { Answer::of(stack.invalidate(hashes::OWNED).await).await }).await;
    assert!(!redis.exists(&key));
    assert!(front.accepted.load(Ordering::SeqCst) >= 2);
}

/// With four request slots, clients that hang up right after sending
/// cannot get more than four guests running: a slot stays taken until its
/// guest finishes. Each such request is logged and counted as "client closed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_keeps_its_slot_until_its_guest_finishes() {
    let options = env(&[
        ("KEYBUST_MAX_CONCURRENT_REQUESTS", "4"),
        ("KEYBUST_QUEUE_TIMEOUT", "10s"),
    ]);
    let stack = Stack::with(Backend::Embedded, options).await;
    let addr = stack.keybust.addr();
    let body = json!({ "keyHash": hashes::OWNED_DELAYED }).to_string();
    let token = stack.issuer.token();
    for _ in 0..12 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = raw::post_head(addr, &token, body.len(), "");
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(body.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Hang up hard, as a client that gives up does.
        stream.set_zero_linger().unwrap();
        drop(stream);
    }
    stack
        .wait_for_metric(r#"keybust_requests_total{status="client closed"} 12"#)
        .await;
    let most = stack.convex.most_at_once.load(Ordering::SeqCst);
    assert!(most <= 4, "{most} owner lookups ran at once with 4 slots");
    assert!(most >= 1);
    // Access lines leave in batches, a little after the metric counts them.
    stack
        .keybust
        .wait_for_lines(&["keybust::access", "client closed"], 12)
        .await;
}

/// A body that dawdles gets 408 once the body timeout has passed, not a
/// request slot for the whole request timeout; it is counted, and the
/// answer carries the CORS headers a browser needs to see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_gets_408_at_the_body_timeout() {
    let stack = Stack::with(Backend::Embedded, env(&[("KEYBUST_BODY_TIMEOUT", "500ms")])).await;
    let addr = stack.keybust.addr();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = raw::post_head(
        addr,
        &stack.issuer.token(),
        100,
        &format!("Origin: {ALLOWED}\r\n"),
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(br#"{"keyHash":"#).await.unwrap();
    let started = Instant::now();
    let answer = raw::read_answer(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer well before the request timeout");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(answer.body, r#"{"error":"Request timeout"}"#);
    assert_eq!(answer.header("access-control-allow-origin"), Some(ALLOWED));
    assert!(started.elapsed() < Duration::from_secs(3));
    stack.wait_for_metric("keybust_body_timeouts_total 1").await;
}

/// A client still sending a large body when keybust answers 413 (most
/// clients send the whole body, then read) gets to send it and reads the
/// 413, every time, instead of a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_413_reaches_a_client_still_sending() {
    let stack = Stack::in_process(Backend::Embedded).await;
    let addr = stack.keybust.addr();
    let token = stack.issuer.token();
    const BODY: usize = 2 << 20;
    let chunk = vec![b' '; 16 << 10];
    for round in 0..10 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let head = raw::post_head(addr, &token, BODY, "");
        stream.write_all(head.as_bytes()).await.unwrap();
        for _ in 0..BODY / chunk.len() {
            if let Err(err) = stream.write_all(&chunk).await {
                panic!("round {round}: the body could not be sent: {err}");
            }
        }
        let answer = raw::read_answer(&mut stream, Duration::from_secs(10))
            .await
            .unwrap_or_else(|err| panic!("round {round}: {err}"));
        assert_eq!(answer.status, 413, "round {round}: {answer:?}");
        assert_eq!(answer.body, r#"{"error":"Payload too large"}"#);
    }
}

/// Whoever can write the cache directory can recompute a checksum: a
/// planted entry (real code, for this engine, under the embedded
/// component's name) is not run; the component that serves is the one
/// configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_precompiled_component_is_not_run() {
    let dirs = tempfile::tempdir().unwrap();
    let cache = dirs.path().join("cache");
    let options = env(&[
        ("KEYBUST_CACHE_DIR", &cache.display().to_string()),
        (
            "KEYBUST_STATE_DIR",
            &dirs.path().join("state").display().to_string(),
        ),
    ]);
    let first = Stack::with(Backend::Embedded, options.clone()).await;
    drop(first);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let engine = keybust::runtime::engine::new_engine(&keybust::limits::Limits::default()).unwrap();
    let planted = engine
        .precompile_component(support::test_programs())
        .unwrap();
    std::fs::write(&entries[0], &planted).unwrap();
    std::fs::write(
        entries[0].with_extension("sha256"),
        keybust::digest::hex_digest(&planted),
    )
    .unwrap();
    let stack = Stack::with(Backend::Embedded, options).await;
    // The embedded component answers a preflight 204; the planted program 200.
    let preflight = stack
        .request(Method::OPTIONS, support::ENDPOINT)
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    stack.keybust.assert_logged("fails its MAC").await;
}

/// Several `Origin` headers, or one that is not UTF-8, are refused as the
/// reference refuses them (rule E1), not taken for no `Origin`.
#[tokio::test]
async fn duplicate_or_undecodable_origins_get_403() {
    let stack = Stack::in_process(Backend::Embedded).await;
    let body = json!({ "keyHash": hashes::OWNED }).to_string();
    let duplicate = stack
        .request(Method::POST, support::ENDPOINT)
        .header("origin", ALLOWED)
        .header("origin", "https://evil.example")
        .bearer_auth(stack.issuer.token())
        .body(body.clone());
    let undecodable = stack
        .request(Method::POST, support::ENDPOINT)
        .header(
            "origin",
            reqwest::header::HeaderValue::from_bytes(b"https://worldmonitor.app\xff").unwrap(),
        )
        .bearer_auth(stack.issuer.token())
        .body(body);
    for request in [duplicate, undecodable] {
        let answer = Answer::of(request.send().await.unwrap()).await;
        answer.assert_json(403, r#"{"error":"Origin not allowed"}"#);
        assert!(answer.header("access-control-allow-origin").is_none());
    }
    assert!(stack.convex.calls().is_empty());
}

/// A request with no usable `Host` is the client's fault: 400 from the
/// host, and no ERROR line per request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_a_usable_host_gets_400() {
    let stack = Stack::start(Backend::Embedded).await;
    let addr = stack.keybust.addr();
    let without = format!(
        "OPTIONS {} HTTP/1.0\r\nOrigin: {ALLOWED}\r\n\r\n",
        support::ENDPOINT
    );
    let mut non_ascii = format!("OPTIONS {} HTTP/1.1\r\nHost: ", support::ENDPOINT).into_bytes();
    non_ascii.extend_from_slice(b"h\xf6st\r\nConnection: close\r\n\r\n");
    for request in [without.into_bytes(), non_ascii] {
        let answer = raw::exchange(addr, &request).await.unwrap();
        assert_eq!(answer.status, 400, "{answer:?}");
        assert_eq!(answer.body, r#"{"error":"Bad request"}"#);
    }
    stack.keybust.assert_logged("status=400").await;
    let logs = stack.keybust.logs();
    assert!(!logs.contains("ERROR"), "{logs}");
}

/// Calls outside the host's allow-lists fail as forbidden, whatever the
/// component asks, and are counted: here the real component, with lists
/// that leave out what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_the_allow_lists_are_refused_and_counted() {
    let stack = Stack::with(
        Backend::Redis,
        env(&[("KEYBUST_ALLOWED_CACHE_KEYS", "^nothing-at-all$")]),
    )
    .await;
    stack.seed(hashes::OWNED);
    let answer = Answer::of(stack.invalidate(hashes::OWNED).await).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert_eq!(stack.cached(hashes::OWNED), Some(true));
    stack
        .wait_for_metric(
            r#"keybust_capability_calls_total{capability="cache",outcome="forbidden"} 1"#,
        )
        .await;

    let stack = Stack::with(
        Backend::Embedded,
        env(&[(
            "KEYBUST_ALLOWED_CONVEX_PATHS",
            "/api/internal-something-else",
        )]),
    )
    .await;
    let answer = Answer::of(stack.invalidate(hashes::OWNED).await).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert!(stack.convex.calls().is_empty());
    stack
        .wait_for_metric(
            r#"keybust_capability_calls_total{capability="convex",outcome="forbidden"} 1"#,
        )
        .await;
}

/// The answers the host gives in the component's place carry the CORS
/// headers the component would give the same `Origin`, and none for a
/// refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_answers_carry_the_components_cors_headers() {
    // The bounds are the binary's settings: the process, not the library.
    let options = env(&[
        ("KEYBUST_MAX_CONCURRENT_REQUESTS", "1"),
        ("KEYBUST_QUEUE_TIMEOUT", "50ms"),
        ("KEYBUST_REQUEST_TIMEOUT", "400ms"),
    ]);
    let stack = std::sync::Arc::new(Stack::with(Backend::Embedded, options).await);
    let slow = {
        let stack = stack.clone();
        tokio::spawn(async move {
            let response = stack
                .request(Method::POST, support::ENDPOINT)
                .header("origin", ALLOWED)
                .bearer_auth(stack.issuer.token())
                .body(json!({ "keyHash": hashes::OWNED_DELAYED }).to_string())
                .send()
                .await
                .unwrap();
            Answer::of(response).await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let shed = |origin: &'static str| {
        stack
            .request(Method::OPTIONS, support::ENDPOINT)
            .header("origin", origin)
            .send()
    };
    let busy = Answer::of(shed(ALLOWED).await.unwrap()).await;
    busy.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert_eq!(busy.header("retry-after"), Some("1"));
    busy.assert_cors(ALLOWED);
    let refused = Answer::of(shed("https://evil.example").await.unwrap()).await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("access-control-allow-origin").is_none());
    // The owner lookup takes a second: past the request timeout.
    let timed_out = slow.await.unwrap();
    timed_out.assert_json(504, r#"{"error":"Gateway timeout"}"#);
    timed_out.assert_cors(ALLOWED);
}

/// Plain http:// to a backend beyond loopback could hand the shared secret
/// to, or take session keys from, whoever sits in between: keybust refuses
/// to start with one unless told to allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_backends_beyond_loopback_are_refused_at_start() {
    let cases: [&[(&str, &str)]; 3] = [
        &[("CLERK_JWT_ISSUER_DOMAIN", "http://clerk.example.com")],
        &[
            ("UPSTASH_REDIS_REST_URL", "http://upstash.example.com"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ],
        &[
            ("CONVEX_SITE_URL", "http://convex.example.com"),
            ("CONVEX_SERVER_SHARED_SECRET", "s"),
        ],
    ];
    for vars in cases {
        let mut child = std::process::Command::new(support::process::binary())
            .arg("serve")
            .env_clear()
            .env("KEYBUST_LISTEN", "127.0.0.1:0")
            .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{vars:?}: keybust started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{vars:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains(vars[0].0), "{stderr}");
        assert!(stderr.contains("--allow-insecure-backends"), "{stderr}");
        // Allowed explicitly, keybust starts (and contacts nobody yet).
        let mut env: Vec<(&str, String)> =
            vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        env.push(("KEYBUST_ALLOW_INSECURE_BACKENDS", "1".into()));
        let started = tokio::task::spawn_blocking(move || Keybust::start(&["serve"], &env))
            .await
            .unwrap();
        drop(started);
    }
}

/// keybust raises its open-file limit to the hard limit at start, and
/// keeps its connection cap below that limit (with a warning), so outbound
/// connects to the backends never meet EMFILE first.
#[test]
fn the_open_file_limit_is_raised_and_the_connection_cap_fits_it() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(support::process::binary());
    command
        .arg("serve")
        .env_clear()
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_MAX_CONNECTIONS", "100000")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        command.pre_exec(|| rlimit::setrlimit(rlimit::Resource::NOFILE, 256, 4096));
    }
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let listening = stdout
        .lines()
        .map_while(Result::ok)
        .any(|line| line.starts_with("listening on"));
    assert!(listening, "keybust did not start");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>();
    assert_eq!(open_files, ["4096", "4096"], "{limits}");
    child.kill().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    child.wait().unwrap();
    assert!(stderr.contains("clamped"), "{stderr}");
    assert!(stderr.contains("clamped_to=3840"), "{stderr}");
}

/// With `--max-connections-per-ip`, one address cannot hold more
/// connections; a closed one frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_bounded() {
    let options = Options {
        args: vec!["--max-connections-per-ip".into(), "2".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let addr = stack.keybust.addr();
    let preflight = format!(
        "OPTIONS {} HTTP/1.1\r\nHost: {addr}\r\nOrigin: {ALLOWED}\r\n\r\n",
        support::ENDPOINT
    );
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(preflight.as_bytes()).await.unwrap();
        let answer = raw::read_answer(&mut stream, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(answer.status, 204);
        open.push(stream);
    }
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third.write_all(preflight.as_bytes()).await;
    assert!(
        raw::read_answer(&mut third, Duration::from_secs(5))
            .await
            .is_err(),
        "a third connection from one address was served"
    );
    drop(open.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let served = raw::exchange(addr, preflight.as_bytes()).await;
        if served.as_ref().is_ok_and(|answer| answer.status == 204) {
            break;
        }
        assert!(Instant::now() < deadline, "{served:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
