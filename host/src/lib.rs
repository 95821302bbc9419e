//! keybust's host: serves the `POST /api/invalidate-user-api-key-cache`
//! endpoint by running a WASI component under wasmtime.
//!
//! # The model
//!
//! * **Component** — the endpoint's policy (CORS, auth order, body checks,
//!   the ownership decision) ships as a `wasi:http` component built from
//!   `guest/`. It targets the `keybust:gateway/endpoint` world in `wit/`
//!   (wasi:http 0.2), or `endpoint-p3` (0.3); the host serves either.
//! * **Capabilities** — the component imports four interfaces: `convex`,
//!   `cache`, `session` and `origins`. [`capabilities::Capabilities`]
//!   implements them on the host, where the secrets live; the guest gets no
//!   environment, no files and no sockets.
//! * **Plugin** — [`plugin::Plugin`] is a component compiled once and
//!   pre-instantiated against the [`wasmtime::component::Linker`] that
//!   [`engine::new_linker`] builds; every request runs in a fresh `Store`
//!   ([`store::new_store`]) from the pooling allocator, or, with
//!   `--instance-reuse` ([`limits::Limits::instance_reuse`]), in one kept
//!   for several requests in turn.
//! * **Slot** — [`slot::ComponentSlot`] holds the serving version behind an
//!   atomic pointer; a new one (admin API, file change, SIGHUP) is compiled,
//!   checked and instantiated once before it replaces the old one, and
//!   requests in flight finish on the version they started with.
//! * **Serving** — [`server`] runs hyper, routes the endpoint's path to the
//!   component and answers everything else itself; [`admin`] serves health,
//!   readiness, metrics and the component API on a second listener.

//!
//! # Embedding keybust in your own gateway
//!
//! The whole endpoint, ready to serve `hyper` requests:
//!
//! ```no_run
//! use keybust::capabilities::Capabilities;
//! use keybust::endpoint::{ENDPOINT_PATH, Endpoint};
//! use std::sync::Arc;
//!
//! # async fn demo(request: hyper::Request<hyper::body::Incoming>) -> anyhow::Result<()> {
//! // CONVEX_*, CLERK_*, REDIS_URL / UPSTASH_*, VERCEL_*: as in the README.
//! let capabilities = Arc::new(Capabilities::from_env()?);
//! // Or Endpoint::from_file(capabilities, path) for a component on disk.
//! let endpoint = Endpoint::embedded(capabilities).await?;
//! if request.uri().path() == ENDPOINT_PATH {
//!     let response = endpoint.route(request).await;
//!     # drop(response);
//! }
//! // Swap in a new build later, without a restart:
//! // endpoint.slot().replace(bytes, "my-deploy".into()).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Or only the capabilities, added to a [`wasmtime::component::Linker`] you
//! own, for a component you instantiate yourself. Your store data implements
//! [`capabilities::CapabilitiesView`], the way it implements
//! `wasmtime_wasi::WasiView`:
//!
//! ```no_run
//! use keybust::capabilities::{self, Capabilities, CapabilitiesView};
//! use wasmtime::component::Linker;
//!
//! struct MyState {
//!     keybust: std::sync::Arc<Capabilities>,
//!     // ... your WASI and wasi:http contexts ...
//! }
//!
//! impl CapabilitiesView for MyState {
//!     fn capabilities(&self) -> &std::sync::Arc<Capabilities> {
//!         &self.keybust
//!     }
//! }
//!
//! # fn demo(engine: &wasmtime::Engine) -> wasmtime::Result<()> {
//! let mut linker = Linker::<MyState>::new(engine);
//! capabilities::add_to_linker(&mut linker)?;
//! // ... plus wasmtime_wasi::p2::add_to_linker_async and
//! // wasmtime_wasi_http::p2::add_only_http_to_linker_async ...
//! # Ok(())
//! # }
//! ```
//!
//! To serve requests with keybust's bounds from such a store, hold a
//! [`store::GuestBounds`] in it, implement [`store::GuestState`], apply
//! [`store::bound_store`], hand out [`store::DenyOutbound`] as the
//! `wasi:http` hooks and [`store::http_ctx`] as its context, and serve each
//! request with [`plugin::serve_request`]: `examples/own_linker.rs` does all
//! of it.
//!
//! The contract those imports implement is documented in `wit/README.md`;
//! the endpoint's own rules, in `docs/contract.md`.

#![deny(missing_docs)]

// The contract: settings shared by every capability, and the bounds.
pub mod config;
pub mod deadlines;
pub mod limits;

// What the component may ask of its host.
pub mod capabilities;

// The component's lifecycle: compiled and linked once, a fresh store per
// request (or one kept for several, `--instance-reuse`), swapped in place.
pub mod artifacts;
pub mod engine;
pub mod follow;
pub mod guest_log;
pub mod history;
pub mod plugin;
mod private_files;
pub mod registry;
pub mod reload;
mod reuse;
pub mod slot;
pub mod store;
pub mod watch;

// Serving.
pub mod access;
pub mod admin;
pub mod body;
pub mod endpoint;
pub mod metrics;
pub mod server;
pub mod telemetry;
pub mod tls;

// `keybust dev`: the whole flow on one machine.
#[cfg(feature = "cli")]
pub mod dev;
