//! A component compiled and pre-instantiated once ([`Plugin`]), and which
//! serving path its requests take: a fresh instance each
//! ([`serve_request`]) or kept ones
//! (`--instance-reuse`, and every wasi:http 0.3 component).

use super::artifacts::{ArtifactCache, Origin};
use super::failure::GuestFailure;
use super::fresh::serve_request;
use super::reuse::Reuse;
use super::store::{RequestState, bound_store, new_store};
use crate::body::ResponseBody;
use crate::capabilities::{Capabilities, Effects, StandIn, Tape};
use crate::digest::hex_digest;
use crate::limits::Limits;
use bytes::Bytes;
use std::sync::Arc;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::handler::ProxyPre;

/// The component built from `guest/`, embedded at build time (the
/// `embedded-component` feature).
#[cfg(feature = "embedded-component")]
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("KEYBUST_GUEST_WASM"));

/// Why a component cannot serve. Each variant keeps wasmtime's error as
/// its source; the message includes it, since it is what an operator needs
/// to read in a refused swap's 422 or log line.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a component at all: not WebAssembly (a text file,
    /// an archive), or a core module. Said plainly: wasmtime's parser
    /// answers with a dump of the magic bytes it expected.
    #[error("{0}")]
    NotAComponent(&'static str),
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

/// Refuses bytes that are not a component by their first eight: the magic
/// `\0asm`, then the layer a component has (a core module's is 1).
fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    const CORE_MODULE: [u8; 4] = [1, 0, 0, 0];
    match bytes.get(..8) {
        Some(header) if header.starts_with(b"\0asm") => {
            if header[4..] == CORE_MODULE {
                Err(LoadError::NotAComponent(
                    "a core WebAssembly module, not a component: build the guest for \
                     wasm32-wasip2, or wrap the module with `wasm-tools component new`",
                ))
            } else {
                Ok(())
            }
        }
        _ if bytes.is_empty() => Err(LoadError::NotAComponent(
            "not WebAssembly: the file is empty",
        )),
        _ if bytes
            .iter()
            .take(64)
            .all(|b| b.is_ascii_graphic() || b.is_ascii_whitespace()) =>
        {
            Err(LoadError::NotAComponent(
                "not WebAssembly: it starts with text, not the \\0asm magic (a WAT file, a \
                 manifest or an error page?)",
            ))
        }
        _ => Err(LoadError::NotAComponent(
            "not WebAssembly: it does not start with the \\0asm magic",
        )),
    }
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

/// A compiled, pre-instantiated endpoint component, with the capabilities
/// and bounds its instances get: a version is built for one server, so
/// its requests need bring nothing but themselves.
#[derive(Clone)]
pub struct Plugin {
    pre: Arc<ProxyPre<RequestState>>,
    engine: wasmtime::Engine,
    digest: String,
    capabilities: Arc<Capabilities>,
    limits: Arc<Limits>,
    serving: Serving,
    rehearsals: Rehearsals,
}

/// How a rehearsal's requests (the contract gate's, a shadow's) reach an
/// instance: always one of their own, dropped after the request, never a
/// kept one that clients' requests would meet afterwards.
#[derive(Clone)]
enum Rehearsals {
    /// wasi:http 0.2: a fresh instance in keybust's own store.
    Fresh(wasmtime_wasi_http::p2::bindings::ProxyPre<RequestState>),
    /// wasi:http 0.3: through a handler of their own, one request per
    /// instance, not counted in the metrics.
    Handler(Arc<Reuse>),
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
    /// Compiles `bytes` and checks them against our world, taking the
    /// compiled code from `artifacts` when it holds a verified entry for
    /// these bytes, and storing it there otherwise; the [`Origin`] says
    /// which. Without `artifacts`, it always compiles. Its instances get
    /// `capabilities` and run under `limits`; kept instances
    /// (`--instance-reuse`) are pooled from here on, none started yet.
    pub fn load(
        linker: &Linker<RequestState>,
        artifacts: Option<&ArtifactCache>,
        bytes: &[u8],
        capabilities: Arc<Capabilities>,
        limits: Arc<Limits>,
    ) -> Result<(Self, Origin), LoadError> {
        check_header(bytes)?;
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
                capabilities.clone(),
                limits.clone(),
                true,
            ))),
        };
        let rehearsals = match &*pre {
            ProxyPre::P2(p2) => Rehearsals::Fresh(p2.clone()),
            _ => Rehearsals::Handler(Arc::new(Reuse::new(
                pre.clone(),
                engine.clone(),
                capabilities.clone(),
                Arc::new(Limits {
                    instance_reuse: 1,
                    ..(*limits).clone()
                }),
                false,
            ))),
        };
        Ok((
            Plugin {
                pre,
                engine: engine.clone(),
                digest,
                capabilities,
                limits,
                serving,
                rehearsals,
            },
            origin,
        ))
    }

    /// Instantiates the component once without calling it: the last check
    /// before it may serve (start functions run, memories fit the limits).
    pub async fn probe(&self) -> Result<(), LoadError> {
        let mut store = new_store(&self.engine, self.capabilities.clone(), &self.limits);
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
        if let Rehearsals::Handler(reuse) = &self.rehearsals {
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
        request: hyper::Request<B>,
        hold: impl Send + 'static,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.handle_as(request, hold, Effects::Live).await
    }

    /// [`Plugin::handle`], with each capability call and its answer
    /// written on `tape`: a request a candidate shadows.
    pub async fn handle_recorded<B>(
        &self,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
        tape: Arc<Tape>,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.handle_as(request, hold, Effects::Recorded(tape)).await
    }

    async fn handle_as<B>(
        &self,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
        effects: Effects,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let result = self.run(request, hold, effects).await;
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

    /// Runs one request with `stand_in` answering every capability call
    /// in place of the capabilities: nothing the guest asks reaches a
    /// backend, and nothing is counted or logged as a failure. Under the
    /// same bounds as [`Plugin::handle`], always in an instance of its own
    /// that no client's request meets afterwards (whatever
    /// `--instance-reuse` says): what the contract gate and a shadow run.
    pub async fn rehearse<B>(
        &self,
        request: hyper::Request<B>,
        stand_in: Arc<dyn StandIn>,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        self.run(request, (), Effects::StandIn(stand_in)).await
    }

    async fn run<B>(
        &self,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
        effects: Effects,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // A rehearsal never meets a kept instance; a client's request
        // takes the serving path.
        let pre = match (&effects, &self.rehearsals, &self.serving) {
            (Effects::StandIn(_), Rehearsals::Handler(reuse), _)
            | (Effects::Live | Effects::Recorded(_), _, Serving::Handler(reuse)) => {
                return reuse.serve(request, hold, effects).await;
            }
            (Effects::StandIn(_), Rehearsals::Fresh(pre), _) | (_, _, Serving::Fresh(pre)) => pre,
        };
        let state =
            RequestState::new(self.capabilities.clone(), &self.limits).with_effects(effects);
        let mut store = wasmtime::Store::new(&self.engine, state);
        bound_store(&mut store);
        serve_request(pre.clone(), store, request, &self.limits, hold).await
    }
}
