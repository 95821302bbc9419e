//! The candidate's backends during a shadow run: what the serving
//! version's calls were answered, given back for the same calls.

use crate::capabilities::bindings::keybust::gateway::{cache, convex, session};
use crate::capabilities::{Answer, Capabilities, Effect, StandIn};
use std::sync::{Arc, Mutex, PoisonError};

/// Answers a candidate's calls from a tape, in order: the next call is
/// answered as the serving version's next call was, when it is the same
/// call; any other gets "unavailable" (and is a divergence, since the
/// calls are compared afterwards). The origin checks are the host's
/// settings, asked as for any request.
pub struct Replay {
    tape: Vec<(Effect, Answer)>,
    capabilities: Arc<Capabilities>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The next tape entry to answer from.
    next: usize,
    /// The candidate's calls so far.
    calls: Vec<Effect>,
}

impl Replay {
    /// Answers from `tape`; origins from `capabilities`.
    pub fn new(tape: Vec<(Effect, Answer)>, capabilities: Arc<Capabilities>) -> Self {
        Replay {
            tape,
            capabilities,
            state: Mutex::new(State::default()),
        }
    }

    /// The candidate's calls, in order.
    pub fn calls(&self) -> Vec<Effect> {
        self.lock().calls.clone()
    }

    /// The recorded answer to `effect`, when it is the serving version's
    /// next call.
    fn answer(&self, effect: Effect) -> Option<Answer> {
        let mut state = self.lock();
        let answer = match self.tape.get(state.next) {
            Some((recorded, answer)) if recorded.same_as(&effect) => {
                state.next += 1;
                Some(answer.clone())
            }
            _ => None,
        };
        state.calls.push(effect);
        answer
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StandIn for Replay {
    fn is_allowed(&self, origin: &str) -> bool {
        self.capabilities.origins.is_allowed(origin)
    }

    fn default_origin(&self) -> String {
        self.capabilities.origins.default_origin().to_owned()
    }

    fn validate(&self, token: String) -> Result<String, session::SessionError> {
        match self.answer(Effect::Validate { token }) {
            Some(Answer::Validate(answer)) => answer,
            _ => Err(session::SessionError::Unverifiable),
        }
    }

    fn post(
        &self,
        path: String,
        body: Vec<u8>,
    ) -> Result<convex::ConvexResponse, convex::ConvexError> {
        match self.answer(Effect::Post { path, body }) {
            Some(Answer::Post(answer)) => answer,
            _ => Err(convex::ConvexError::Transport),
        }
    }

    fn delete(&self, key: String) -> Result<(), cache::CacheError> {
        match self.answer(Effect::Delete { key }) {
            Some(Answer::Delete(answer)) => answer,
            _ => Err(cache::CacheError::Unavailable),
        }
    }
}
