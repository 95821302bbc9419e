//! One request through a guest: the engine and its linker, the store a
//! request runs in and its bounds, the compiled version ([`Plugin`]), and
//! the two ways a request reaches an instance of it.
//!
//! * [`engine`]: the engine (pooling allocator, epoch ticker) and the
//!   linker with WASI, wasi:http and keybust's capabilities;
//! * [`store`]: what one request's store holds, and its memory and CPU
//!   bounds, as building blocks an embedder's own store data can reuse;
//! * [`plugin`]: a component compiled and pre-instantiated once, and which
//!   serving path it takes;
//! * `fresh.rs` ([`serve_request`]): a fresh instance per request, the
//!   default;
//! * `reuse.rs` and `call.rs`: instances kept for several requests
//!   (`--instance-reuse`, and every wasi:http 0.3 component), through
//!   wasi:http's own `ProxyHandler`;
//! * `failure.rs` ([`GuestFailure`]): how a run ends without an answer,
//!   and the answer given in its place, the same on both paths;
//! * [`artifacts`]: compiled code kept on disk, authenticated, keyed by
//!   digest;
//! * [`guest_log`]: what a guest writes to stderr, into the host's log.
//!
//! Nothing here knows which version serves or where versions come from:
//! that is [`crate::versions`] and [`crate::rollout`].

pub mod artifacts;
mod call;
pub mod engine;
mod failure;
mod fresh;
pub mod guest_log;
pub mod plugin;
mod reuse;
pub mod store;

pub use failure::GuestFailure;
pub use fresh::serve_request;
pub use plugin::{LoadError, Plugin, WasiHttp};
