//! Answers given in place of the backends, for a run whose effects are to
//! be checked rather than had: the contract gate runs a new version
//! against scripted answers ([`crate::contract`]), and nothing it asks
//! reaches Convex, the token issuer or the cache.
//!
//! Every side effect a component can have goes through one of its four
//! imports, so a run with a [`StandIn`] is a run without side effects, and
//! what the stand-in saw is exactly what the version did.

use super::bindings::keybust::gateway::{cache, convex, session};

/// One call a guest made that reaches a backend, with its arguments: what
/// a version *does*, as opposed to what it answers. The origin checks are
/// not among them: they are a lookup in the host's settings, with no
/// effect, and a version may make as many as it likes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `session.validate(token)`.
    Validate {
        /// The token, as the guest passed it.
        token: String,
    },
    /// `convex.post(path, body)`.
    Post {
        /// The Convex path.
        path: String,
        /// The request body.
        body: Vec<u8>,
    },
    /// `cache.delete(key)`.
    Delete {
        /// The key, as the guest named it (before the deployment prefix).
        key: String,
    },
}

/// What a guest's imports answer during a run that must not reach a
/// backend. Installed per store ([`super::CapabilitiesView::stand_in`]):
/// every call of the four interfaces goes here instead of to the shared
/// [`super::Capabilities`], and is neither counted in metrics nor traced
/// as a backend call. The answers are synchronous: they are scripted or
/// recorded, never fetched.
pub trait StandIn: Send + Sync + 'static {
    /// `origins.is-allowed`.
    fn is_allowed(&self, origin: &str) -> bool;
    /// `origins.default-origin`.
    fn default_origin(&self) -> String;
    /// `session.validate`.
    fn validate(&self, token: String) -> Result<String, session::SessionError>;
    /// `convex.post`.
    fn post(
        &self,
        path: String,
        body: Vec<u8>,
    ) -> Result<convex::ConvexResponse, convex::ConvexError>;
    /// `cache.delete`.
    fn delete(&self, key: String) -> Result<(), cache::CacheError>;
}
