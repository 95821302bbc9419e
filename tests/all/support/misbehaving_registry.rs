//! Registries that misbehave in ways a real one is not made to: one whose
//! manifests go on for hundreds of MiB, and a proxy to a real
//! [`OciRegistry`] that redirects every blob to a plain-HTTP host of its
//! choosing. Each counts what a client took from it.

use super::registry::OciRegistry;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::net::TcpListener;

pub type Body = BoxBody<Bytes, Infallible>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// Serves `handle` on `listener` until the returned task is aborted.
pub fn serve<F, R>(listener: TcpListener, handle: F) -> tokio::task::JoinHandle<()>
where
    F: Fn(hyper::Request<Incoming>) -> R + Clone + Send + Sync + 'static,
    R: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = handle.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let handle = handle.clone();
                    async move { Ok::<_, Infallible>(handle(request).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

pub struct MisbehavingRegistry {
    pub port: u16,
    /// Bytes of manifest body handed to the socket (bottomless), or
    /// requests that reached the redirect target (redirecting).
    pub taken: Arc<AtomicU64>,
    /// `127.0.0.2:PORT`, where blobs are redirected to (redirecting).
    pub redirect_target: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for MisbehavingRegistry {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl MisbehavingRegistry {
    /// `oci://127.0.0.1:PORT/{repository_and_tag}`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repository_and_tag}", self.port)
    }

    /// A registry whose every manifest is `total` bytes (the start of a
    /// JSON object, then spaces), sent in 64 KiB chunks with no length
    /// declared, as fast as the client reads.
    pub async fn bottomless(total: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicU64::new(0));
        let counted = taken.clone();
        let task = serve(listener, move |request: hyper::Request<Incoming>| {
            let counted = counted.clone();
            async move {
                let path = request.uri().path().to_owned();
                if !path.contains("/manifests/") {
                    return hyper::Response::new(full("{}"));
                }
                let digest = format!("sha256:{}", "ab".repeat(32));
                let mut response = if request.method() == http::Method::HEAD {
                    hyper::Response::new(full(Bytes::new()))
                } else {
                    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                    let chunks = total / chunk.len() as u64;
                    let body = stream::once(async { Bytes::from_static(b"{\"schemaVersion\":2,") })
                        .chain(stream::iter((0..chunks).map(move |_| chunk.clone())))
                        .map(move |bytes| {
                            counted.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                            Ok::<_, Infallible>(Frame::data(bytes))
                        });
                    hyper::Response::new(BodyExt::boxed(StreamBody::new(body)))
                };
                response.headers_mut().insert(
                    "content-type",
                    "application/vnd.oci.image.manifest.v1+json"
                        .parse()
                        .unwrap(),
                );
                response
                    .headers_mut()
                    .insert("docker-content-digest", digest.parse().unwrap());
                response
            }
        });
        MisbehavingRegistry {
            port,
            taken,
            redirect_target: String::new(),
            tasks: vec![task],
        }
    }

    /// A plain-HTTP server on 127.0.0.2 answering every request with
    /// `bytes`, counting the requests (`redirect_target` is its address).
    pub async fn serving(bytes: Vec<u8>) -> Self {
        let listener = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let taken = Arc::new(AtomicU64::new(0));
        let counted = taken.clone();
        let bytes = Bytes::from(bytes);
        let task = serve(listener, move |_request: hyper::Request<Incoming>| {
            counted.fetch_add(1, Ordering::Relaxed);
            let bytes = bytes.clone();
            async move { hyper::Response::new(full(bytes)) }
        });
        MisbehavingRegistry {
            port,
            taken,
            redirect_target: format!("127.0.0.2:{port}"),
            tasks: vec![task],
        }
    }

    /// A proxy to `registry` that answers every blob `GET` with a
    /// redirect to the same path on a plain-HTTP listener at 127.0.0.2,
    /// another host than the registry's, which serves the blob too and
    /// counts the requests reaching it.
    pub async fn redirecting_blobs(registry: &OciRegistry) -> Self {
        let upstream = format!("http://127.0.0.1:{}", registry.port);
        let target = TcpListener::bind("127.0.0.2:0").await.unwrap();
        let target_port = target.local_addr().unwrap().port();
        let taken = Arc::new(AtomicU64::new(0));
        let counted = taken.clone();
        let forward_upstream = upstream.clone();
        let target_task = serve(target, move |request: hyper::Request<Incoming>| {
            counted.fetch_add(1, Ordering::Relaxed);
            forward(forward_upstream.clone(), request)
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy_task = serve(listener, move |request: hyper::Request<Incoming>| {
            let upstream = upstream.clone();
            async move {
                if request.method() == http::Method::GET
                    && request.uri().path().contains("/blobs/sha256:")
                {
                    let mut response = hyper::Response::new(full(Bytes::new()));
                    *response.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                    response.headers_mut().insert(
                        "location",
                        format!("http://127.0.0.2:{target_port}{}", request.uri().path())
                            .parse()
                            .unwrap(),
                    );
                    return response;
                }
                forward(upstream, request).await
            }
        });
        MisbehavingRegistry {
            port,
            taken,
            redirect_target: format!("127.0.0.2:{target_port}"),
            tasks: vec![target_task, proxy_task],
        }
    }
}

/// `request`, passed to `upstream` and its answer passed back, the
/// upload locations it names made relative (pointing at the proxy).
pub async fn forward(upstream: String, request: hyper::Request<Incoming>) -> hyper::Response<Body> {
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let body = body.collect().await.unwrap().to_bytes();
    let mut forwarded = reqwest::Client::new()
        .request(parts.method.clone(), format!("{upstream}{path}"))
        .body(body);
    for (name, value) in &parts.headers {
        if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = forwarded.send().await.unwrap();
    let status = answer.status();
    let mut headers = answer.headers().clone();
    let bytes = answer.bytes().await.unwrap();
    if let Some(location) = headers.get("location").and_then(|v| v.to_str().ok())
        && let Some(relative) = location.strip_prefix(&upstream)
    {
        let relative = relative.to_owned();
        headers.insert("location", relative.parse().unwrap());
    }
    headers.remove(http::header::TRANSFER_ENCODING);
    let mut response = hyper::Response::new(full(bytes));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
