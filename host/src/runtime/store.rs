//! What one request's [`Store`] holds: a WASI context with nothing granted,
//! `wasi:http` state with outbound requests refused, the shared
//! capabilities, and the request's memory and CPU bounds.
//!
//! The bounds and the refusal are building blocks of their own
//! ([`GuestBounds`], [`bound_store`], [`DenyOutbound`], [`http_ctx`]), so a
//! gateway that owns its `Linker` and store data gets the same guarantees
//! as keybust's own [`RequestState`]: see `examples/own_linker.rs`.

use super::call::Call;
use super::guest_log::GuestLog;
use crate::capabilities::{Capabilities, CapabilitiesView, Effects};
use crate::limits::Limits;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasmtime::component::ResourceTable;
use wasmtime::{Engine, Store, StoreLimits, StoreLimitsBuilder, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

/// One request's memory cap and CPU budget, carried in the store's data.
/// [`bound_store`] puts them to work.
pub struct GuestBounds {
    memory: StoreLimits,
    ticks_per_request: u64,
    ticks_left: u64,
    /// Shared with the request being served, which reads it after the
    /// store may have moved on (a reused instance).
    out_of_time: Arc<AtomicBool>,
}

impl GuestBounds {
    /// `--max-instance-memory` and `--guest-timeout` from `limits`.
    pub fn new(limits: &Limits) -> Self {
        GuestBounds {
            memory: StoreLimitsBuilder::new()
                .memory_size(limits.max_instance_memory)
                .instances(16)
                .tables(64)
                .memories(4)
                .build(),
            ticks_per_request: limits.guest_ticks(),
            ticks_left: limits.guest_ticks(),
            out_of_time: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Whether the guest ran out of its CPU budget: a trap then means 504, not 500.
    pub fn out_of_time(&self) -> bool {
        self.out_of_time.load(Ordering::Relaxed)
    }

    /// A full CPU budget for the next request on the same instance, and
    /// the flag that tells that request whether it ran out.
    pub(crate) fn renew(&mut self) -> Arc<AtomicBool> {
        self.ticks_left = self.ticks_per_request;
        self.out_of_time = Arc::new(AtomicBool::new(false));
        self.out_of_time.clone()
    }
}

/// Store data that one request's guest runs in: `wasi:http` state and
/// keybust's bounds. [`crate::runtime::serve_request`] serves a request with
/// any such store.
pub trait GuestState: WasiHttpView + Send + 'static {
    /// The request's bounds.
    fn bounds(&mut self) -> &mut GuestBounds;

    /// Called once the instance exists, with the time instantiation took.
    fn instantiated(&mut self, _took: std::time::Duration) {}

    /// Called after the guest has finished, before the store is dropped.
    fn finished(&mut self) {}
}

/// A `wasi:http` context with keybust's bound on a header field
/// (`--max-field-bytes`).
pub fn http_ctx(limits: &Limits) -> WasiHttpCtx {
    let mut http = WasiHttpCtx::new();
    http.set_field_size_limit(limits.max_field_bytes);
    http
}

/// Per-request store data: a WASI context with nothing granted, wasi:http
/// state, the shared capabilities, and this request's bounds.
pub struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    capabilities: Arc<Capabilities>,
    guest_log: GuestLog,
    bounds: GuestBounds,
    /// The request a reused instance serves now (`--instance-reuse`).
    call: Option<Arc<Call>>,
    /// How the guest reaches the backends (a fresh instance's; a reused
    /// one's comes with its call).
    effects: Effects,
}

impl RequestState {
    /// A store's data for one request: no env, no args, no preopens, no
    /// network; stderr is kept for the host's log.
    pub fn new(capabilities: Arc<Capabilities>, limits: &Limits) -> Self {
        let guest_log = GuestLog::new();
        let wasi = WasiCtx::builder()
            .stderr(guest_log.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        RequestState {
            wasi,
            http: http_ctx(limits),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            capabilities,
            guest_log,
            bounds: GuestBounds::new(limits),
            call: None,
            effects: Effects::Live,
        }
    }

    /// Has this store's guest reach the backends as `effects` says: with
    /// its calls written down, or not at all (a stand-in answers).
    pub fn with_effects(mut self, effects: Effects) -> Self {
        self.effects = effects;
        self
    }

    /// What the guest writes to stderr, drained into the host's log.
    pub fn guest_log(&self) -> &GuestLog {
        &self.guest_log
    }

    /// Notes the request a reused instance serves from now on.
    pub(crate) fn serve_call(&mut self, call: Arc<Call>) {
        self.call = Some(call);
    }

    /// The request a reused instance serves, or served last.
    pub(crate) fn call(&self) -> Option<&Arc<Call>> {
        self.call.as_ref()
    }
}

/// A store for one request, bounded by [`bound_store`].
pub fn new_store(
    engine: &Engine,
    capabilities: Arc<Capabilities>,
    limits: &Limits,
) -> Store<RequestState> {
    let mut store = Store::new(engine, RequestState::new(capabilities, limits));
    bound_store(&mut store);
    store
}

/// Puts a store's [`GuestBounds`] to work: memory bounded by a limiter, and
/// a CPU budget counted in epoch ticks the guest spends executing. Each
/// tick that finds the guest running costs one unit and yields to the
/// executor, so a guest in a loop never holds a worker thread; ticks that
/// pass while the guest waits on a host call cost nothing.
///
/// The engine needs epoch interruption and a ticker, as
/// [`crate::runtime::engine::new_engine`] sets up (or
/// [`crate::runtime::engine::start_epoch_ticker`] for an engine of your own).
pub fn bound_store<T: GuestState>(store: &mut Store<T>) {
    store.limiter(|state| &mut state.bounds().memory);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|mut ctx| {
        let bounds = ctx.data_mut().bounds();
        bounds.ticks_left = bounds.ticks_left.saturating_sub(1);
        if bounds.ticks_left == 0 {
            bounds.out_of_time.store(true, Ordering::Relaxed);
            return Err(wasmtime::format_err!(
                "guest exceeded its execution time budget"
            ));
        }
        Ok(UpdateDeadline::Yield(1))
    });
}

impl GuestState for RequestState {
    fn bounds(&mut self) -> &mut GuestBounds {
        &mut self.bounds
    }

    fn instantiated(&mut self, took: std::time::Duration) {
        // A rehearsal's instances are no client's.
        if !self.effects.is_rehearsal() {
            self.capabilities.metrics().instantiated(took);
        }
    }

    fn finished(&mut self) {
        self.guest_log.drain_as(self.effects.is_rehearsal());
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
    fn capabilities(&self) -> &Arc<Capabilities> {
        &self.capabilities
    }

    fn call_span(&self) -> Option<tracing::Span> {
        self.call.as_ref().and_then(|call| call.span())
    }

    fn effects(&self) -> Effects {
        match &self.call {
            Some(call) => call.effects().clone(),
            None => self.effects.clone(),
        }
    }
}

/// `wasi:http` hooks that refuse every outbound request: the guest's only
/// doors are keybust's imports. Hand it out as the `hooks` of your
/// `WasiHttpView`.
#[derive(Debug, Default, Clone, Copy)]
pub struct DenyOutbound;

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
