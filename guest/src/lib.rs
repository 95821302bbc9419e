//! keybust's endpoint component: `POST /api/invalidate-user-api-key-cache`.
//!
//! [`policy`] holds every decision the endpoint makes, as plain Rust over a
//! [`policy::Capabilities`] trait, so it is tested natively. When built for
//! `wasm32-wasip2`, the `component` module binds that policy to the
//! `keybust:gateway/endpoint` world: the host's imports become the
//! capabilities, and the policy is exported as `wasi:http/incoming-handler`.

#![deny(missing_docs)]
// The component is built without std: std's runtime would bring wasi:cli
// imports (environment, exit, the standard streams and terminals) that
// every instantiation resolves, and cost about a third of it. Natively
// (tests, the benchmark's native server) the crate has std as usual.
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

pub mod policy;

#[cfg(target_arch = "wasm32")]
mod component;
