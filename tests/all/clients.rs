//! What a client cannot do to keybust: hang up mid-request, dawdle over
//! its headers or body, send more than the bounds, or hold more
//! connections than its share. Each is answered or cut off, and good
//! requests are served alongside. Each test fails against a build from
//! before its fix (`KEYBUST_TEST_BINARY` runs the suite against another
//! build).

use crate::support::{self, Backend, Options, Stack, hashes, raw};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ALLOWED: &str = "https://app.worldmonitor.app";

/// With four request slots, clients that hang up right after sending
/// cannot get more than four guests running: a slot stays taken until its
/// guest finishes. Each such request is logged and counted as "client closed".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_keeps_its_slot_until_its_guest_finishes() {
    let options = Options::with_env(&[
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
    let stack = Stack::with(
        Backend::Embedded,
        Options::with_env(&[("KEYBUST_BODY_TIMEOUT", "500ms")]),
    )
    .await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_concurrency_limit_gets_503_with_retry_after() {
    let options = Options {
        args: vec![
            "--max-concurrent-requests".into(),
            "2".into(),
            "--queue-timeout".into(),
            "50ms".into(),
        ],
        ..Options::default()
    };
    let stack = Arc::new(Stack::with(Backend::Embedded, options).await);
    let mut requests = Vec::new();
    for _ in 0..6 {
        let stack = stack.clone();
        requests.push(tokio::spawn(async move {
            let response = stack.invalidate(hashes::OWNED_DELAYED).await;
            let retry = response.headers.get("retry-after").cloned();
            (response, retry)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for request in requests {
        let (answer, retry) = request.await.unwrap();
        match answer.status {
            200 => ok += 1,
            503 => {
                busy += 1;
                assert_eq!(answer.body, r#"{"error":"Service unavailable"}"#);
                assert_eq!(retry.unwrap(), "1");
            }
            other => panic!("unexpected {other}: {}", answer.body),
        }
    }
    assert_eq!((ok, busy), (2, 4));
}

async fn raw(stack: &Stack) -> TcpStream {
    let stream = TcpStream::connect(stack.keybust.addr()).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

async fn read_all(stream: &mut TcpStream, limit: Duration) -> String {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(limit, stream.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_past_the_bound_is_413_without_reading_it_all() {
    let stack = Stack::start(Backend::Embedded).await;
    let mut stream = raw(&stack).await;
    let head = format!(
        "POST {} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {}\r\ntransfer-encoding: chunked\r\n\r\n",
        support::ENDPOINT,
        stack.issuer.token()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 8192, "x".repeat(8192));
    // 72 KiB, more than the 64 KiB bound; the client never finishes the body.
    for _ in 0..9 {
        if stream.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let response = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(
        response.contains(r#"{"error":"Payload too large"}"#),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off() {
    let options = Options {
        args: vec!["--header-timeout".into(), "300ms".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let mut stream = raw(&stack).await;
    stream
        .write_all(b"POST /api/invalidate-user-api-key-cache HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let response = read_all(&mut stream, Duration::from_secs(5)).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "held for {:?}",
        started.elapsed()
    );
    assert!(
        response.is_empty() || response.starts_with("HTTP/1.1 408"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_refused() {
    let stack = Stack::start(Backend::Embedded).await;
    let response = stack
        .request(reqwest::Method::POST, support::ENDPOINT)
        .header("x-padding", "p".repeat(40 << 10))
        .send()
        .await;
    match response {
        Ok(response) => assert_eq!(response.status(), 431),
        // hyper may also just close the connection.
        Err(err) => assert!(
            err.is_request() || err.is_connect() || err.is_body(),
            "{err}"
        ),
    }
    // Still serving.
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_wait_for_a_free_one() {
    let options = Options {
        args: vec!["--max-connections".into(), "2".into()],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let first = raw(&stack).await;
    let second = raw(&stack).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let waiting = stack
        .http
        .post(stack.keybust.url(support::ENDPOINT))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(waiting.is_err(), "a third connection was served at once");
    drop(first);
    let served = stack
        .http
        .post(stack.keybust.url(support::ENDPOINT))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 401);
    drop(second);
}

/// keybust raises its open-file limit to the hard limit at start, and
/// keeps its connection cap below that limit (with a warning), so outbound
/// connects to the backends never meet EMFILE first: 256 descriptors are
/// kept for backends and files, and 64 for each admin plane's own cap.
#[test]
fn the_open_file_limit_is_raised_and_the_connection_cap_fits_it() {
    use std::io::{BufRead, BufReader};
    use std::os::unix::process::CommandExt;
    let mut command = support::process::serve_command(&[("KEYBUST_MAX_CONNECTIONS", "100000")]);
    command
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
    assert!(stderr.contains("clamped_to=3712"), "{stderr}");
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
