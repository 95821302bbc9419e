//! A gateway of your own, with keybust mounted at its endpoint's path.
//!
//! The gateway keeps its own routes (`/healthz` and `/api/hello` here);
//! `POST /api/invalidate-user-api-key-cache` goes to the keybust component,
//! which runs with host capabilities built from the environment
//! (`CONVEX_*`, `CLERK_*`, `REDIS_URL`, ... as in keybust's README; with
//! no cache backend named a revocation answers 503, and
//! `KEYBUST_CACHE=embedded` keeps an in-process one for a try-out). A
//! route of the gateway's own, `PUT /gateway/component`, swaps in a new
//! build of the component without a restart (guard such a route as you
//! guard your other admin routes: here it takes loopback peers only).
//!
//! Run it: `cargo run --release -p keybust-host --example gateway`
//! (listens on `GATEWAY_LISTEN`, default `127.0.0.1:8080`).

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use keybust::capabilities::Capabilities;
use keybust::limits::MAX_COMPONENT_BYTES;
use keybust::serve::endpoint::{ENDPOINT_PATH, Endpoint};
use keybust::versions::slot::Provenance;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The gateway's response body: its own bodies and keybust's, boxed alike.
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// Swaps the component for the request's body: 200 and the new digest once
/// it serves, 422 and why when it cannot serve (the old one serves on).
async fn swap(endpoint: &Endpoint, request: Request<Incoming>) -> Response<Body> {
    let bytes = match http_body_util::Limited::new(request.into_body(), MAX_COMPONENT_BYTES)
        .collect()
        .await
    {
        Ok(body) => body.to_bytes().to_vec(),
        Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "component too large"),
    };
    match endpoint
        .slot()
        .replace(bytes, Provenance::unchecked("gateway upload"))
        .await
    {
        Ok(swapped) => text(StatusCode::OK, swapped.version.digest().to_owned()),
        Err(err) => text(StatusCode::UNPROCESSABLE_ENTITY, err.to_string()),
    }
}

/// The gateway's router: its own routes, and keybust at its path.
pub async fn app(
    endpoint: Arc<Endpoint>,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (_, ENDPOINT_PATH) => endpoint
            .route(request)
            .await
            .map(|body| body.map_err(Into::into).boxed_unsync()),
        (&Method::PUT, "/gateway/component") if peer.ip().is_loopback() => {
            swap(&endpoint, request).await
        }
        (&Method::GET, "/healthz") => text(StatusCode::OK, "gateway ok"),
        (&Method::GET, "/api/hello") => text(StatusCode::OK, r#"{"hello":"from your own route"}"#),
        _ => text(StatusCode::NOT_FOUND, "no such route in this gateway"),
    }
}

/// Serves the gateway on `listener`.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    while let Ok((stream, peer)) = listener.accept().await {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(app(endpoint, peer, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let capabilities = Arc::new(Capabilities::from_env()?);
    let endpoint = Arc::new(Endpoint::embedded(capabilities).await?);
    let addr = std::env::var("GATEWAY_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("gateway listening on http://{}", listener.local_addr()?);
    serve(listener, endpoint).await;
    Ok(())
}
