//! Connections that send nothing, or stop sending, are closed once
//! `--header-timeout` has passed with no request in flight, whatever they
//! are waiting in: the look at the first bytes, a TLS session that never
//! sends a request, an HTTP/2 connection that answers pings but opens no
//! stream. So silent sockets cannot fill a listener, and the metrics
//! listener, with a connection cap of its own, answers the kubelet's probe
//! while the public listener is full.

use crate::support::certs::TestCa;
use crate::support::{Backend, Options, Stack};
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The header timeout the stacks here run with.
const QUIET: Duration = Duration::from_secs(1);

/// Far more than [`QUIET`]: a connection still open after this was never
/// going to be closed.
const NEVER: Duration = Duration::from_secs(8);

fn options(extra: &[String]) -> Options {
    let mut args = vec!["--header-timeout".to_owned(), "1s".to_owned()];
    args.extend(extra.iter().cloned());
    Options {
        args,
        ..Options::default()
    }
}

/// Reads until the server closes `stream`; how long that took from
/// `since`. Fails if it is still open after [`NEVER`].
async fn closed(stream: &mut (impl AsyncRead + Unpin), since: Instant, what: &str) -> Duration {
    let mut buf = [0u8; 1024];
    let until = since + NEVER;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => panic!("{what}: still open after {NEVER:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return since.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Closed after the quiet bound, not before it.
fn after_the_bound(took: Duration, what: &str) {
    assert!(
        took >= QUIET - Duration::from_millis(100),
        "{what}: closed after {took:?}, before the header timeout"
    );
}

/// An HTTP/2 client over `io` that opens no stream; its connection task
/// answers the server's pings. How long until the server ended it.
async fn h2_without_streams<T>(io: T, since: Instant, what: &str) -> Duration
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (_send, connection) = hyper::client::conn::http2::handshake::<_, _, Empty<Bytes>>(
        TokioExecutor::new(),
        TokioIo::new(io),
    )
    .await
    .unwrap_or_else(|err| panic!("{what}: handshake: {err}"));
    tokio::time::timeout(NEVER, connection)
        .await
        .unwrap_or_else(|_| panic!("{what}: still open after {NEVER:?}"))
        .ok();
    since.elapsed()
}

fn tls_client(ca: &TestCa, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|proto| proto.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_connections_that_send_nothing_useful_are_closed() {
    let stack = Stack::with(Backend::Embedded, options(&[])).await;
    let addr = stack.keybust.addr();

    // Not a byte: hyper-util waits for the first bytes to tell HTTP/1.1
    // from HTTP/2, and that wait is bounded too.
    let started = Instant::now();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    after_the_bound(closed(&mut silent, started, "silent").await, "silent");

    // The first 16 of the 24 bytes of the HTTP/2 preface, then nothing.
    let started = Instant::now();
    let mut partial = TcpStream::connect(addr).await.unwrap();
    partial.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    after_the_bound(
        closed(&mut partial, started, "partial preface").await,
        "partial preface",
    );

    // A whole HTTP/2 (h2c) connection, pings answered, no stream ever.
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.unwrap();
    let took = h2_without_streams(stream, started, "h2c without streams").await;
    after_the_bound(took, "h2c without streams");
}

/// After a request, an HTTP/2 connection that goes quiet gets a GOAWAY:
/// the answer came, and the connection then ends without an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_gone_quiet_after_a_request_is_sent_away() {
    let stack = Stack::with(Backend::Embedded, options(&[])).await;
    let stream = TcpStream::connect(stack.keybust.addr()).await.unwrap();
    let (mut send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    let request = hyper::Request::builder()
        .uri(format!("http://{}/no-such-path", stack.keybust.addr()))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let answer = send.send_request(request).await.unwrap();
    assert_eq!(answer.status(), 404);
    let answered = Instant::now();
    let ended = tokio::time::timeout(NEVER, connection)
        .await
        .expect("the quiet HTTP/2 connection was not closed")
        .unwrap();
    assert!(ended.is_ok(), "not a graceful close: {ended:?}");
    after_the_bound(answered.elapsed(), "h2c after a request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_that_go_quiet_after_the_handshake_are_closed() {
    let ca = TestCa::new("keybust test CA");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let stack = Stack::with(
        Backend::Embedded,
        options(&[
            "--tls-cert".into(),
            cert.display().to_string(),
            "--tls-key".into(),
            key.display().to_string(),
        ]),
    )
    .await;
    let addr = stack.keybust.addr();
    let name = ServerName::try_from("localhost").unwrap();

    // HTTP/1.1 by ALPN (or no ALPN at all): the session is up, then
    // nothing is sent.
    for alpn in [&[b"http/1.1".as_slice()][..], &[]] {
        let started = Instant::now();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut tls = tls_client(&ca, alpn)
            .connect(name.clone(), tcp)
            .await
            .expect("the handshake completes");
        let took = closed(&mut tls, started, "quiet TLS session").await;
        after_the_bound(took, "quiet TLS session");
    }

    // h2 by ALPN, pings answered, no stream ever.
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tls_client(&ca, &[b"h2"])
        .connect(name.clone(), tcp)
        .await
        .expect("the handshake completes");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let took = h2_without_streams(tls, started, "h2 over TLS without streams").await;
    after_the_bound(took, "h2 over TLS without streams");
}

/// How many silent sockets the flood opens.
const FLOOD: usize = 5000;

/// 5,000 silent sockets against the public listener: the metrics listener
/// still answers `/healthz` within a second, the silent sockets are closed
/// after the header timeout, and the public listener serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_silent_sockets_leaves_the_probe_answering_and_is_closed() {
    let files = rlimit::increase_nofile_limit(u64::MAX).unwrap();
    assert!(
        files >= FLOOD as u64 + 1000,
        "this test holds {FLOOD} sockets; the open-file limit is {files}"
    );
    // A longer bound than the other tests': the public listener stays at
    // its cap while the probe is asked.
    let options = Options {
        args: ["--header-timeout", "3s", "--metrics-listen", "127.0.0.1:0"]
            .map(String::from)
            .to_vec(),
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let addr = stack.keybust.addr();
    let healthz = stack.keybust.process().metrics_url("/healthz");

    let flooded = Instant::now();
    let sockets = flood(addr).await;
    assert!(
        sockets.len() >= FLOOD * 9 / 10,
        "only {} of {FLOOD} sockets connected",
        sockets.len()
    );

    // The probe, while the public listener is at its cap.
    let probe = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(1), reqwest::get(&healthz))
        .await
        .expect("/healthz did not answer within 1s during the flood")
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(probe.elapsed() < Duration::from_secs(1));

    // The first sockets, accepted at once, are closed after the bound.
    for (index, mut socket) in sockets.into_iter().take(50).enumerate() {
        let took = closed(&mut socket, flooded, &format!("silent socket {index}")).await;
        assert!(took >= Duration::from_millis(2900), "closed after {took:?}");
    }

    // And the public listener serves again.
    let answer = tokio::time::timeout(
        NEVER,
        stack.request(reqwest::Method::GET, "/no-such-path").send(),
    )
    .await
    .expect("the public listener did not serve again after the flood")
    .unwrap();
    assert_eq!(answer.status(), 404);
}

/// Opens [`FLOOD`] connections to `addr` that send nothing; those that
/// connected within a second each.
async fn flood(addr: SocketAddr) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(FLOOD);
    // A listener that stops taking connections makes each connect wait
    // its whole second: the flood ends at this deadline instead.
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..FLOOD {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(Ok(socket)) =
            tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr)).await
        {
            sockets.push(socket);
        }
    }
    sockets
}
