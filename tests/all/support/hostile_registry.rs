//! A registry that lies about digests: an HTTP proxy in front of a real
//! [`OciRegistry`] that passes every request through, but names a decoy
//! manifest digest where a client might take the registry's word for one:
//! the `Location` of a manifest upload, and the `Docker-Content-Digest` of
//! a manifest asked for by tag with `HEAD`.

use super::misbehaving_registry::{Body, forward, serve};
use super::registry::OciRegistry;
use hyper::body::Incoming;
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
        let upstream = format!("http://127.0.0.1:{}", registry.port);
        let decoy = decoy.to_owned();
        let task = serve(listener, move |request: hyper::Request<Incoming>| {
            lie(upstream.clone(), decoy.clone(), request)
        });
        HostileRegistry { port, task }
    }

    /// `oci://127.0.0.1:PORT/{repository_and_tag}`, through the proxy.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("oci://127.0.0.1:{}/{repository_and_tag}", self.port)
    }
}

/// `request` passed to `upstream`, with `decoy` named in the answer's
/// manifest digests.
async fn lie(
    upstream: String,
    decoy: String,
    request: hyper::Request<Incoming>,
) -> hyper::Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let mut response = forward(upstream, request).await;
    let headers = response.headers_mut();
    let manifest = path.contains("/manifests/");
    let by_tag = manifest && !path.contains("/manifests/sha256:");
    if manifest && method == http::Method::PUT && headers.contains_key("location") {
        let repository = path.split("/manifests/").next().unwrap();
        headers.insert(
            "location",
            format!("{repository}/manifests/{decoy}").parse().unwrap(),
        );
    }
    // Only where nothing comes with it to check it against: a GET's
    // digest header is checked against the body by oci-client.
    if by_tag && method == http::Method::HEAD && headers.contains_key("docker-content-digest") {
        headers.insert("docker-content-digest", decoy.parse().unwrap());
    }
    response
}
