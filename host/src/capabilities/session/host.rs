//! `keybust:gateway/session` as the guest calls it: each check runs as a
//! task of its own ([`CapabilityCall::in_task`]), in a span that says how
//! it ended and whether the issuer's keys were fetched again. An invalid
//! token is the capability working; only "cannot verify" counts as its
//! error.

use super::SessionError;
use crate::capabilities::bindings::keybust::gateway::session as wit;
use crate::capabilities::{Answer, Capabilities, CapabilityCall, Effect};
use crate::metrics::{Capability, Outcome};
use crate::telemetry::TRACE_TARGET;
use std::time::Instant;
use tracing::Instrument;

impl wit::Host for CapabilityCall<'_> {
    async fn validate(&mut self, token: String) -> Result<String, wit::SessionError> {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.validate(token);
        }
        let noted = self.tape.clone().map(|tape| (tape, token.clone()));
        let result = self
            .in_task(Capability::Session, |capabilities| async move {
                validate(&capabilities, token).await
            })
            .await
            .unwrap_or(Err(wit::SessionError::Unverifiable));
        if let Some((tape, token)) = noted {
            tape.record(Effect::Validate { token }, Answer::Validate(result.clone()));
        }
        result
    }
}

async fn validate(capabilities: &Capabilities, token: String) -> Result<String, wit::SessionError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "session.validate",
        otel.status_code = tracing::field::Empty,
        session.outcome = tracing::field::Empty,
        jwks.refetched = tracing::field::Empty,
    );
    let mut fetched = false;
    let result = capabilities
        .session
        .validate_noting_fetch(&token, &mut fetched)
        .instrument(span.clone())
        .await;
    span.record("jwks.refetched", fetched);
    span.record(
        "session.outcome",
        match &result {
            Ok(_) => "valid",
            Err(SessionError::Invalid) => "invalid",
            Err(SessionError::Unverifiable) => "unverifiable",
        },
    );
    let outcome = if result == Err(SessionError::Unverifiable) {
        span.record("otel.status_code", "error");
        Outcome::Error
    } else {
        Outcome::Ok
    };
    capabilities
        .metrics
        .capability(Capability::Session, outcome, started.elapsed());
    result.map_err(Into::into)
}
