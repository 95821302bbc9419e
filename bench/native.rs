//! The benchmark's floor: the same endpoint policy (`guest/src/policy.rs`)
//! compiled natively and served with the same host capabilities, without
//! wasmtime. `bench/run.sh` prints keybust's throughput as a ratio of this.
//!
//! Configured like `keybust serve` (CONVEX_*, CLERK_*, REDIS_URL, ...);
//! prints `listening on http://ADDR` once it accepts. Requests are admitted
//! as keybust admits them by default (`--max-concurrent-requests`, then
//! 503 after `--queue-timeout`): past that, every request would hold a
//! blocking thread and the runtime would run out of them.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use keybust::capabilities::Capabilities;
use keybust::limits::Limits;
use keybust::serve::endpoint::ENDPOINT_PATH;
use keybust_guest::policy::{self, BodyError, RequestHead};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::runtime::Handle;
use tokio::sync::Semaphore;

/// The host capabilities, called synchronously as the policy expects.
struct NativeCaps<'a> {
    caps: &'a Capabilities,
    runtime: Handle,
}

impl policy::Capabilities for NativeCaps<'_> {
    fn origin_allowed(&self, origin: &str) -> bool {
        self.caps.origins.is_allowed(origin)
    }

    fn default_origin(&self) -> String {
        self.caps.origins.default_origin().to_owned()
    }

    fn validate_session(&self, token: &str) -> Result<String, policy::SessionError> {
        self.runtime
            .block_on(self.caps.session.validate(token))
            .map_err(Into::into)
    }

    fn convex_post(
        &self,
        path: &str,
        body: &[u8],
    ) -> Result<policy::ConvexResponse, policy::ConvexError> {
        self.runtime
            .block_on(self.caps.convex.post(path, body.to_vec()))
            .map(Into::into)
            .map_err(Into::into)
    }

    fn cache_delete(&self, key: &str) -> Result<(), policy::CacheError> {
        self.runtime
            .block_on(self.caps.cache.delete(key))
            .map_err(Into::into)
    }

    fn warn(&self, message: &str) {
        tracing::warn!("{message}");
    }
}

fn header(request: &hyper::Request<Incoming>, name: &str) -> Option<String> {
    request
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn handle(
    caps: Arc<Capabilities>,
    admission: Arc<Semaphore>,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Full<Bytes>> {
    if request.uri().path() != ENDPOINT_PATH {
        let mut response =
            hyper::Response::new(Full::new(Bytes::from_static(br#"{"error":"Not found"}"#)));
        *response.status_mut() = hyper::StatusCode::NOT_FOUND;
        return response;
    }
    let queue_timeout = Limits::default().queue_timeout;
    let Ok(Ok(_permit)) = tokio::time::timeout(queue_timeout, admission.acquire_owned()).await
    else {
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(
            br#"{"error":"Service unavailable"}"#,
        )));
        *response.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
        response
            .headers_mut()
            .insert("retry-after", hyper::header::HeaderValue::from_static("1"));
        return response;
    };
    let method = request.method().as_str().to_owned();
    let origin = header(&request, "origin");
    let authorization = header(&request, "authorization");
    let content_length = header(&request, "content-length").and_then(|v| v.parse().ok());
    let body = request.into_body();
    let runtime = Handle::current();
    // The policy is synchronous; let this worker block while it runs.
    let answer = tokio::task::block_in_place(move || {
        let head = RequestHead {
            method: &method,
            origin: origin.as_deref(),
            authorization: authorization.as_deref(),
            content_length,
        };
        let read_body = |limit: usize| {
            runtime
                .block_on(Limited::new(body, limit).collect())
                .map(|collected| collected.to_bytes().to_vec())
                .map_err(|err| {
                    if err.is::<http_body_util::LengthLimitError>() {
                        BodyError::TooLarge
                    } else {
                        BodyError::Broken
                    }
                })
        };
        let native = NativeCaps {
            caps: &caps,
            runtime: runtime.clone(),
        };
        policy::handle(&head, read_body, &native)
    });
    let mut response = hyper::Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() = hyper::StatusCode::from_u16(answer.status).unwrap_or_default();
    for (name, value) in answer.headers {
        if let Ok(value) = hyper::header::HeaderValue::from_str(&value) {
            response.headers_mut().append(name, value);
        }
    }
    response
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let caps = Arc::new(Capabilities::from_env()?);
    let addr = std::env::var("KEYBUST_LISTEN").unwrap_or_else(|_| "127.0.0.1:8787".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let admission = Arc::new(Semaphore::new(Limits::default().max_concurrent_requests));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let caps = caps.clone();
        let admission = admission.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let caps = caps.clone();
                let admission = admission.clone();
                async move { Ok::<_, Infallible>(handle(caps, admission, request).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
