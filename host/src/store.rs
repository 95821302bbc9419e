//! What one request's [`Store`] holds: a WASI context with nothing granted,
//! `wasi:http` state with outbound requests refused, the shared
//! capabilities, and the request's memory and CPU bounds.

use crate::capabilities::{Capabilities, CapabilitiesView};
use crate::limits::Limits;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// How much of what the guest writes to stderr the host keeps per request.
const GUEST_LOG_CAPACITY: usize = 4096;

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

    /// Whether the guest ran out of its CPU budget: a trap then means 504, not 500.
    pub fn out_of_time(&self) -> bool {
        self.out_of_time
    }

    /// Sends what the guest wrote to stderr to the host's log, one WARN per line.
    pub fn log_guest_output(&self) {
        let contents = self.guest_log.contents();
        if contents.is_empty() {
            return;
        }
        for line in String::from_utf8_lossy(&contents).lines() {
            tracing::warn!(target: "keybust::guest", "{line}");
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
