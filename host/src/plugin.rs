//! The endpoint component's lifecycle: one [`Engine`], a [`Linker`] built
//! once, each component compiled and pre-instantiated once, and a fresh
//! [`Store`] per request.

use crate::artifacts::{ArtifactCache, Origin};
use crate::capabilities::{self, Capabilities, CapabilitiesView};
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Instant;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// The component built from `guest/`, embedded at build time.
pub static EMBEDDED_COMPONENT: &[u8] = include_bytes!(env!("KEYBUST_GUEST_WASM"));

/// Instances that may be alive at once; the pooling allocator reserves this many slots.
pub const MAX_INSTANCES: u32 = 1000;

/// The most linear memory one instance may grow to.
pub const MAX_INSTANCE_MEMORY: usize = 16 << 20;

/// How much of what the guest writes to stderr the host keeps per request.
const GUEST_LOG_CAPACITY: usize = 4096;

/// Builds the engine every component shares: the pooling allocator when the
/// machine can reserve its address space, on-demand allocation otherwise.
pub fn new_engine() -> Result<Engine, EngineError> {
    let mut config = Config::new();
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 4)
        .total_memories(MAX_INSTANCES)
        .total_tables(MAX_INSTANCES * 2)
        .total_stacks(MAX_INSTANCES)
        .max_memory_size(MAX_INSTANCE_MEMORY);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    match Engine::new(&config) {
        Ok(engine) => Ok(engine),
        Err(err) => {
            tracing::warn!(
                error = %err,
                "pooling allocator unavailable (virtual memory short?); using on-demand allocation"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|err| EngineError(format!("{err:#}")))
        }
    }
}

/// Per-request store data: a WASI context with nothing granted, wasi:http
/// state, and the shared capabilities.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    capabilities: Arc<Capabilities>,
    guest_log: MemoryOutputPipe,
}

impl RequestState {
    /// A store's data for one request: no env, no args, no preopens, no
    /// network; stderr is kept for the host's log.
    pub fn new(capabilities: Arc<Capabilities>) -> Self {
        let guest_log = MemoryOutputPipe::new(GUEST_LOG_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(guest_log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        RequestState {
            wasi,
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            capabilities,
            guest_log,
        }
    }
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl CapabilitiesView for RequestState {
    fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }
}

/// The guest's only doors are our imports: outbound `wasi:http` is refused.
struct DenyOutbound;

impl WasiHttpHooks for DenyOutbound {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<
        dyn Future<
                Output = wasmtime_wasi_http::Result<(
                    http::Response<wasmtime_wasi_http::WasiBody>,
                    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
                )>,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// Builds the linker every component is checked against: WASI p2 (a std
/// Rust guest imports several `wasi:cli` interfaces), `wasi:http`, and ours.
pub fn new_linker(engine: &Engine) -> Result<Linker<RequestState>, EngineError> {
    let mut linker = Linker::new(engine);
    let link = |linker: &mut Linker<RequestState>| -> wasmtime::Result<()> {
        wasmtime_wasi::p2::add_to_linker_async(linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        capabilities::add_to_linker(linker)
    };
    link(&mut linker)
        .map_err(|err| EngineError(format!("cannot link the host's imports: {err:#}")))?;
    Ok(linker)
}

/// wasmtime could not be set up on this machine.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up wasmtime: {0}")]
pub struct EngineError(String);

/// Why a component cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not a valid component for this engine.
    #[error("not a valid component: {0}")]
    Compile(String),
    /// The component does not fit the `keybust:gateway/endpoint` world.
    #[error("component does not fit the keybust:gateway/endpoint world: {0}")]
    World(String),
    /// The component fits but cannot be instantiated.
    #[error("component cannot be instantiated: {0}")]
    Instantiate(String),
}

/// A compiled, pre-instantiated endpoint component.
#[derive(Clone)]
pub struct Plugin {
    pre: ProxyPre<RequestState>,
    digest: String,
}

impl Plugin {
    /// Compiles `bytes` and checks them against our world.
    pub fn load(linker: &Linker<RequestState>, bytes: &[u8]) -> Result<Self, LoadError> {
        Self::load_cached(linker, None, bytes).map(|(plugin, _)| plugin)
    }

    /// Like [`Plugin::load`], taking the compiled code from `artifacts` when
    /// it holds a verified entry for these bytes, and storing it otherwise.
    pub fn load_cached(
        linker: &Linker<RequestState>,
        artifacts: Option<&ArtifactCache>,
        bytes: &[u8],
    ) -> Result<(Self, Origin), LoadError> {
        let engine = linker.engine();
        let digest = hex_digest(bytes);
        let compile_error = |err: wasmtime::Error| LoadError::Compile(format!("{err:#}"));
        let (component, origin) = match artifacts {
            Some(artifacts) => artifacts
                .load_or_compile(engine, bytes, &digest)
                .map_err(compile_error)?,
            None => (
                Component::new(engine, bytes).map_err(compile_error)?,
                Origin::Compiled,
            ),
        };
        let world_error = |err: wasmtime::Error| LoadError::World(format!("{err:#}"));
        let instance_pre = linker.instantiate_pre(&component).map_err(world_error)?;
        let pre = ProxyPre::new(instance_pre).map_err(world_error)?;
        Ok((Plugin { pre, digest }, origin))
    }

    /// Instantiates the component once without calling it: the last check
    /// before it may serve (start functions run, memories fit the limits).
    pub async fn probe(&self, capabilities: Arc<Capabilities>) -> Result<(), LoadError> {
        let mut store = Store::new(self.pre.engine(), RequestState::new(capabilities));
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|err| LoadError::Instantiate(format!("{err:#}")))
    }

    /// SHA-256 of the component's bytes, lower-case hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs one request through a fresh instance.
    ///
    /// Errors from the guest (a trap, no response) become a 500 JSON answer;
    /// the instance is dropped either way.
    pub async fn handle<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match self.run(capabilities, request).await {
            Ok(response) => response,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), digest = %&self.digest[..12], "guest failed");
                json_response(500, r#"{"error":"Internal error"}"#)
            }
        }
    }

    async fn run<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
    ) -> wasmtime::Result<hyper::Response<HyperOutgoingBody>>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let metrics = capabilities.metrics.clone();
        let mut store = Store::new(self.pre.engine(), RequestState::new(capabilities));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let request = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)?;
        let outparam = store.data_mut().http().new_response_outparam(sender)?;
        let pre = self.pre.clone();
        // The guest keeps running after it hands over the response head: it
        // still has to write the body, which the client reads as it comes.
        let task = tokio::spawn(async move {
            let result = async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics.instantiated(started.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            }
            .await;
            log_guest_output(&store.data().guest_log);
            result
        });
        match receiver.await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(wasmtime::format_err!(
                "guest answered with error code {code:?}"
            )),
            Err(_) => match task.await {
                Ok(Ok(())) => Err(wasmtime::format_err!("guest returned without a response")),
                Ok(Err(err)) => Err(err),
                Err(join) => Err(wasmtime::format_err!("guest task failed: {join}")),
            },
        }
    }
}

fn log_guest_output(pipe: &MemoryOutputPipe) {
    let contents = pipe.contents();
    if contents.is_empty() {
        return;
    }
    for line in String::from_utf8_lossy(&contents).lines() {
        tracing::warn!(target: "keybust::guest", "{line}");
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn hex_digest(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// A JSON answer made by the host itself (404, 500, the admin API).
pub fn json_response(status: u16, body: impl Into<Bytes>) -> hyper::Response<HyperOutgoingBody> {
    let body = http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
