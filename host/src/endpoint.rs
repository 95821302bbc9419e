//! The keybust endpoint as one value: a component slot plus what every
//! request goes through around it (routing, request ids, the access log,
//! metrics). This is the type to embed: build it from capabilities and a
//! component, then hand it `hyper::Request`s.

use crate::artifacts::ArtifactCache;
use crate::body::{ResponseBody, json_response};
use crate::capabilities::Capabilities;
use crate::engine::{self, EngineError};
use crate::limits::Limits;
use crate::plugin::{self, LoadError};
use crate::slot::{ComponentSlot, Version};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The only path the component serves.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";

/// How an endpoint is built: where precompiled code goes, and its bounds.
#[derive(Debug, Clone, Default)]
pub struct EndpointConfig {
    /// Directory for precompiled components ([`ArtifactCache`]); none: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// Bounds on guests, requests and connections.
    pub limits: Limits,
}

/// Why an endpoint could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// wasmtime could not be set up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The component file cannot be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The component cannot serve.
    #[error("cannot load component {source_name}: {error}")]
    Load {
        /// Where the bytes came from.
        source_name: String,
        /// Why.
        error: LoadError,
    },
}

/// The serving side: the component slot and what each request goes through
/// around it (routing, request ids, the access log, metrics).
pub struct Endpoint {
    slot: ComponentSlot,
    /// Admission: one permit per request that may run a guest at once
    /// (`--max-concurrent-requests`, kept below the instance pool so a
    /// pooling slot is always free for an admitted request). A request
    /// waits for a permit at most `--queue-timeout`, then gets 503 with
    /// `Retry-After`: under overload clients get a fast, retryable answer
    /// instead of a queue that grows without bound. The permit is held
    /// for as long as the request's guest runs and released when it is
    /// dropped; the semaphore is fair, so waiters are admitted in order.
    admission: tokio::sync::Semaphore,
}

impl Endpoint {
    /// Serves whatever `slot` holds.
    pub fn new(slot: ComponentSlot) -> Self {
        let admission = tokio::sync::Semaphore::new(slot.limits().max_concurrent_requests);
        Endpoint { slot, admission }
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
    pub async fn route<B>(&self, request: hyper::Request<B>) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
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
            self.admit_and_handle(&version, request).await
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

impl Endpoint {
    /// Runs the request once a concurrency slot is free; past the queue
    /// timeout, answers 503 with `Retry-After` instead of piling up.
    async fn admit_and_handle<B>(
        &self,
        version: &Version,
        request: hyper::Request<B>,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let queue_timeout = self.slot.limits().queue_timeout;
        let _permit = match tokio::time::timeout(queue_timeout, self.admission.acquire()).await {
            Ok(Ok(permit)) => permit,
            _ => {
                let mut busy = json_response(503, r#"{"error":"Service unavailable"}"#);
                busy.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                return busy;
            }
        };
        version
            .plugin
            .handle(self.capabilities().clone(), request)
            .await
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
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // A failed fill leaves a zero prefix: ids stay unique within the process.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        u32::from_ne_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    http::HeaderValue::from_str(&format!("{prefix:08x}-{n:012x}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}

/// Building an endpoint.
impl Endpoint {
    /// Serves the component built from `guest/` and embedded in this crate.
    pub async fn embedded(capabilities: Arc<Capabilities>) -> Result<Self, EndpointError> {
        Self::load(
            capabilities,
            plugin::EMBEDDED_COMPONENT.to_vec(),
            "embedded".to_owned(),
            &EndpointConfig::default(),
        )
        .await
    }

    /// Serves the component in the file at `path`.
    pub async fn from_file(
        capabilities: Arc<Capabilities>,
        path: &Path,
    ) -> Result<Self, EndpointError> {
        let shown = path.display().to_string();
        let bytes = tokio::fs::read(path)
            .await
            .map_err(|source| EndpointError::Read {
                path: shown.clone(),
                source,
            })?;
        Self::load(capabilities, bytes, shown, &EndpointConfig::default()).await
    }

    /// Serves the component `bytes`, labelled `source`, as `config` says.
    pub async fn load(
        capabilities: Arc<Capabilities>,
        bytes: Vec<u8>,
        source: String,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let engine = engine::new_engine(&config.limits)?;
        let artifacts = config.cache_dir.as_deref().and_then(|dir| match ArtifactCache::open(dir, &engine) {
            Ok(cache) => Some(cache),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "precompiled component cache disabled");
                None
            }
        });
        let linker = engine::new_linker(&engine)?;
        let limits = Arc::new(config.limits.clone());
        let slot = ComponentSlot::new(
            linker,
            artifacts,
            capabilities,
            limits,
            bytes,
            source.clone(),
        )
        .await
        .map_err(|error| EndpointError::Load {
            source_name: source,
            error,
        })?;
        Ok(Endpoint::new(slot))
    }
}

#[cfg(test)]
mod tests {
    /// The host routes this path to the guest; the guest's policy names it too.
    #[test]
    fn the_path_is_the_guests() {
        assert_eq!(super::ENDPOINT_PATH, keybust_guest::policy::ENDPOINT_PATH);
    }
}
