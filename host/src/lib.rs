//! keybust's host: serves the `POST /api/invalidate-user-api-key-cache`
//! endpoint by running a WASI component under wasmtime.
//!
//! # Layout
//!
//! Each layer is a folder and uses only what is listed below it; no
//! module imports one that imports it back.
//!
//! * [`service`]: the whole server as one value, built from settings and
//!   run until a shutdown signal: what `keybust serve` and `keybust dev`
//!   call, and what the tests start.
//! * [`admin`]: the admin listener (health, readiness, metrics, the
//!   component API).
//! * [`serve`]: listeners, TLS, the endpoint a request is routed to, and
//!   the access record it leaves.
//! * [`rollout`], beside it: how new versions arrive: OCI registries and
//!   signatures, following a tag, re-reading the component file.
//! * [`versions`]: which version serves (the slot) and the record of
//!   accepted and refused ones (the history).
//! * [`contract`], [`shadow`] and [`canary`]: what a new version passes
//!   before it serves every client: the contract's rows, answered with
//!   stand-ins for the backends; live requests replayed beside the serving
//!   version; then a growing share of real requests, compared with the
//!   serving version's.
//! * [`runtime`]: one request through a guest: engine, store, the compiled
//!   version, a fresh or a reused instance, compiled-code artifacts, the
//!   guest's log.
//! * [`capabilities`]: the host side of the component's imports (Convex,
//!   cache, session, origins), each with its backends and settings.
//! * Shared ground, at the top level: [`config`] (settings readers),
//!   [`limits`] and [`deadlines`] (the bounds), [`body`] (bounded bodies),
//!   [`digest`] (how versions are named), [`metrics`], [`telemetry`],
//!   [`watch`] (file changes).
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
//! * **Plugin** — [`runtime::Plugin`] is a component compiled once and
//!   pre-instantiated against the [`wasmtime::component::Linker`] that
//!   [`runtime::engine::new_linker`] builds; every request runs in a fresh `Store`
//!   ([`runtime::store::new_store`]) from the pooling allocator, or, with
//!   `--instance-reuse` ([`limits::Limits::instance_reuse`]), in one kept
//!   for several requests in turn.
//! * **Slot** — [`versions::slot::ComponentSlot`] holds the serving version behind an
//!   atomic pointer; a new one (admin API, file change, SIGHUP) is compiled,
//!   checked and instantiated once before it replaces the old one, and
//!   requests in flight finish on the version they started with.
//! * **Serving** — [`serve::server`] runs hyper, routes the endpoint's path to the
//!   component and answers everything else itself; [`admin`] serves health,
//!   readiness, metrics and the component API on a second listener.
//!
//! # Embedding keybust in your own gateway
//!
//! The whole endpoint, ready to serve `hyper` requests:
//!
//! ```no_run
//! use keybust::capabilities::Capabilities;
//! use keybust::serve::endpoint::{ENDPOINT_PATH, Endpoint};
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
//! // endpoint.slot().replace(bytes, keybust::versions::slot::Provenance::unchecked("my-deploy")).await?;
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
//! [`runtime::store::GuestBounds`] in it, implement [`runtime::store::GuestState`], apply
//! [`runtime::store::bound_store`], hand out [`runtime::store::DenyOutbound`] as the
//! `wasi:http` hooks and [`runtime::store::http_ctx`] as its context, and serve each
//! request with [`runtime::serve_request`]: `examples/own_linker.rs` does all
//! of it.
//!
//! The contract those imports implement is documented in `wit/README.md`;
//! the endpoint's own rules, in `docs/contract.md`.

#![deny(missing_docs)]

// Shared ground: settings, bounds and plumbing every layer uses.
pub mod body;
pub mod config;
pub mod deadlines;
pub mod digest;
pub mod limits;
pub mod metrics;
mod private_files;
pub mod telemetry;
pub mod watch;

// What the component may ask of its host.
pub mod capabilities;

// The layers, from one request up to the process.
pub mod canary;
pub mod contract;
pub mod rollout;
pub mod runtime;
pub mod serve;
pub mod shadow;
pub mod versions;

// The admin listener, and the whole server as one value, on top of them all.
pub mod admin;
pub mod service;

// `keybust dev`: the whole flow on one machine.
#[cfg(feature = "dev")]
pub mod dev;
