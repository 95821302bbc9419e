//! How new versions arrive: pulled from an OCI registry and checked against
//! its signatures ([`registry`]), followed as a tag moves ([`follow`]), or
//! re-read from the `--component` file ([`reload`]). Each hands its bytes
//! to the [`ComponentSlot`](crate::versions::slot::ComponentSlot), which
//! decides whether they serve.
//!
//! Registries (and so following) are the `registry` feature: the OCI
//! client is the heaviest part of the build after wasmtime, and an
//! embedder that hands keybust its bytes needs none of it.

#[cfg(feature = "registry")]
pub mod follow;
#[cfg(feature = "registry")]
pub mod registry;
pub mod reload;
pub mod source;
