//! Values `/metrics` reads at the moment of the scrape, from the state that
//! readiness also reads: whether the endpoint is ready and why not, whether
//! each backend answers, and how old the issuer's keys are.
//!
//! A value not known yet is absent, not 0: a `keybust_jwks_age_seconds` of
//! 0 before the first fetch read as "fresh keys", so a stale-keys alert
//! could not fire on an instance that never had any. A collector writes
//! only what it has; a registered gauge would always write a number.

use super::labels::{Backend, NotReady};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::gauge::ConstGauge;
use std::sync::Mutex;
use std::time::Duration;

/// What a scrape reports, as read just before it.
#[derive(Debug, Clone, Default)]
pub struct ScrapeState {
    /// Why the endpoint is not ready ([`NotReady::Ready`] when it is).
    pub not_ready: Option<NotReady>,
    /// Each backend that has been configured and asked, and whether it
    /// answered; one not asked yet is left out.
    pub backends: Vec<(Backend, bool)>,
    /// How old the issuer's keys are; `None` before the first fetch.
    pub jwks_age: Option<Duration>,
}

/// The collector; [`super::Metrics::scraped`] sets its state.
#[derive(Debug, Default)]
pub(super) struct Scraped {
    /// A `std` mutex: held to copy or replace the state, never across an
    /// `.await`; a scrape and the setter are its only users.
    state: Mutex<ScrapeState>,
}

impl Scraped {
    pub(super) fn set(&self, state: ScrapeState) {
        *self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = state;
    }
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let state = self
            .state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        if let Some(not_ready) = state.not_ready {
            let mut family = encoder.encode_descriptor(
                "ready",
                "1 when the endpoint is ready (as /readyz answers 200), else 0; reason: the first reason it is not (none, draining, not_configured, jwks_not_fetched, cache_down).",
                None,
                MetricType::Gauge,
            )?;
            let ready = i64::from(not_ready == NotReady::Ready);
            ConstGauge::new(ready).encode(family.encode_family(&[("reason", not_ready)])?)?;
        }
        if !state.backends.is_empty() {
            let mut family = encoder.encode_descriptor(
                "backend_up",
                "1 when the backend answered its last check or call (cache: the background check; convex: the last call; issuer: the last key fetch), else 0; absent before it is asked.",
                None,
                MetricType::Gauge,
            )?;
            for (backend, up) in state.backends {
                ConstGauge::new(i64::from(up))
                    .encode(family.encode_family(&[("backend", backend)])?)?;
            }
        }
        if let Some(age) = state.jwks_age {
            let family = encoder.encode_descriptor(
                "jwks_age_seconds",
                "Age of the token issuer's keys; absent before the first fetch.",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(age.as_secs_f64()).encode(family)?;
        }
        Ok(())
    }
}
