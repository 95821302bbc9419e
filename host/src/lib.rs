//! keybust's host: serves the `POST /api/invalidate-user-api-key-cache`
//! endpoint by running a WASI component under wasmtime.
//!
//! # The model
//!
//! * **Component** — the endpoint's policy (CORS, auth order, body checks,
//!   the ownership decision) ships as a `wasi:http` component built from
//!   `guest/`. It targets the `keybust:gateway/endpoint` world in `wit/`.
//! * **Capabilities** — the component imports four interfaces: `convex`,
//!   `cache`, `session` and `origins`. [`capabilities::Capabilities`]
//!   implements them on the host, where the secrets live; the guest gets no
//!   environment, no files and no sockets.
//! * **Plugin** — [`plugin::Plugin`] is a component compiled once and
//!   pre-instantiated against our [`wasmtime::component::Linker`]; every
//!   request runs in a fresh `Store` from the pooling allocator.
//! * **Slot** — [`slot::ComponentSlot`] holds the serving version behind an
//!   atomic pointer; a new one (admin API, file change, SIGHUP) is compiled,
//!   checked and instantiated once before it replaces the old one, and
//!   requests in flight finish on the version they started with.
//! * **Serving** — [`server`] runs hyper, routes the endpoint's path to the
//!   component and answers everything else itself; [`admin`] serves health,
//!   readiness, metrics and the component API on a second listener.

#![deny(missing_docs)]

pub mod admin;
pub mod artifacts;
pub mod cache;
pub mod capabilities;
pub mod config;
pub mod convex;
pub mod dev;
pub mod metrics;
pub mod origins;
pub mod plugin;
pub mod reload;
pub mod server;
pub mod session;
pub mod slot;
