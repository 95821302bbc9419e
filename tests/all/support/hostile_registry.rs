//! A registry that lies about digests: an HTTP proxy in front of a real
//! [`OciRegistry`] that passes every request through, but names a decoy
//! manifest digest where a client might take the registry's word for one:
//! the `Location` of a manifest upload, and the `Docker-Content-Digest` of
//! a manifest asked for by tag with `HEAD`.

use super::registry::OciRegistry;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::sync::Arc;
use tokio::net::TcpListener;

/// The proxy; it serves until dropped.
pub struct HostileRegistry {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HostileRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HostileRegistry {
    /// A proxy to `registry` that names `decoy` (`sha256:...`) in place of
    /// the manifest digests it passes back.
    pub async fn start(registry: &OciRegistry, decoy: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = Arc::new(Upstream {
            base: format!("http://127.0.0.1:{}", registry.port),
            decoy: decoy.to_owned(),
            client: reqwest::Client::new(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let upstream = upstream.clone();
                        async move { Ok::<_, Infallible>(upstream.forward(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        HostileRegistry { port, task }
    }

    /// `oci://127.0.0.1:PORT/{repository_and_tag}`, through the proxy.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repository_and_tag}", self.port)
    }
}

struct Upstream {
    base: String,
    decoy: String,
    client: reqwest::Client,
}

impl Upstream {
    async fn forward(&self, request: hyper::Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let body = body.collect().await.unwrap().to_bytes();
        let mut forwarded = self
            .client
            .request(parts.method.clone(), format!("{}{path}", self.base))
            .body(body);
        for (name, value) in &parts.headers {
            if name != http::header::HOST && name != http::header::CONTENT_LENGTH {
                forwarded = forwarded.header(name, value);
            }
        }
        let answer = forwarded.send().await.unwrap();
        let status = answer.status();
        let mut headers = answer.headers().clone();
        let body = answer.bytes().await.unwrap();
        let manifest = path.contains("/manifests/");
        let by_tag = manifest && !path.contains("/manifests/sha256:");
        if manifest && parts.method == http::Method::PUT && headers.contains_key("location") {
            let location = format!(
                "{}{}",
                path.split("/manifests/").next().unwrap(),
                "/manifests/"
            );
            headers.insert(
                "location",
                format!("{location}{}", self.decoy).parse().unwrap(),
            );
        }
        // Only where nothing comes with it to check it against: a GET's
        // digest header is checked against the body by oci-client.
        if by_tag
            && parts.method == http::Method::HEAD
            && headers.contains_key("docker-content-digest")
        {
            headers.insert("docker-content-digest", self.decoy.parse().unwrap());
        }
        let mut response = hyper::Response::new(Full::new(body));
        *response.status_mut() = status;
        // Upload locations the registry made point at itself; keep them
        // pointing at the proxy's clients' view by leaving them relative.
        if let Some(location) = headers.get("location").and_then(|v| v.to_str().ok())
            && let Some(relative) = location.strip_prefix(&self.base)
        {
            let relative = relative.to_owned();
            headers.insert("location", relative.parse().unwrap());
        }
        headers.remove(http::header::TRANSFER_ENCODING);
        *response.headers_mut() = headers;
        response
    }
}
