//! The keybust endpoint as one value: a component slot plus what every
//! request goes through around it (routing, request ids, the access log,
//! metrics). This is the type to embed: build it from capabilities and a
//! component, then hand it `hyper::Request`s.

use crate::body::{ResponseBody, json_response};
use crate::capabilities::Capabilities;
use crate::digest::hex_digest;
use crate::limits::Limits;
use crate::runtime::artifacts::{ArtifactCache, ArtifactKey};
use crate::runtime::engine::{self, EngineError};
use crate::runtime::{GuestFailure, LoadError};
use crate::serve::access::{AccessRecord, REQUEST_ID};
use crate::versions::history::History;
use crate::versions::slot::{ComponentSlot, Version};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tracing::Instrument;

/// The only path the component serves.
pub const ENDPOINT_PATH: &str = "/api/invalidate-user-api-key-cache";

/// How an endpoint is built: where precompiled code goes, and its bounds.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// Directory for precompiled components ([`ArtifactCache`]); none: compile every time.
    pub cache_dir: Option<PathBuf>,
    /// The file holding the key that authenticates precompiled components
    /// ([`ArtifactKey`]), outside `cache_dir`; none: a key for this process
    /// alone, so entries from earlier processes are rebuilt.
    pub artifact_key: Option<PathBuf>,
    /// The size bound of the precompiled component cache.
    pub cache_max_bytes: u64,
    /// Directory where accepted versions are recorded, so a swap survives
    /// a restart ([`History`]); none: every start serves what it is given.
    pub history_dir: Option<PathBuf>,
    /// Restore from the history only versions whose signature was checked
    /// (and the embedded one): set when `--verify-key` is.
    pub signed_only: bool,
    /// Bounds on guests, requests and connections.
    pub limits: Limits,
}

impl Default for EndpointConfig {
    /// No precompiled cache; the default bounds.
    fn default() -> Self {
        EndpointConfig {
            cache_dir: None,
            artifact_key: None,
            cache_max_bytes: crate::runtime::artifacts::DEFAULT_MAX_BYTES,
            history_dir: None,
            signed_only: false,
            limits: Limits::default(),
        }
    }
}

impl EndpointConfig {
    /// The precompiled cache this configuration asks for, when it can be
    /// had; a cache that cannot be trusted or written is left out, with a
    /// warning, and components are compiled every time.
    fn artifact_cache(&self, engine: &wasmtime::Engine) -> Option<ArtifactCache> {
        let dir = self.cache_dir.as_deref()?;
        let key = match &self.artifact_key {
            Some(path) => ArtifactKey::load_or_create(path),
            None => ArtifactKey::ephemeral(),
        };
        let opened = key.and_then(|key| ArtifactCache::open(dir, key, engine));
        match opened {
            Ok(cache) => Some(cache.with_max_bytes(self.cache_max_bytes)),
            Err(err) => {
                tracing::warn!(dir = %dir.display(), error = %err, "precompiled component cache disabled");
                None
            }
        }
    }
}

/// The configured component (`--component`) as it reads at start.
#[derive(Debug, Clone)]
pub struct Configured {
    /// Its label: `embedded`, the file path, the `oci://` reference; the
    /// history is kept under it.
    pub source: String,
    /// Its bytes; none when it cannot be read now.
    pub bytes: Option<Vec<u8>>,
    /// Whether they were pulled with their signature checked.
    pub signed: bool,
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
    /// The configured source cannot be read, and no version accepted
    /// under it is recorded.
    #[error("component {source_name} cannot be had, and no earlier version of it is recorded")]
    Unavailable {
        /// The configured source.
        source_name: String,
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
    /// Shared with what swaps versions in (a follower, a file watcher),
    /// which hold it, not the whole endpoint.
    slot: Arc<ComponentSlot>,
    /// Admission: one permit per request that may run a guest at once
    /// (`--max-concurrent-requests`, kept below the instance pool so a
    /// pooling slot is always free for an admitted request). A request
    /// waits for a permit at most `--queue-timeout`, then gets 503 with
    /// `Retry-After`: under overload clients get a fast, retryable answer
    /// instead of a queue that grows without bound. The permit moves into
    /// the task that runs the guest and is released when the guest has
    /// finished, not when the client goes away: a client that hangs up
    /// cannot free a slot while its guest still runs. The semaphore is
    /// fair, so waiters are admitted in order.
    admission: Arc<tokio::sync::Semaphore>,
    /// Set when the process starts to stop: readiness turns at once, so a
    /// load balancer stops sending traffic while requests still finish.
    draining: std::sync::atomic::AtomicBool,
}

impl Endpoint {
    /// Serves whatever `slot` holds.
    pub fn new(slot: ComponentSlot) -> Self {
        let admission = Arc::new(tokio::sync::Semaphore::new(
            slot.limits().max_concurrent_requests,
        ));
        Endpoint {
            slot: Arc::new(slot),
            admission,
            draining: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The component slot, for swaps.
    pub fn slot(&self) -> &Arc<ComponentSlot> {
        &self.slot
    }

    /// Marks the endpoint as going away: [`Endpoint::unready_reasons`]
    /// says so from now on. Requests are still served.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Why this endpoint should get no traffic now, if it should not:
    /// draining, or what [`Capabilities::unready_reasons`] finds.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            reasons.push("draining: the process is stopping".to_owned());
        }
        reasons.extend(self.capabilities().unready_reasons());
        reasons
    }

    /// The capabilities given to the component.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        self.slot.capabilities()
    }

    /// Answers one request: the endpoint's path goes to the component, any
    /// other path gets 404 from the host. Every answer carries `x-request-id`
    /// (the client's, or a new one) and gets one access-log line, written
    /// when the request is over ([`AccessRecord`]).
    pub async fn route<B>(&self, request: hyper::Request<B>) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // The request runs to its end on the version current now.
        let version = self.slot.current();
        let route = (request.uri().path() == ENDPOINT_PATH).then_some(ENDPOINT_PATH);
        let record = AccessRecord::start(
            &request,
            route,
            version.digest(),
            self.capabilities().metrics.clone(),
        );
        let span = record.span().clone();
        self.answer(&version, request, record)
            .instrument(span)
            .await
    }
}

impl Endpoint {
    /// [`Endpoint::route`] inside the request's server span.
    async fn answer<B>(
        &self,
        version: &Version,
        request: hyper::Request<B>,
        record: Arc<AccessRecord>,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let mut response = if request.uri().path() != ENDPOINT_PATH {
            json_response(404, r#"{"error":"Not found"}"#)
        } else if !has_usable_authority(&request) {
            // wasi:http hands the guest an authority; without one there is
            // no request to hand it. The client's fault, not the host's.
            tracing::debug!(
                request_id = record.request_id().to_str().unwrap_or_default(),
                "request without a usable Host"
            );
            json_response(400, r#"{"error":"Bad request"}"#)
        } else {
            self.admit_and_handle(version, request, record.clone())
                .await
        };
        record.answered(response.status().as_u16());
        response
            .headers_mut()
            .insert(REQUEST_ID, record.request_id().clone());
        response
    }

    /// Runs the request once a concurrency slot is free; past the queue
    /// timeout, answers 503 with `Retry-After` instead of piling up. The
    /// slot and the access record stay with the guest until it finishes.
    async fn admit_and_handle<B>(
        &self,
        version: &Version,
        request: hyper::Request<B>,
        record: Arc<AccessRecord>,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let headers = request.headers().clone();
        let queue_timeout = self.slot.limits().queue_timeout;
        let admitted =
            tokio::time::timeout(queue_timeout, self.admission.clone().acquire_owned()).await;
        let mut response = match admitted {
            Ok(Ok(permit)) => {
                match version
                    .plugin
                    .handle(self.capabilities().clone(), request, (permit, record))
                    .await
                {
                    Ok(response) => return response,
                    Err(failure) => {
                        let metrics = &self.capabilities().metrics;
                        match failure {
                            GuestFailure::BodyTimeout => metrics.body_timed_out(),
                            GuestFailure::Failed(_) => metrics.guest_failed("trap"),
                            GuestFailure::OutOfTime(_) => metrics.guest_failed("timeout"),
                        }
                        failure.response()
                    }
                }
            }
            _ => {
                self.capabilities().metrics.unavailable("shed");
                let mut busy = json_response(503, r#"{"error":"Service unavailable"}"#);
                busy.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                busy
            }
        };
        self.capabilities()
            .origins
            .add_cors_headers(&headers, response.headers_mut());
        response
    }
}

/// The authority wasi:http gives the guest: the URI's, else a `Host` header
/// of visible ASCII.
fn has_usable_authority<B>(request: &hyper::Request<B>) -> bool {
    request.uri().authority().is_some()
        || request
            .headers()
            .get(http::header::HOST)
            .is_some_and(|host| !host.is_empty() && host.to_str().is_ok())
}

/// Building an endpoint.
impl Endpoint {
    /// Serves the component built from `guest/` and embedded in this crate
    /// (the `embedded-component` feature), with [`EndpointConfig::default`]:
    /// no precompiled cache (every load compiles, 1-2 s) and the default
    /// limits. [`Endpoint::load`] takes a config.
    #[cfg(feature = "embedded-component")]
    pub async fn embedded(capabilities: Arc<Capabilities>) -> Result<Self, EndpointError> {
        Self::load(
            capabilities,
            crate::runtime::plugin::EMBEDDED_COMPONENT.to_vec(),
            "embedded".to_owned(),
            &EndpointConfig::default(),
        )
        .await
    }

    /// Serves the component in the file at `path`, with
    /// [`EndpointConfig::default`] as `Endpoint::embedded` does. The file
    /// is read once: watching it is [`crate::rollout::reload::watch`]'s job.
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
    ///
    /// With a history directory, `source` is the configured source (the
    /// `--component` value) and what [`History::restore`] decides serves:
    /// the last accepted version and its rollback target, when they were
    /// accepted under that source and it still holds `bytes`. A recorded
    /// version that no longer loads (a host whose world changed, say) is
    /// passed over, with a warning, for `bytes`.
    pub async fn load(
        capabilities: Arc<Capabilities>,
        bytes: Vec<u8>,
        source: String,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let configured = Configured {
            source,
            bytes: Some(bytes),
            signed: false,
        };
        Self::load_configured(capabilities, configured, config).await
    }

    /// Like [`Endpoint::load`], for a configured source that may not be
    /// readable now (a registry that is down): without bytes, the last
    /// version accepted under its label serves, when the history has one.
    pub async fn load_configured(
        capabilities: Arc<Capabilities>,
        configured: Configured,
        config: &EndpointConfig,
    ) -> Result<Self, EndpointError> {
        let Configured {
            source,
            bytes,
            signed,
        } = configured;
        let engine = engine::new_engine(&config.limits)?;
        let artifacts = config.artifact_cache(&engine);
        let linker = engine::new_linker(&engine)?;
        let limits = Arc::new(config.limits.clone());
        let history = config.history_dir.as_deref().and_then(|dir| {
            History::open(dir)
                .map_err(|err| {
                    tracing::warn!(error = %err, "component history disabled: swaps will not survive a restart");
                })
                .ok()
        });
        let new_slot = |bytes: Vec<u8>, source: String, signed: bool| {
            ComponentSlot::new_signed(
                linker.clone(),
                artifacts.clone(),
                capabilities.clone(),
                limits.clone(),
                bytes,
                source,
                signed,
            )
        };
        let configured_digest = bytes.as_deref().map(hex_digest);
        let restored = history.as_ref().and_then(|history| {
            history.restore(&source, configured_digest.as_deref(), config.signed_only)
        });
        let mut restored_slot = None;
        if let Some(start) = restored {
            let current = start.current.bytes.clone();
            match new_slot(
                start.current.bytes,
                start.current.source,
                start.current.signed,
            )
            .await
            {
                Ok(slot) => {
                    if let Some(previous) = start.previous
                        && let Err(err) = slot
                            .set_previous(previous.bytes, previous.source, previous.signed)
                            .await
                    {
                        tracing::warn!(error = %err, "the recorded rollback target no longer loads; there is none");
                    }
                    restored_slot = Some((slot, current));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the last accepted component no longer loads; serving the configured one");
                }
            }
        }
        let restored = restored_slot.is_some();
        let (mut slot, serving) = match restored_slot {
            Some(restored) => restored,
            None => {
                let bytes = bytes.ok_or_else(|| EndpointError::Unavailable {
                    source_name: source.clone(),
                })?;
                let slot = new_slot(bytes.clone(), source.clone(), signed)
                    .await
                    .map_err(|error| EndpointError::Load {
                        source_name: source.clone(),
                        error,
                    })?;
                (slot, bytes)
            }
        };
        if let Some(history) = history {
            slot.keep_history(history, source, serving, !restored).await;
        }
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
