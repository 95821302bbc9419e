//! keybust's endpoint component: `POST /api/invalidate-user-api-key-cache`.
//!
//! [`policy`] holds every decision the endpoint makes, as plain Rust over a
//! [`policy::Capabilities`] trait, so it is tested natively. When built for
//! `wasm32-wasip2`, the `component` module binds that policy to the
//! `keybust:gateway/endpoint` world: the host's imports become the
//! capabilities, and the policy is exported as `wasi:http/incoming-handler`.

#![deny(missing_docs)]

pub mod policy;

#[cfg(target_arch = "wasm32")]
mod component;
