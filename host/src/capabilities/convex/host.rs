//! `keybust:gateway/convex` as the guest calls it: each call runs as a
//! task of its own ([`CapabilityCall::in_task`]), in a client span, and is
//! counted by outcome; every failure is a 503 from the component, counted
//! by cause.

use super::ConvexError;
use crate::capabilities::bindings::keybust::gateway::convex as wit;
use crate::capabilities::{Answer, Capabilities, CapabilityCall, Effect};
use crate::metrics::{Capability, Outcome, Unavailable};
use crate::telemetry::TRACE_TARGET;
use std::time::Instant;
use tracing::Instrument;

impl wit::Host for CapabilityCall<'_> {
    async fn post(
        &mut self,
        path: String,
        body: Vec<u8>,
    ) -> Result<wit::ConvexResponse, wit::ConvexError> {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.post(path, body);
        }
        let noted = self
            .tape
            .clone()
            .map(|tape| (tape, path.clone(), body.clone()));
        let result = match self
            .in_task(Capability::Convex, |capabilities| async move {
                post(&capabilities, path, body).await
            })
            .await
        {
            Some(result) => result,
            None => {
                self.capabilities.metrics.unavailable(Unavailable::Backend);
                Err(wit::ConvexError::Transport)
            }
        };
        if let Some((tape, path, body)) = noted {
            tape.record(Effect::Post { path, body }, Answer::Post(result.clone()));
        }
        result
    }
}

async fn post(
    capabilities: &Capabilities,
    path: String,
    body: Vec<u8>,
) -> Result<wit::ConvexResponse, wit::ConvexError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "convex.post",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = "POST",
        http.response.status_code = tracing::field::Empty,
    );
    let result = capabilities
        .convex
        .post(&path, body)
        .instrument(span.clone())
        .await;
    let metrics = &capabilities.metrics;
    match &result {
        Ok(response) => {
            span.record("http.response.status_code", response.status);
            if !(200..300).contains(&response.status) {
                span.record("otel.status_code", "error");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "error");
        }
    }
    let outcome = match &result {
        Ok(response) if (200..300).contains(&response.status) => Outcome::Ok,
        Err(ConvexError::ForbiddenPath) => Outcome::Forbidden,
        _ => Outcome::Error,
    };
    metrics.capability(Capability::Convex, outcome, started.elapsed());
    // Each of these is a 503 from the component.
    match &result {
        Err(ConvexError::NotConfigured) => metrics.unavailable(Unavailable::NotConfigured),
        Err(ConvexError::ForbiddenPath) => metrics.unavailable(Unavailable::Forbidden),
        Err(_) => metrics.unavailable(Unavailable::Backend),
        Ok(response) if !(200..300).contains(&response.status) => {
            metrics.unavailable(Unavailable::Backend)
        }
        Ok(_) => {}
    }
    result.map(Into::into).map_err(Into::into)
}
