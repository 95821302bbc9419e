//! `keybust:gateway/cache` as the guest calls it: each delete runs as a
//! task of its own ([`CapabilityCall::in_task`]), in a client span named
//! for the backend, and is counted by outcome; a failed or forbidden delete
//! is a 503 from the component, counted by cause.

use super::CacheError;
use crate::capabilities::bindings::keybust::gateway::cache as wit;
use crate::capabilities::{Answer, Capabilities, CapabilityCall, Effect};
use crate::metrics::{Capability, Outcome, Unavailable};
use crate::telemetry::TRACE_TARGET;
use std::time::Instant;
use tracing::Instrument;

impl wit::Host for CapabilityCall<'_> {
    async fn delete(&mut self, key: String) -> Result<(), wit::CacheError> {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.delete(key);
        }
        let noted = self.tape.clone().map(|tape| (tape, key.clone()));
        let result = match self
            .in_task(Capability::Cache, |capabilities| async move {
                delete(&capabilities, key).await
            })
            .await
        {
            Some(result) => result,
            None => {
                self.capabilities.metrics.unavailable(Unavailable::Backend);
                Err(wit::CacheError::Unavailable)
            }
        };
        if let Some((tape, key)) = noted {
            tape.record(Effect::Delete { key }, Answer::Delete(result));
        }
        result
    }
}

async fn delete(capabilities: &Capabilities, key: String) -> Result<(), wit::CacheError> {
    let started = Instant::now();
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "cache.delete",
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        cache.backend = capabilities.cache.backend_name(),
    );
    let result = capabilities
        .cache
        .delete(&key)
        .instrument(span.clone())
        .await;
    if result.is_err() {
        span.record("otel.status_code", "error");
    }
    let outcome = match &result {
        Ok(()) => Outcome::Ok,
        Err(CacheError::Forbidden) => Outcome::Forbidden,
        Err(_) => Outcome::Error,
    };
    let metrics = &capabilities.metrics;
    metrics.capability(Capability::Cache, outcome, started.elapsed());
    match &result {
        Err(CacheError::NotConfigured) => metrics.unavailable(Unavailable::NotConfigured),
        Err(CacheError::Forbidden) => metrics.unavailable(Unavailable::Forbidden),
        Err(_) => metrics.unavailable(Unavailable::Backend),
        Ok(()) => {}
    }
    result.map_err(Into::into)
}
