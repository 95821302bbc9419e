//! Serving: HTTP/1.1 on hyper, the endpoint's path routed to the component,
//! everything else answered by the host; plus the admin listener.

use crate::capabilities::Capabilities;
use crate::plugin::{Plugin, json_response};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// The only path the component serves.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";

/// How long a client may take to send its request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The component and the capabilities it runs with.
pub struct Gateway {
    plugin: Plugin,
    capabilities: Arc<Capabilities>,
}

impl Gateway {
    /// Pairs a loaded component with the capabilities it will be given.
    pub fn new(plugin: Plugin, capabilities: Arc<Capabilities>) -> Self {
        Gateway {
            plugin,
            capabilities,
        }
    }

    /// The loaded component.
    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    /// The capabilities given to the component.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        &self.capabilities
    }

    /// Answers one request: the endpoint's path goes to the component, any
    /// other path gets 404 from the host.
    pub async fn route<B>(&self, request: hyper::Request<B>) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        if request.uri().path() != ENDPOINT_PATH {
            return json_response(404, r#"{"error":"Not found"}"#);
        }
        self.plugin.handle(self.capabilities.clone(), request).await
    }
}

/// Serves `listener` until `shutdown` resolves, then waits for open
/// connections to finish their in-flight requests.
pub async fn serve<F, Fut>(listener: TcpListener, handler: F, shutdown: impl Future<Output = ()>)
where
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
    graceful.shutdown().await;
}

/// Binds a TCP listener, naming the address in the error.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

/// The admin listener's answers: liveness and readiness.
pub async fn admin(
    gateway: &Gateway,
    request: hyper::Request<Incoming>,
) -> hyper::Response<HyperOutgoingBody> {
    match (request.method(), request.uri().path()) {
        (&http::Method::GET, "/healthz") => json_response(200, r#"{"status":"ok"}"#),
        (&http::Method::GET, "/readyz") => {
            let reasons = gateway.capabilities.unready_reasons();
            if reasons.is_empty() {
                json_response(200, r#"{"status":"ready"}"#)
            } else {
                let body =
                    serde_json::json!({ "status": "not ready", "reasons": reasons }).to_string();
                owned_json_response(503, body)
            }
        }
        _ => json_response(404, r#"{"error":"Not found"}"#),
    }
}

fn owned_json_response(status: u16, body: String) -> hyper::Response<HyperOutgoingBody> {
    let mut response = json_response(status, "");
    *response.body_mut() = http_body_util::Full::new(Bytes::from(body))
        .map_err(|never| match never {})
        .boxed_unsync();
    response
}
