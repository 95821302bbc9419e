//! What keybust counts, exposed as Prometheus text on the admin listener.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    /// The HTTP status, or `client closed` for a client that hung up first.
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityLabels {
    capability: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CapabilityOutcomeLabels {
    capability: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    digest: String,
}

/// The status of requests whose client hung up before their answer, in
/// `keybust_requests_total` and the access log.
pub const CLIENT_CLOSED: &str = "client closed";

/// How a capability call ended, as `keybust_capability_calls_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did what was asked (an invalid token counts: the check worked).
    Ok,
    /// A backend failed, timed out, or is not configured.
    Error,
    /// The component asked for something outside the host's allow-lists.
    Forbidden,
}

fn latency_histogram() -> Histogram {
    // 50 µs to about 6.5 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// The process's metrics, registered once and shared by every request.
pub struct Metrics {
    registry: Registry,
    requests: Family<StatusLabels, Counter>,
    request_seconds: Histogram,
    instantiate_seconds: Histogram,
    capability_calls: Family<CapabilityOutcomeLabels, Counter>,
    capability_seconds: Family<CapabilityLabels, Histogram, fn() -> Histogram>,
    swaps: Family<SwapLabels, Counter>,
    component: Family<ComponentLabels, Gauge>,
    body_timeouts: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `keybust_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("keybust");
        let requests = Family::<StatusLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered on the public listener, by status",
            requests.clone(),
        );
        let request_seconds = latency_histogram();
        registry.register(
            "request_duration_seconds",
            "Time from request head to response head",
            request_seconds.clone(),
        );
        let instantiate_seconds = latency_histogram();
        registry.register(
            "instantiate_duration_seconds",
            "Time to instantiate the component for one request",
            instantiate_seconds.clone(),
        );
        let capability_calls = Family::<CapabilityOutcomeLabels, Counter>::default();
        registry.register(
            "capability_calls",
            "Calls the component made to host capabilities, by outcome",
            capability_calls.clone(),
        );
        let capability_seconds: Family<CapabilityLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "capability_duration_seconds",
            "Time spent in each host capability",
            capability_seconds.clone(),
        );
        let swaps = Family::<SwapLabels, Counter>::default();
        registry.register(
            "component_swaps",
            "Attempts to replace the serving component, by result",
            swaps.clone(),
        );
        let component = Family::<ComponentLabels, Gauge>::default();
        registry.register(
            "component_info",
            "The digest of the component serving now",
            component.clone(),
        );
        let body_timeouts = Counter::default();
        registry.register(
            "body_timeouts",
            "Requests answered 408 because their body was not in by --body-timeout",
            body_timeouts.clone(),
        );
        Metrics {
            registry,
            body_timeouts,
            requests,
            request_seconds,
            instantiate_seconds,
            capability_calls,
            capability_seconds,
            swaps,
            component,
        }
    }

    /// Counts one answered request once it is over, and the time to its
    /// response head.
    pub fn request(&self, status: &str, took: Duration) {
        self.requests
            .get_or_create(&StatusLabels {
                status: status.to_owned(),
            })
            .inc();
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// Counts a request whose client hung up before it had an answer; it
    /// has no time to a response head.
    pub fn client_closed(&self) {
        self.requests
            .get_or_create(&StatusLabels {
                status: CLIENT_CLOSED.to_owned(),
            })
            .inc();
    }

    /// Counts a request body that did not arrive in time.
    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
    }

    /// Records one instantiation.
    pub fn instantiated(&self, took: Duration) {
        self.instantiate_seconds.observe(took.as_secs_f64());
    }

    /// Records one capability call and how it ended.
    pub fn capability(&self, capability: &'static str, outcome: Outcome, took: Duration) {
        let outcome = match outcome {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Forbidden => "forbidden",
        };
        self.capability_calls
            .get_or_create(&CapabilityOutcomeLabels {
                capability,
                outcome,
            })
            .inc();
        self.capability_seconds
            .get_or_create(&CapabilityLabels { capability })
            .observe(took.as_secs_f64());
    }

    /// Counts a swap attempt and, when it worked, names the new digest.
    pub fn swap(&self, ok: bool, digest: Option<&str>) {
        let result = if ok { "ok" } else { "failed" };
        self.swaps.get_or_create(&SwapLabels { result }).inc();
        if let Some(digest) = digest {
            self.serving(digest);
        }
    }

    /// Names the digest serving now.
    pub fn serving(&self, digest: &str) {
        self.component.clear();
        self.component
            .get_or_create(&ComponentLabels {
                digest: digest.to_owned(),
            })
            .set(1);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
