//! A gateway of your own, with keybust mounted at its endpoint's path.
//!
//! The gateway keeps its own routes (`/healthz` and `/api/hello` here);
//! `POST /api/invalidate-user-api-key-cache` goes to the keybust component,
//! which runs with host capabilities built from the environment
//! (`CONVEX_*`, `CLERK_*`, `REDIS_URL`, ... as in keybust's README).
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
use keybust::endpoint::{ENDPOINT_PATH, Endpoint};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The gateway's response body: its own bodies and keybust's, boxed alike.
pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
}

/// The gateway's router: its own routes, and keybust at its path.
pub async fn app(endpoint: Arc<Endpoint>, request: Request<Incoming>) -> Response<Body> {
    match (request.method(), request.uri().path()) {
        (_, ENDPOINT_PATH) => endpoint
            .route(request)
            .await
            .map(|body| body.map_err(Into::into).boxed_unsync()),
        (&Method::GET, "/healthz") => text(StatusCode::OK, "gateway ok"),
        (&Method::GET, "/api/hello") => text(StatusCode::OK, r#"{"hello":"from your own route"}"#),
        _ => text(StatusCode::NOT_FOUND, "no such route in this gateway"),
    }
}

/// Serves the gateway on `listener`.
pub async fn serve(listener: TcpListener, endpoint: Arc<Endpoint>) {
    while let Ok((stream, _)) = listener.accept().await {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let endpoint = endpoint.clone();
                async move { Ok::<_, Infallible>(app(endpoint, request).await) }
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
