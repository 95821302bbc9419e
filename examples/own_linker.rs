//! A gateway that owns its wasmtime `Linker` and store data, and runs the
//! keybust component with keybust's bounds.
//!
//! `examples/gateway.rs` mounts a whole `keybust::serve::endpoint::Endpoint`. This
//! one keeps the wasmtime side itself: its store data (`GatewayState`)
//! holds its own WASI and `wasi:http` contexts next to keybust's
//! capabilities, its `Linker` gets WASI, `wasi:http` and
//! `keybust::capabilities::add_to_linker`, and it builds the `ProxyPre`.
//! What keybust lends it:
//!
//! * `store::GuestBounds` and `store::bound_store`: the memory cap
//!   (`--max-instance-memory`) and the CPU budget (`--guest-timeout`);
//! * `store::DenyOutbound`: outbound `wasi:http` refused;
//! * `store::http_ctx`: the header field bound (`--max-field-bytes`);
//! * `plugin::serve_request`: the request served, its body clamped (a body
//!   past 64 KiB gets the component's 413), the whole run under
//!   `--request-timeout`, and a failure turned into a 500, 504 or 408.
//!
//! The engine is the gateway's too, shared with its other components: its
//! instance pool is sized for the largest of them, and each keybust request
//! is held to keybust's own, tighter memory cap.
//!
//! Admission (how many guests run at once) is the gateway's: a semaphore
//! below the engine's instance pool, as here.
//!
//! Run it: `cargo run --release -p keybust-host --example own_linker`
//! (listens on `GATEWAY_LISTEN`, default `127.0.0.1:8080`; backends from
//! the environment as in keybust's README).

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use keybust::body::{ResponseBody, json_response};
use keybust::capabilities::{self, Capabilities, CapabilitiesView};
use keybust::limits::Limits;
use keybust::runtime::store::{DenyOutbound, GuestBounds, GuestState, bound_store, http_ctx};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The gateway's own per-request store data.
pub struct GatewayState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: DenyOutbound,
    keybust: Arc<Capabilities>,
    bounds: GuestBounds,
}

impl WasiView for GatewayState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for GatewayState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl CapabilitiesView for GatewayState {
    fn capabilities(&self) -> &Arc<Capabilities> {
        &self.keybust
    }
}

impl GuestState for GatewayState {
    fn bounds(&mut self) -> &mut GuestBounds {
        &mut self.bounds
    }
}

/// The component, linked and pre-instantiated once; a store per request.
pub struct Gateway {
    engine: Engine,
    pre: ProxyPre<GatewayState>,
    capabilities: Arc<Capabilities>,
    limits: Limits,
    admission: Arc<tokio::sync::Semaphore>,
}

impl Gateway {
    /// Links and checks `component` (its bytes) once, on `engine`, which
    /// needs epoch interruption and a ticker: `keybust::runtime::engine::new_engine`
    /// sets both up, `keybust::runtime::engine::start_epoch_ticker` starts the
    /// ticker for an engine configured elsewhere.
    pub fn new(
        engine: &Engine,
        capabilities: Arc<Capabilities>,
        component: &[u8],
        limits: Limits,
    ) -> wasmtime::Result<Self> {
        let engine = engine.clone();
        let mut linker = Linker::<GatewayState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        capabilities::add_to_linker(&mut linker)?;
        let component = Component::new(&engine, component)?;
        let pre = ProxyPre::new(linker.instantiate_pre(&component)?)?;
        let admission = Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests));
        Ok(Gateway {
            engine,
            pre,
            capabilities,
            limits,
            admission,
        })
    }

    /// A store with nothing granted to the guest and keybust's bounds on it.
    fn store(&self) -> Store<GatewayState> {
        let state = GatewayState {
            wasi: WasiCtx::builder()
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            http: http_ctx(&self.limits),
            table: ResourceTable::new(),
            hooks: DenyOutbound,
            keybust: self.capabilities.clone(),
            bounds: GuestBounds::new(&self.limits),
        };
        let mut store = Store::new(&self.engine, state);
        bound_store(&mut store);
        store
    }

    /// Serves one request through a fresh instance.
    pub async fn handle(&self, request: Request<Incoming>) -> Response<ResponseBody> {
        let admitted = tokio::time::timeout(
            self.limits.queue_timeout,
            self.admission.clone().acquire_owned(),
        )
        .await;
        let Ok(Ok(permit)) = admitted else {
            return json_response(503, r#"{"error":"Service unavailable"}"#);
        };
        let served = keybust::runtime::serve_request(
            self.pre.clone(),
            self.store(),
            request,
            &self.limits,
            permit,
        )
        .await;
        served.unwrap_or_else(|failure| {
            tracing::error!(?failure, "the keybust component failed");
            failure.response()
        })
    }
}

/// Serves the gateway on `listener`.
pub async fn serve(listener: TcpListener, gateway: Arc<Gateway>) {
    while let Ok((stream, _)) = listener.accept().await {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let gateway = gateway.clone();
                async move { Ok::<_, Infallible>(gateway.handle(request).await) }
            });
            let _ = http1::Builder::new()
                .header_read_timeout(Duration::from_secs(10))
                .timer(hyper_util::rt::TokioTimer::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = keybust::capabilities::Settings::from_env()?;
    let capabilities = Arc::new(Capabilities::from_settings(&settings)?);
    capabilities.start_background_checks(&settings.deadlines);
    // The gateway's engine, its pool sized for every component it runs.
    let engine = keybust::runtime::engine::new_engine(&Limits {
        max_instance_memory: 64 << 20,
        ..Limits::default()
    })?;
    let gateway = Gateway::new(
        &engine,
        capabilities,
        keybust::runtime::plugin::EMBEDDED_COMPONENT,
        Limits::default(),
    )
    .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let addr = std::env::var("GATEWAY_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&addr).await?;
    println!("gateway listening on http://{}", listener.local_addr()?);
    serve(listener, Arc::new(gateway)).await;
    Ok(())
}
