//! Answers given in place of the backends, for a run whose effects are to
//! be checked rather than had: the contract gate runs a new version
//! against scripted answers ([`crate::contract`]), a shadow replays a
//! candidate against what the serving version's calls were answered
//! ([`Tape`]), and nothing either asks reaches Convex, the token issuer or
//! the cache.
//!
//! Every side effect a component can have goes through one of its four
//! imports, so a run with a [`StandIn`] is a run without side effects, and
//! what the stand-in saw is exactly what the version did.

use super::bindings::keybust::gateway::{cache, convex, session};

/// One call a guest made that reaches a backend, with its arguments: what
/// a version *does*, as opposed to what it answers. The origin checks are
/// not among them: they are a lookup in the host's settings, with no
/// effect, and a version may make as many as it likes. Its `Debug` leaves
/// the token and the body out.
#[derive(Clone, PartialEq, Eq)]
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
/// backend. Installed per store ([`super::CapabilitiesView::effects`]):
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

/// What a backend answered one call.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `session.validate`'s.
    Validate(Result<String, session::SessionError>),
    /// `convex.post`'s.
    Post(Result<convex::ConvexResponse, convex::ConvexError>),
    /// `cache.delete`'s.
    Delete(Result<(), cache::CacheError>),
}

/// The backend calls one request's guest made and what they answered, in
/// order: recorded while a client's request runs on the serving version,
/// so that a candidate can be given the same answers for the same calls
/// (shadow replay) without reaching a backend itself.
#[derive(Debug, Default)]
pub struct Tape {
    /// A `std` mutex: held for a push or a copy, never across an `.await`.
    calls: std::sync::Mutex<Vec<(Effect, Answer)>>,
}

impl Tape {
    /// Notes one call and its answer.
    pub fn record(&self, effect: Effect, answer: Answer) {
        self.lock().push((effect, answer));
    }

    /// The calls so far, with their answers.
    pub fn calls(&self) -> Vec<(Effect, Answer)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Effect, Answer)>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How one store's guest reaches the backends.
#[derive(Clone, Default)]
pub enum Effects {
    /// Through the capabilities: a client's request.
    #[default]
    Live,
    /// Through the capabilities, each call and its answer written down.
    Recorded(std::sync::Arc<Tape>),
    /// Not at all: a stand-in answers (the contract gate's runs, a
    /// shadow's replay).
    StandIn(std::sync::Arc<dyn StandIn>),
}

impl Effects {
    /// Whether the guest's calls reach no backend.
    pub fn is_rehearsal(&self) -> bool {
        matches!(self, Effects::StandIn(_))
    }
}

impl std::fmt::Debug for Effect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Effect::Validate { .. } => f.write_str("Validate { token: <token> }"),
            Effect::Post { path, body } => f
                .debug_struct("Post")
                .field("path", path)
                .field("body_bytes", &body.len())
                .finish(),
            Effect::Delete { key } => f.debug_struct("Delete").field("key", key).finish(),
        }
    }
}

impl Effect {
    /// Whether two calls are the same call: the same interface and the
    /// same arguments, a Convex body compared as JSON when both parse
    /// (its spacing and key order are a version's business).
    pub fn same_as(&self, other: &Effect) -> bool {
        match (self, other) {
            (
                Effect::Post { path, body },
                Effect::Post {
                    path: other_path,
                    body: other_body,
                },
            ) => {
                path == other_path
                    && match (
                        serde_json::from_slice::<serde_json::Value>(body),
                        serde_json::from_slice::<serde_json::Value>(other_body),
                    ) {
                        (Ok(a), Ok(b)) => a == b,
                        _ => body == other_body,
                    }
            }
            (a, b) => a == b,
        }
    }
}
