//! The endpoint component's lifecycle: one [`Engine`], a [`Linker`] built
//! once, each component compiled and pre-instantiated once, and a fresh
//! [`Store`] per request.

use crate::artifacts::{ArtifactCache, Origin};
use crate::capabilities::{self, Capabilities, CapabilitiesView};
use crate::limits::{EPOCH_TICK, Limits, MAX_BODY_BYTES};
use bytes::Bytes;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, StoreLimits,
    StoreLimitsBuilder, UpdateDeadline,
};
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

/// How much of what the guest writes to stderr the host keeps per request.
const GUEST_LOG_CAPACITY: usize = 4096;

/// Builds the engine every component shares: the pooling allocator when the
/// machine can reserve its address space, on-demand allocation otherwise;
/// epoch interruption on, with one ticker thread for the engine.
pub fn new_engine(limits: &Limits) -> Result<Engine, EngineError> {
    let mut config = Config::new();
    config.epoch_interruption(true);
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(MAX_INSTANCES)
        .total_core_instances(MAX_INSTANCES * 4)
        .total_memories(MAX_INSTANCES)
        .total_tables(MAX_INSTANCES * 2)
        .total_stacks(MAX_INSTANCES)
        .max_memory_size(limits.max_instance_memory);
    // Keep the first pages of a freed slot resident and reset them in place
    // instead of handing them back to the kernel. The guest's initial memory
    // is just over 1 MiB; measured on this workload (preflight, one core),
    // 2 MiB gave about 1.5x the throughput of the defaults, 1 MiB about 1.35x.
    pooling
        .linear_memory_keep_resident(2 << 20)
        .table_keep_resident(1 << 16)
        .pagemap_scan(wasmtime::Enabled::Auto);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling));
    let engine = match Engine::new(&config) {
        Ok(engine) => engine,
        Err(err) => {
            tracing::warn!(
                error = %err,
                "pooling allocator unavailable (virtual memory short?); using on-demand allocation"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            Engine::new(&config).map_err(|err| EngineError(format!("{err:#}")))?
        }
    };
    start_epoch_ticker(&engine);
    Ok(engine)
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped.
fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("keybust-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(err) = spawned {
        tracing::error!(error = %err, "cannot start the epoch ticker: guests have no CPU deadline");
    }
}

/// Per-request store data: a WASI context with nothing granted, wasi:http
/// state, the shared capabilities, and this request's bounds.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    capabilities: Arc<Capabilities>,
    guest_log: MemoryOutputPipe,
    memory: StoreLimits,
    ticks_left: u64,
    out_of_time: bool,
}

impl RequestState {
    /// A store's data for one request: no env, no args, no preopens, no
    /// network; stderr is kept for the host's log.
    pub fn new(capabilities: Arc<Capabilities>, limits: &Limits) -> Self {
        let guest_log = MemoryOutputPipe::new(GUEST_LOG_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(guest_log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let mut http = WasiHttpCtx::new();
        http.set_field_size_limit(limits.max_field_bytes);
        RequestState {
            wasi,
            http,
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            capabilities,
            guest_log,
            memory: StoreLimitsBuilder::new()
                .memory_size(limits.max_instance_memory)
                .instances(16)
                .tables(64)
                .memories(4)
                .build(),
            ticks_left: limits.guest_ticks(),
            out_of_time: false,
        }
    }
}

/// A store for one request: memory bounded by a limiter, and a CPU budget
/// counted in epoch ticks the guest spends executing. Each tick that finds
/// the guest running costs one unit and yields to the executor, so a guest
/// in a loop never holds a worker thread; ticks that pass while the guest
/// waits on a host call cost nothing.
pub fn new_store(
    engine: &Engine,
    capabilities: Arc<Capabilities>,
    limits: &Limits,
) -> Store<RequestState> {
    let mut store = Store::new(engine, RequestState::new(capabilities, limits));
    store.limiter(|state| &mut state.memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let state = ctx.data_mut();
        state.ticks_left = state.ticks_left.saturating_sub(1);
        if state.ticks_left == 0 {
            state.out_of_time = true;
            return Err(wasmtime::format_err!(
                "guest exceeded its execution time budget"
            ));
        }
        Ok(UpdateDeadline::Yield(1))
    });
    store
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
    limits: Arc<Limits>,
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
        Ok((
            Plugin {
                pre,
                digest,
                limits,
            },
            origin,
        ))
    }

    /// Instantiates the component once without calling it: the last check
    /// before it may serve (start functions run, memories fit the limits).
    pub async fn probe(&self, capabilities: Arc<Capabilities>) -> Result<(), LoadError> {
        let mut store = new_store(self.pre.engine(), capabilities, &self.limits);
        self.pre
            .instantiate_async(&mut store)
            .await
            .map(drop)
            .map_err(|err| LoadError::Instantiate(format!("{err:#}")))
    }

    /// The checked, pre-instantiated component, for hosts (and benchmarks)
    /// that drive instances themselves; pair it with [`new_store`].
    pub fn proxy_pre(&self) -> &ProxyPre<RequestState> {
        &self.pre
    }

    /// SHA-256 of the component's bytes, lower-case hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Runs one request through a fresh instance.
    ///
    /// A guest that traps or answers nothing gets the client a 500; one that
    /// runs out of its execution budget, or a request that outlives the
    /// wall-clock bound, a 504. The instance is dropped either way.
    pub async fn handle<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
    ) -> hyper::Response<HyperOutgoingBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        match self.run(capabilities, request).await {
            Ok(response) => response,
            Err(GuestFailure::OutOfTime(why)) => {
                tracing::error!(digest = %&self.digest[..12], "{why}");
                json_response(504, r#"{"error":"Gateway timeout"}"#)
            }
            Err(GuestFailure::Failed(err)) => {
                tracing::error!(error = %format!("{err:#}"), digest = %&self.digest[..12], "guest failed");
                json_response(500, r#"{"error":"Internal error"}"#)
            }
        }
    }

    async fn run<B>(
        &self,
        capabilities: Arc<Capabilities>,
        request: hyper::Request<B>,
    ) -> Result<hyper::Response<HyperOutgoingBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = self.limits.clone();
        let metrics = capabilities.metrics.clone();
        let mut store = new_store(self.pre.engine(), capabilities, &limits);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        // The guest never sees more than one byte past the body bound, so it
        // can tell "too large" without anything past the bound being buffered.
        let request = request.map(|body| BoundedBody::new(body, MAX_BODY_BYTES + 1));
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
        let pre = self.pre.clone();
        let deadline = limits.request_timeout;
        // The guest keeps running after it hands over the response head: it
        // still has to write the body, which the client reads as it comes.
        let task = tokio::spawn(async move {
            let call = async {
                let started = Instant::now();
                let proxy = pre.instantiate_async(&mut store).await?;
                metrics.instantiated(started.elapsed());
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .await
            };
            let outcome = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) if store.data().out_of_time => Err(GuestFailure::OutOfTime(
                    "guest exceeded its execution time budget (--guest-timeout)".into(),
                )),
                Ok(Err(err)) => Err(GuestFailure::Failed(err)),
                Err(_) => Err(GuestFailure::OutOfTime(format!(
                    "request exceeded the {deadline:?} request timeout"
                ))),
            };
            log_guest_output(&store.data().guest_log);
            outcome
        });
        match receiver.await {
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
        }
    }
}

/// How a request's guest run ended without an answer.
enum GuestFailure {
    /// Out of CPU budget or past the wall-clock bound.
    OutOfTime(String),
    /// Trapped, or returned without a response.
    Failed(wasmtime::Error),
}

/// A request body that ends after `remaining` bytes, whatever the client sends.
pub struct BoundedBody<B> {
    inner: B,
    remaining: usize,
}

impl<B> BoundedBody<B> {
    /// Passes at most `limit` bytes of `inner`.
    pub fn new(inner: B, limit: usize) -> Self {
        BoundedBody {
            inner,
            remaining: limit,
        }
    }
}

impl<B> hyper::body::Body for BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        match frame.into_data() {
            Ok(mut data) => {
                if data.len() > self.remaining {
                    data.truncate(self.remaining);
                }
                self.remaining -= data.len();
                Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
            }
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = hyper::body::SizeHint::new();
        hint.set_upper(self.remaining as u64);
        hint
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
