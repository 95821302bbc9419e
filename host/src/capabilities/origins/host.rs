//! `keybust:gateway/origins` as the guest calls it: answered in place (a
//! regex match, no backend), in the request's span, and counted.

use crate::capabilities::CapabilityCall;
use crate::capabilities::bindings::keybust::gateway::origins as wit;
use crate::metrics::{Capability, Outcome};
use crate::telemetry::TRACE_TARGET;
use std::time::Instant;

impl wit::Host for CapabilityCall<'_> {
    async fn is_allowed(&mut self, origin: String) -> bool {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.is_allowed(&origin);
        }
        let _inside = self.span.as_ref().map(|span| span.enter());
        let started = Instant::now();
        let _span = tracing::info_span!(target: TRACE_TARGET, "origins.is_allowed").entered();
        let allowed = self.capabilities.origins.is_allowed(&origin);
        self.count(started);
        allowed
    }

    async fn default_origin(&mut self) -> String {
        if let Some(stand_in) = &self.stand_in {
            return stand_in.default_origin();
        }
        let _inside = self.span.as_ref().map(|span| span.enter());
        let started = Instant::now();
        let _span = tracing::info_span!(target: TRACE_TARGET, "origins.default_origin").entered();
        let origin = self.capabilities.origins.default_origin().to_owned();
        self.count(started);
        origin
    }
}

impl CapabilityCall<'_> {
    fn count(&self, started: Instant) {
        self.capabilities
            .metrics
            .capability(Capability::Origins, Outcome::Ok, started.elapsed());
    }
}
