//! What keybust counts, exposed as Prometheus text on the admin listener.
//!
//! One registry and the methods that count into it: long because every
//! metric has its help text and its typed labels here, beside each other.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: RequestStatus,
}

/// A request's `status` label: the HTTP status, or `client closed` for a
/// client that hung up first. Counted on every request, so it is a copy
/// of two bytes, not a string made per request; it becomes text only when
/// `/metrics` is scraped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum RequestStatus {
    Answered(u16),
    ClientClosed,
}

impl EncodeLabelValue for RequestStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        match self {
            RequestStatus::Answered(code) => write!(encoder, "{code}"),
            RequestStatus::ClientClosed => encoder.write_str(CLIENT_CLOSED),
        }
    }
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
struct CauseLabels {
    cause: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    git_sha: &'static str,
    wasmtime: &'static str,
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
    in_flight: Gauge,
    unavailable: Family<CauseLabels, Counter>,
    guest_failures: Family<KindLabels, Counter>,
    jwks_age: Gauge<f64, AtomicU64>,
    process: ProcessMetrics,
    request_seconds: Histogram,
    instantiate_seconds: Histogram,
    capability_calls: Family<CapabilityOutcomeLabels, Counter>,
    capability_seconds: Family<CapabilityLabels, Histogram, fn() -> Histogram>,
    swaps: Family<SwapLabels, Counter>,
    follow_polls: Family<SwapLabels, Counter>,
    component: Family<ComponentLabels, Gauge>,
    body_timeouts: Counter,
    reused_instances: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric under the `keybust_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        let process = ProcessMetrics::register(&mut root);
        let registry = root.sub_registry_with_prefix("keybust");
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests on the public listener not over yet (guests still running included)",
            in_flight.clone(),
        );
        let unavailable = Family::<CauseLabels, Counter>::default();
        registry.register(
            "unavailable",
            "Causes of 503 answers: shed (no request slot), backend (a backend failed or timed out), not_configured, forbidden (outside the allow-lists)",
            unavailable.clone(),
        );
        let follow_polls = Family::<SwapLabels, Counter>::default();
        registry.register(
            "follow_polls",
            "Polls of the followed tag: unchanged, swapped, refused (the new version failed its checks), failed (the registry could not be asked, or the new version has no signature yet)",
            follow_polls.clone(),
        );
        let guest_failures = Family::<KindLabels, Counter>::default();
        registry.register(
            "guest_failures",
            "Guests that trapped (500) or ran out of time (504)",
            guest_failures.clone(),
        );
        let jwks_age = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "jwks_age_seconds",
            "Age of the token issuer's keys; absent before the first fetch",
            jwks_age.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                git_sha: env!("KEYBUST_GIT_SHA"),
                wasmtime: env!("KEYBUST_WASMTIME_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running build", build);
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
            "Time to instantiate the component: once per request, or once per reused instance (--instance-reuse)",
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
        let reused_instances = Gauge::default();
        registry.register(
            "reused_instances",
            "Instances kept for --instance-reuse, idle or serving",
            reused_instances.clone(),
        );
        Metrics {
            reused_instances,
            registry: root,
            in_flight,
            unavailable,
            guest_failures,
            jwks_age,
            process,
            body_timeouts,
            requests,
            request_seconds,
            instantiate_seconds,
            capability_calls,
            capability_seconds,
            swaps,
            follow_polls,
            component,
        }
    }

    /// Counts one answered request once it is over, and the time to its
    /// response head.
    pub fn request(&self, status: u16, took: Duration) {
        self.requests
            .get_or_create(&StatusLabels {
                status: RequestStatus::Answered(status),
            })
            .inc();
        self.request_seconds.observe(took.as_secs_f64());
    }

    /// Counts a request whose client hung up before it had an answer; it
    /// has no time to a response head.
    pub fn client_closed(&self) {
        self.requests
            .get_or_create(&StatusLabels {
                status: RequestStatus::ClientClosed,
            })
            .inc();
    }

    /// A request started; [`Metrics::request_over`] when it is over.
    pub fn request_started(&self) {
        self.in_flight.inc();
    }

    /// A request is over, answered or not.
    pub fn request_over(&self) {
        self.in_flight.dec();
    }

    /// Counts a cause of a 503: `shed`, `backend`, `not_configured` or
    /// `forbidden`.
    pub fn unavailable(&self, cause: &'static str) {
        self.unavailable.get_or_create(&CauseLabels { cause }).inc();
    }

    /// Counts one poll of the followed tag, by how it ended.
    pub fn follow_poll(&self, result: &'static str) {
        self.follow_polls
            .get_or_create(&SwapLabels { result })
            .inc();
    }

    /// Counts a guest that trapped (`trap`) or ran out of time (`timeout`).
    pub fn guest_failed(&self, kind: &'static str) {
        self.guest_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Sets the age of the token issuer's keys, when they have been fetched.
    pub fn jwks_age(&self, age: Option<Duration>) {
        if let Some(age) = age {
            self.jwks_age.set(age.as_secs_f64());
        }
    }

    /// Counts a request body that did not arrive in time.
    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
    }

    /// Counts an instance kept for `--instance-reuse`.
    pub fn reused_instance_started(&self) {
        self.reused_instances.inc();
    }

    /// Counts a reused instance dropped.
    pub fn reused_instance_stopped(&self) {
        self.reused_instances.dec();
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
        self.process.update();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// The process's own resources, under the names Prometheus clients use
/// (`process_*`), read from `/proc` at each scrape.
struct ProcessMetrics {
    resident_memory: Gauge,
    open_fds: Gauge,
    cpu_seconds: Counter<f64, AtomicU64>,
    /// The CPU time already counted, to add only what is new.
    cpu_counted: Mutex<f64>,
}

impl ProcessMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = ProcessMetrics {
            resident_memory: Gauge::default(),
            open_fds: Gauge::default(),
            cpu_seconds: Counter::default(),
            cpu_counted: Mutex::new(0.0),
        };
        registry.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            metrics.resident_memory.clone(),
        );
        registry.register(
            "process_open_fds",
            "Open file descriptors",
            metrics.open_fds.clone(),
        );
        registry.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds",
            metrics.cpu_seconds.clone(),
        );
        metrics
    }

    /// Reads `/proc/self`; where there is none, the values stay at 0.
    fn update(&self) {
        if let Some(pages) = std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<i64>().ok())
        {
            self.resident_memory.set(pages * page_size());
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(cpu) = cpu_seconds() {
            let mut counted = self
                .cpu_counted
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if cpu > *counted {
                self.cpu_seconds.inc_by(cpu - *counted);
                *counted = cpu;
            }
        }
    }
}

fn page_size() -> i64 {
    #[cfg(unix)]
    {
        rustix::param::page_size() as i64
    }
    #[cfg(not(unix))]
    {
        4096
    }
}

/// User plus system CPU time, from `/proc/self/stat` (fields 14 and 15,
/// in clock ticks).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces; the fields after it do not.
    let after = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    #[cfg(unix)]
    let per_second = rustix::param::clock_ticks_per_second() as f64;
    #[cfg(not(unix))]
    let per_second = 100.0;
    Some(ticks / per_second)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_counted_under_its_status_or_client_closed() {
        let metrics = Metrics::new();
        metrics.request(200, Duration::from_millis(1));
        metrics.request(200, Duration::from_millis(1));
        metrics.request(503, Duration::from_millis(1));
        metrics.client_closed();
        let text = metrics.encode();
        for line in [
            r#"keybust_requests_total{status="200"} 2"#,
            r#"keybust_requests_total{status="503"} 1"#,
            r#"keybust_requests_total{status="client closed"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
