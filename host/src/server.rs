//! Serving: HTTP/1.1 on hyper, the endpoint's path routed to the component,
//! everything else answered by the host; plus the admin listener.

use crate::capabilities::Capabilities;
use crate::plugin::json_response;
use crate::slot::ComponentSlot;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The only path the component serves.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The serving side: the component slot and what each request goes through
/// around it (routing, request ids, the access log, metrics).
pub struct Gateway {
    slot: ComponentSlot,
}

impl Gateway {
    /// Serves whatever `slot` holds.
    pub fn new(slot: ComponentSlot) -> Self {
        Gateway { slot }
    }

    /// The component slot, for swaps.
    pub fn slot(&self) -> &ComponentSlot {
        &self.slot
    }

    /// The capabilities given to the component.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        self.slot.capabilities()
    }

    /// Answers one request: the endpoint's path goes to the component, any
    /// other path gets 404 from the host. Every answer carries `x-request-id`
    /// (the client's, or a new one) and gets one access-log line.
    pub async fn route<B>(&self, request: hyper::Request<B>) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .filter(|value| is_usable_request_id(value.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        // The request runs to its end on the version current now.
        let version = self.slot.current();
        let mut response = if path == ENDPOINT_PATH {
            version
                .plugin
                .handle(self.capabilities().clone(), request)
                .await
        } else {
            json_response(404, r#"{"error":"Not found"}"#)
        };
        let took = started.elapsed();
        let status = response.status().as_u16();
        self.capabilities().metrics.request(status, took);
        tracing::info!(
            target: "keybust::access",
            %method,
            path,
            status,
            latency_ms = took.as_secs_f64() * 1000.0,
            digest = &version.digest()[..12],
            request_id = request_id.to_str().unwrap_or_default(),
        );
        response.headers_mut().insert(REQUEST_ID, request_id);
        response
    }
}

const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Client-chosen request ids are kept when they are short and printable.
fn is_usable_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique request id: a random per-process prefix and a counter.
fn new_request_id() -> http::HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(rand::random);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    http::HeaderValue::from_str(&format!("{prefix:08x}-{n:012x}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// Serves `listener` until `shutdown` resolves, then waits for open
/// connections to finish their in-flight requests.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    handler: F,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<HyperOutgoingBody>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let service = service_fn(move |request| {
            let response = handler(request);
            async move { Ok::<_, Infallible>(response.await) }
        });
        let connection = http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed with requests still in flight"
        );
    }
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}
