//! The stand-in a row runs against: it answers as the row's [`World`]
//! says and writes down every backend call the version makes.

use super::rows::{self, World};
use crate::capabilities::bindings::keybust::gateway::{cache, convex, session};
use crate::capabilities::{Effect, StandIn};
use std::sync::{Mutex, PoisonError};

/// The backends of one row, scripted, and the calls made of them.
pub(super) struct Script {
    world: World,
    calls: Mutex<Vec<Effect>>,
}

impl Script {
    pub(super) fn new(world: World) -> Self {
        Script {
            world,
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The backend calls made so far, in order.
    pub(super) fn calls(&self) -> Vec<Effect> {
        self.lock().clone()
    }

    fn note(&self, effect: Effect) {
        self.lock().push(effect);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Effect>> {
        self.calls.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StandIn for Script {
    fn is_allowed(&self, origin: &str) -> bool {
        origin == rows::ALLOWED_ORIGIN
    }

    fn default_origin(&self) -> String {
        rows::DEFAULT_ORIGIN.to_owned()
    }

    fn validate(&self, token: String) -> Result<String, session::SessionError> {
        self.note(Effect::Validate { token });
        match self.world.session {
            rows::Session::Valid => Ok(rows::USER.to_owned()),
            rows::Session::Invalid => Err(session::SessionError::Invalid),
            rows::Session::Unverifiable => Err(session::SessionError::Unverifiable),
        }
    }

    fn post(
        &self,
        path: String,
        body: Vec<u8>,
    ) -> Result<convex::ConvexResponse, convex::ConvexError> {
        self.note(Effect::Post { path, body });
        match self.world.convex {
            rows::Convex::Answers(body) => Ok(convex::ConvexResponse {
                status: 200,
                body: body.as_bytes().to_vec(),
            }),
            rows::Convex::Status(status) => Ok(convex::ConvexResponse {
                status,
                body: b"{}".to_vec(),
            }),
            rows::Convex::NotConfigured => Err(convex::ConvexError::NotConfigured),
            rows::Convex::Transport => Err(convex::ConvexError::Transport),
            rows::Convex::Timeout => Err(convex::ConvexError::Timeout),
        }
    }

    fn delete(&self, key: String) -> Result<(), cache::CacheError> {
        self.note(Effect::Delete { key });
        match self.world.cache {
            rows::Cache::Deleted => Ok(()),
            rows::Cache::Unavailable => Err(cache::CacheError::Unavailable),
            rows::Cache::Timeout => Err(cache::CacheError::Timeout),
        }
    }
}
