//! TLS on the listeners: ALPN h2 with the same answers as plaintext, a
//! certificate pair replaced on disk without a restart, a bad pair refused
//! at start and survived at reload, and client certificates on the admin
//! listener.

use crate::support::answer::assert_endpoint_answers;
use crate::support::certs::{Pair, TestCa, replace};
use crate::support::otlp::{OtlpReceiver, attribute, named};
use crate::support::process::refused_start;
use crate::support::{Backend, ENDPOINT, Options, Stack, hashes};
use reqwest::Version;
use reqwest::tls::TlsInfo;
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// A client that trusts only `ca`, and reports the peer's certificate.
fn trusting(ca: &TestCa) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .tls_certs_only([ca.root()])
        .tls_info(true)
        .timeout(Duration::from_secs(20))
}

/// The certificate the server presented on the response's connection.
fn presented(response: &reqwest::Response) -> Vec<u8> {
    response
        .extensions()
        .get::<TlsInfo>()
        .and_then(TlsInfo::peer_certificate)
        .expect("a TLS response names its peer's certificate")
        .to_vec()
}

fn tls_args(cert: &Path, key: &Path) -> Vec<String> {
    vec![
        "--tls-cert".into(),
        cert.display().to_string(),
        "--tls-key".into(),
        key.display().to_string(),
    ]
}

async fn tls_stack(args: Vec<String>) -> Stack {
    let options = Options {
        args,
        ..Options::default()
    };
    Stack::with(Backend::Embedded, options).await
}

/// Whether keybust printed a line starting with `prefix`.
fn printed(stack: &Stack, prefix: &str) -> bool {
    let printed = &stack.keybust.process().printed;
    printed.iter().any(|line| line.starts_with(prefix))
}

fn https(stack: &Stack, path: &str) -> String {
    format!("https://127.0.0.1:{}{path}", stack.keybust.addr().port())
}

#[tokio::test]
async fn tls_with_alpn_h2_gets_the_same_answers() {
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let stack = tls_stack(tls_args(&cert, &key)).await;
    assert!(
        printed(&stack, "listening on https://"),
        "{:?}",
        stack.keybust.process().printed
    );
    let url = https(&stack, ENDPOINT);
    let client = trusting(&ca).build().unwrap();

    // ALPN picks h2.
    assert_endpoint_answers(&client, &url, &stack.issuer.token(), Version::HTTP_2).await;

    // A client that offers only http/1.1 is served too.
    let http1 = trusting(&ca).http1_only().build().unwrap();
    let answer = http1
        .post(&url)
        .bearer_auth(stack.issuer.token())
        .header("content-type", "application/json")
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(answer.version(), Version::HTTP_11);
    assert_eq!(answer.status(), 200);

    // No plaintext on a TLS listener.
    let plain = reqwest::Client::new()
        .post(stack.keybust.url(ENDPOINT))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(plain.is_err(), "plaintext was answered: {plain:?}");
}

/// Over TLS the request's span says so: `url.scheme` is `https`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_request_span_says_https() {
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let receiver = OtlpReceiver::start().await;
    let options = Options {
        args: tls_args(&cert, &key),
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.url()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ("KEYBUST_TRUST_TRACE_CONTEXT", "true".to_owned()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let answer = trusting(&ca)
        .build()
        .unwrap()
        .request(reqwest::Method::OPTIONS, https(&stack, ENDPOINT))
        .header("origin", "https://worldmonitor.app")
        .header("access-control-request-method", "POST")
        .header("traceparent", format!("00-{trace_id}-b7ad6b7169203331-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 204);
    let trace_id: Vec<u8> = (0..trace_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&trace_id[i..i + 2], 16).unwrap())
        .collect();
    let server_span = format!("OPTIONS {ENDPOINT}");
    let spans = receiver.wait_for_trace(&trace_id, &[&server_span]).await;
    let server = named(&spans, &server_span);
    assert_eq!(attribute(server, "url.scheme").as_deref(), Some("https"));
}

/// How many log lines of `stack` mention all of `needles`.
fn logged(stack: &Stack, needles: &[&str]) -> usize {
    stack
        .keybust
        .logs()
        .lines()
        .filter(|line| needles.iter().all(|needle| line.contains(needle)))
        .count()
}

/// Waits until more than `before` log lines mention all of `needles`.
async fn logged_again(stack: &Stack, needles: &[&str], before: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if logged(stack, needles) > before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no new line with {needles:?}: {}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a cheap request (401: no token) and returns what it was served with.
async fn certificate_of(client: &reqwest::Client, url: &str) -> Vec<u8> {
    let answer = client.post(url).send().await.unwrap();
    assert_eq!(answer.status(), 401);
    presented(&answer)
}

#[tokio::test]
async fn a_replaced_pair_serves_new_handshakes_and_old_connections_keep_theirs() {
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let first = ca.server();
    let (cert, key) = first.install(dir.path());
    let stack = tls_stack(tls_args(&cert, &key)).await;
    let url = https(&stack, ENDPOINT);

    // One connection, opened on the first pair and kept in the pool.
    let kept = trusting(&ca).build().unwrap();
    assert_eq!(certificate_of(&kept, &url).await, first.der);

    let second = ca.server();
    second.install(dir.path());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // A fresh client: a new handshake.
        let fresh = trusting(&ca).build().unwrap();
        if certificate_of(&fresh, &url).await == second.der {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new handshakes still get the old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack
        .keybust
        .assert_logged("TLS certificate reloaded")
        .await;
    // The kept connection is still the one from before the change.
    assert_eq!(certificate_of(&kept, &url).await, first.der);

    // A key that does not go with the certificate: logged, and new
    // handshakes keep the second pair.
    let stranger = ca.server();
    let watched = ["TLS reload failed", "files changed"];
    let failures = logged(&stack, &watched);
    replace(&key, stranger.key_pem.as_bytes());
    logged_again(&stack, &watched, failures).await;
    let fresh = trusting(&ca).build().unwrap();
    assert_eq!(certificate_of(&fresh, &url).await, second.der);

    // SIGHUP re-reads the files too (and refuses the same bad pair).
    let hangup = ["TLS reload failed", "SIGHUP"];
    let failures = logged(&stack, &hangup);
    stack.keybust.signal(libc::SIGHUP);
    logged_again(&stack, &hangup, failures).await;
    let fresh = trusting(&ca).build().unwrap();
    assert_eq!(certificate_of(&fresh, &url).await, second.der);
    // Nothing of a key reaches the log.
    for pair in [&first, &second, &stranger] {
        let body = pair.key_pem.lines().nth(1).unwrap();
        assert!(!stack.keybust.logs().contains(body), "a key was logged");
    }
}

#[test]
fn a_bad_pair_at_start_is_refused_by_name() {
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let other = ca.server();
    let stranger_key = dir.path().join("stranger.pem");
    std::fs::write(&stranger_key, &other.key_pem).unwrap();

    let args = tls_args(&cert, &stranger_key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused_start(&args);
    assert!(stderr.contains("not a usable pair"), "{stderr}");
    assert!(
        stderr.contains(&stranger_key.display().to_string()),
        "{stderr}"
    );
    assert!(!stderr.contains(other.key_pem.lines().nth(1).unwrap()));

    let missing = dir.path().join("missing.pem");
    let args = tls_args(&cert, &missing);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused_start(&args);
    assert!(stderr.contains("cannot read --tls-key"), "{stderr}");

    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let args = tls_args(&not_pem, &key);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused_start(&args);
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // A key without its certificate is a usage error.
    let stderr = refused_start(&["--tls-key", key.to_str().unwrap()]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // TLS listeners named without a pair: refused, not served in plaintext.
    let stderr = refused_start(&["--tls-listeners", "public,admin"]);
    assert!(stderr.contains("--tls-cert"), "{stderr}");

    // Client certificates on an admin listener without TLS: refused.
    let mut args = tls_args(&cert, &key);
    args.extend(["--tls-client-ca".into(), cert.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stderr = refused_start(&args);
    assert!(stderr.contains("add admin to --tls-listeners"), "{stderr}");
}

#[tokio::test]
async fn the_admin_listener_with_a_client_ca_serves_only_certified_clients() {
    let ca = TestCa::new("keybust test CA");
    let clients = TestCa::new("keybust admin clients");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let clients_pem = dir.path().join("clients.pem");
    std::fs::write(&clients_pem, clients.pem()).unwrap();
    let mut args = tls_args(&cert, &key);
    args.extend([
        "--tls-listeners".into(),
        "public,admin".into(),
        "--tls-client-ca".into(),
        clients_pem.display().to_string(),
    ]);
    let stack = tls_stack(args).await;
    let admin = stack.keybust.process().admin.unwrap();
    let healthz = format!("https://127.0.0.1:{}/healthz", admin.port());
    assert!(printed(&stack, "admin listening on https://"));

    let anonymous = trusting(&ca).build().unwrap();
    let refused = anonymous.get(&healthz).send().await;
    assert!(
        refused.is_err(),
        "served without a certificate: {refused:?}"
    );

    let outsider = trusting(&ca)
        .identity(TestCa::new("someone else").client("intruder").identity())
        .build()
        .unwrap();
    let refused = outsider.get(&healthz).send().await;
    assert!(
        refused.is_err(),
        "served a foreign certificate: {refused:?}"
    );

    let operator: Pair = clients.client("operator");
    let certified = trusting(&ca).identity(operator.identity()).build().unwrap();
    let served = certified.get(&healthz).send().await.unwrap();
    assert_eq!(served.status(), 200);

    // The public listener asks for no certificate.
    let public = anonymous
        .post(https(&stack, ENDPOINT))
        .send()
        .await
        .unwrap();
    assert_eq!(public.status(), 401);
}

#[tokio::test]
async fn a_stalled_handshake_is_dropped_and_failed_ones_free_their_slot() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let mut args = tls_args(&cert, &key);
    args.extend([
        "--header-timeout".into(),
        "1s".into(),
        "--max-connections-per-ip".into(),
        "2".into(),
    ]);
    let stack = tls_stack(args).await;
    let addr = stack.keybust.addr();

    // A client that connects and never says hello is cut off.
    let started = Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
        .await
        .expect("the stalled handshake was not dropped");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(900), "dropped after {took:?}");

    // Failed handshakes (garbage instead of a ClientHello) do not use up
    // the two connections this address may have.
    for _ in 0..5 {
        let mut garbage = tokio::net::TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(10), garbage.read(&mut buf)).await;
    }
    let client = trusting(&ca).build().unwrap();
    let answer = client.post(https(&stack, ENDPOINT)).send().await.unwrap();
    assert_eq!(answer.status(), 401);
}

/// Replacing `--tls-client-ca` closes the admin connections made under the
/// old one: an operator whose certificate only the old CA vouched for
/// loses the connection it holds open, and gets no new one.
#[tokio::test]
async fn replacing_the_client_ca_closes_admin_connections_made_under_the_old_one() {
    let ca = TestCa::new("keybust test CA");
    let old_clients = TestCa::new("old admin clients");
    let new_clients = TestCa::new("new admin clients");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let clients_pem = dir.path().join("clients.pem");
    std::fs::write(&clients_pem, old_clients.pem()).unwrap();
    let mut args = tls_args(&cert, &key);
    args.extend([
        "--tls-listeners".into(),
        "public,admin".into(),
        "--tls-client-ca".into(),
        clients_pem.display().to_string(),
    ]);
    let stack = tls_stack(args).await;
    let admin = stack.keybust.process().admin.unwrap();
    let healthz = format!("https://127.0.0.1:{}/healthz", admin.port());

    // One client, one kept-alive connection.
    let operator = trusting(&ca)
        .identity(old_clients.client("operator").identity())
        .pool_max_idle_per_host(1)
        .build()
        .unwrap();
    let served = operator.get(&healthz).send().await.unwrap();
    assert_eq!(served.status(), 200);

    replace(&clients_pem, new_clients.pem().as_bytes());
    stack.keybust.assert_logged("client CA replaced").await;
    let after = operator.get(&healthz).send().await;
    assert!(
        !after.as_ref().is_ok_and(|answer| answer.status() == 200),
        "still served under the replaced client CA: {after:?}"
    );

    // Someone the new CA vouches for is served.
    let successor = trusting(&ca)
        .identity(new_clients.client("successor").identity())
        .build()
        .unwrap();
    let served = successor.get(&healthz).send().await.unwrap();
    assert_eq!(served.status(), 200);
}
