//! A component compiled and pre-instantiated once ([`Plugin`]), and how one
//! request runs through a fresh instance of it.

use crate::artifacts::{ArtifactCache, Origin, hex_digest};
use crate::body::{ResponseBody, bound_request, json_response};
use crate::capabilities::Capabilities;
use crate::limits::Limits;
use crate::reuse::Reuse;
use crate::store::{GuestState, RequestState, new_store};
use crate::telemetry::TRACE_TARGET;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::handler::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// The largest component keybust takes, from an upload or a registry.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// The component built from `guest/`, embedded at build time (the
/// `embedded-component` feature).
#[cfg(feature = "embedded-component")]
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("KEYBUST_GUEST_WASM"));

/// Why a component cannot serve. Each variant keeps wasmtime's error as
/// its source; the message includes it, since it is what an operator needs
/// to read in a refused swap's 422 or log line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component for this engine.
    #[error("not a valid component: {0:#}")]
    Compile(#[source] wasmtime::Error),
    /// The component does not fit the `keybust:gateway/endpoint` world
    /// (or its wasi:http 0.3 twin, `endpoint-p3`).
    #[error("component does not fit the keybust:gateway/endpoint world: {0:#}")]
    World(#[source] wasmtime::Error),
    /// The component fits but cannot be instantiated.
    #[error("component cannot be instantiated: {0:#}")]
    Instantiate(#[source] wasmtime::Error),
}

/// Which wasi:http a component serves, told by its export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasiHttp {
    /// `wasi:http/incoming-handler@0.2`: one synchronous call per request.
    P2,
    /// `wasi:http/handler@0.3`: an async call per request, its body a stream.
    P3,
}

impl WasiHttp {
    /// The version, for logs and status pages.
    pub fn as_str(self) -> &'static str {
        match self {
            WasiHttp::P2 => "0.2",
            WasiHttp::P3 => "0.3",
        }
    }

    /// The `keybust:gateway` world a component of this kind fits.
    pub fn world(self) -> &'static str {
        match self {
            WasiHttp::P2 => "keybust:gateway/endpoint",
            WasiHttp::P3 => "keybust:gateway/endpoint-p3",
        }
    }
}

/// A compiled, pre-instantiated endpoint component.
#[derive(Clone)]
pub struct Plugin {
    pre: Arc<ProxyPre<RequestState>>,
    engine: wasmtime::Engine,
    digest: String,
    limits: Arc<Limits>,
    serving: Serving,
}

/// How a plugin's requests reach an instance.
#[derive(Clone)]
enum Serving {
    /// A fresh instance per request, in keybust's own store: wasi:http 0.2
    /// without `--instance-reuse`.
    Fresh(wasmtime_wasi_http::p2::bindings::ProxyPre<RequestState>),
    /// Through wasi:http's handler, which keeps instances: `--instance-reuse`
    /// above 1, and every wasi:http 0.3 component (its async export is
    /// driven there; with `--instance-reuse 1`, one request per instance).
    Handler(Arc<Reuse>),
}

impl Plugin {
    /// Compiles `bytes` and checks them against our world.
    pub fn load(
        linker: &Linker<RequestState>,
        bytes: &[u8],
        limits: Arc<Limits>,
    ) -> Result<Self, LoadError> {
        Self::load_cached(linker, None, bytes, limits).map(|(plugin, _)| plugin)
    }

    /// Like [`Plugin::load`], taking the compiled code from `artifacts` when
    /// it holds a verified entry for these bytes, and storing it otherwise.
    pub fn load_cached(
        linker: &Linker<RequestState>,
        artifacts: Option<&ArtifactCache>,
        bytes: &[u8],
        limits: Arc<Limits>,
    ) -> Result<(Self, Origin), LoadError> {
        let engine = linker.engine();
        let digest = hex_digest(bytes);
        let (component, origin) = match artifacts {
            Some(artifacts) => artifacts
                .load_or_compile(engine, bytes, &digest)
                .map_err(LoadError::Compile)?,
            None => (
                Component::new(engine, bytes).map_err(LoadError::Compile)?,
                Origin::Compiled,
            ),
        };
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(LoadError::World)?;
        // Imports are checked above; the export tells the two kinds apart.
        let pre = match wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre.clone()) {
            Ok(pre) => ProxyPre::P2(pre),
            Err(p2) => match wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre) {
                Ok(pre) => ProxyPre::P3(pre),
                Err(p3) => {
                    return Err(LoadError::World(wasmtime::format_err!(
                        "it exports neither wasi:http/incoming-handler@0.2 ({p2:#}) \
                         nor wasi:http/handler@0.3 ({p3:#})"
                    )));
                }
            },
        };
        let pre = Arc::new(pre);
        let serving = match &*pre {
            ProxyPre::P2(p2) if limits.instance_reuse <= 1 => Serving::Fresh(p2.clone()),
            _ => Serving::Handler(Arc::new(Reuse::new(
                pre.clone(),
                engine.clone(),
                limits.clone(),
            ))),
        };
        Ok((
            Plugin {
                pre,
                engine: engine.clone(),
                digest,
                limits,
                serving,
            },
            origin,
        ))
    }

    /// Instantiates the component once without calling it: the last check
    /// before it may serve (start functions run, memories fit the limits).
    pub async fn probe(&self, capabilities: Arc<Capabilities>) -> Result<(), LoadError> {
        let mut store = new_store(&self.engine, capabilities, &self.limits);
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(LoadError::Instantiate)
    }

    /// The checked, pre-instantiated component, for hosts (and benchmarks)
    /// that drive instances themselves; pair it with [`new_store`] on
    /// [`Plugin::engine`].
    pub fn proxy_pre(&self) -> &ProxyPre<RequestState> {
        &self.pre
    }

    /// The engine the component was compiled for.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }

    /// Which wasi:http the component serves.
    pub fn wasi_http(&self) -> WasiHttp {
        match *self.pre {
            ProxyPre::P2(_) => WasiHttp::P2,
            ProxyPre::P3(_) => WasiHttp::P3,
        }
    }

    /// Drops this version's idle reused instances, and the busy ones once
    /// their request is over: it no longer serves. A no-op without
    /// `--instance-reuse`.
    pub fn retire_instances(&self) {
        if let Serving::Handler(reuse) = &self.serving {
            reuse.retire();
        }
    }

    /// SHA-256 of the component's bytes, lower-case hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs one request through a fresh instance (or, with
    /// `--instance-reuse`, a kept one).
    ///
    /// `hold` is kept until the guest has finished, answer body included,
    /// even when the client has gone away meanwhile: give it the
    /// request's admission permit and whatever must outlive the instance.
    ///
    /// A guest that traps or answers nothing is a [`GuestFailure::Failed`]
    /// (500); one that runs out of its execution budget, or a request that
    /// outlives the wall-clock bound, [`GuestFailure::OutOfTime`] (504); a
    /// request body that is not in by `--body-timeout`,
    /// [`GuestFailure::BodyTimeout`] (408). The instance is dropped either way.
    pub async fn handle<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let result = self.run(capabilities, request, hold).await;
        match &result {
            Ok(_) => {}
            Err(GuestFailure::BodyTimeout) => {
                tracing::debug!(digest = %&self.digest[..12], "request body not received within --body-timeout");
            }
            Err(GuestFailure::OutOfTime(why)) => {
                tracing::error!(digest = %&self.digest[..12], "{why}");
            }
            Err(GuestFailure::Failed(err)) => {
                tracing::error!(error = %format!("{err:#}"), digest = %&self.digest[..12], "guest failed");
            }
        }
        result
    }

    async fn run<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match &self.serving {
            Serving::Handler(reuse) => reuse.serve(&capabilities, request, hold).await,
            Serving::Fresh(pre) => {
                let store = new_store(&self.engine, capabilities, &self.limits);
                serve_request(pre.clone(), store, request, &self.limits, hold).await
            }
        }
    }
}

/// Serves one request through a fresh instance of `pre` in `store`, with
/// keybust's bounds: the body clamped to [`MAX_BODY_BYTES`](crate::body::MAX_BODY_BYTES) (plus one byte,
/// so the guest can tell "too large") and to `--body-timeout`, the whole
/// run to `--request-timeout`, and the store's own [`GuestBounds`]
/// (memory, CPU). The store must have gone through
/// [`crate::store::bound_store`]: on an engine with epoch interruption, a
/// store without an epoch deadline traps at once. This is what
/// [`Plugin::handle`] runs (and logs the failures of); a gateway with its
/// own `Linker` and store data calls it with its own `ProxyPre`.
///
/// `hold` is kept until the guest has finished, answer body included, even
/// when the caller has gone away meanwhile (give it the request's admission
/// permit). A failure is a [`GuestFailure`], whose
/// [`GuestFailure::response`] is the answer to give in the guest's place.
///
/// [`GuestBounds`]: crate::store::GuestBounds
pub async fn serve_request<T, B>(
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<T>,
    mut store: wasmtime::Store<T>,
    request: hyper::Request<B>,
    limits: &Limits,
    hold: impl Send + 'static,
) -> Result<hyper::Response<ResponseBody>, GuestFailure>
where
    T: GuestState,
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (request, body_timed_out) = bound_request(request, limits.body_timeout);
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(GuestFailure::Failed)?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(GuestFailure::Failed)?;
    let deadline = limits.request_timeout;
    // The guest keeps running after it hands over the response head: it
    // still has to write the body, which the client reads as it comes.
    // The task, not the caller, owns `hold`: a client that hangs up
    // drops the caller, while the guest runs on to its end.
    // The task runs inside the request's span, so its spans (and the
    // capabilities' under them) belong to the request's trace.
    let task = tokio::spawn(
        async move {
            let _hold = hold;
            // Opened once the instance exists, so it starts when the
            // guest does; a failure before that leaves it unopened.
            let mut guest = tracing::Span::none();
            let call = async {
                let started = Instant::now();
                let proxy = pre
                    .instantiate_async(&mut store)
                    .instrument(tracing::info_span!(target: TRACE_TARGET, "instantiate"))
                    .await?;
                store.data_mut().instantiated(started.elapsed());
                guest = tracing::info_span!(
                    target: TRACE_TARGET,
                    "guest",
                    otel.status_code = tracing::field::Empty,
                );
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .instrument(guest.clone())
                    .await
            };
            let outcome = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) if store.data_mut().bounds().out_of_time() => {
                    Err(GuestFailure::OutOfTime(
                        "guest exceeded its execution time budget (--guest-timeout)".into(),
                    ))
                }
                Ok(Err(err)) => Err(GuestFailure::Failed(err)),
                Err(_) => Err(GuestFailure::OutOfTime(format!(
                    "request exceeded the {deadline:?} request timeout"
                ))),
            };
            if outcome.is_err() {
                guest.record("otel.status_code", "error");
            }
            store.data_mut().finished();
            // The instance goes back to the pool before the request's slot
            // frees, so an admitted request always finds a pool slot.
            drop(store);
            outcome
        }
        .instrument(tracing::Span::current()),
    );
    let answer = match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(GuestFailure::Failed(wasmtime::format_err!(
            "guest answered with error code {code:?}"
        ))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(GuestFailure::Failed(wasmtime::format_err!(
                "guest returned without a response"
            ))),
            Ok(Err(failure)) => Err(failure),
            Err(join) => Err(GuestFailure::Failed(wasmtime::format_err!(
                "guest task failed: {join}"
            ))),
        },
    };
    // A guest that saw its body fail answers what it makes of that (a
    // 422, say); the client deserves to hear that it was too slow.
    if body_timed_out.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(GuestFailure::BodyTimeout);
    }
    answer
}

/// How a request's guest run ended without an answer of its own.
#[derive(Debug)]
pub enum GuestFailure {
    /// Out of CPU budget or past the wall-clock bound.
    OutOfTime(String),
    /// Trapped, or returned without a response.
    Failed(wasmtime::Error),
    /// The request body was not in by `--body-timeout`.
    BodyTimeout,
}

impl GuestFailure {
    /// The answer the host gives in the guest's place.
    pub fn response(&self) -> hyper::Response<ResponseBody> {
        match self {
            GuestFailure::OutOfTime(_) => json_response(504, r#"{"error":"Gateway timeout"}"#),
            GuestFailure::Failed(_) => json_response(500, r#"{"error":"Internal error"}"#),
            GuestFailure::BodyTimeout => json_response(408, r#"{"error":"Request timeout"}"#),
        }
    }
}
