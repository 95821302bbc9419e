//! What keybust counts, exposed as Prometheus text on the metrics (or
//! admin) listener.
//!
//! One concept: every metric, its help text, the method that counts into
//! it and the series created up front; its other rooms are listed below.
//!
//! One registry, owned by whoever assembles the server (the
//! [`Service`](crate::service::Service), or an embedder) and shared with
//! what counts into it: the capabilities, the serving slot, the endpoint,
//! the follower and the admin API each get it when they are built. Every
//! metric's help text is here, beside the method that counts into it; the
//! labels and their values are in `labels`, the process's own resources
//! in `process`, what is read at each scrape (readiness, the backends,
//! the issuer's keys) in `scraped`, and the two text formats in
//! `exposition`.

mod exposition;
mod labels;
mod process;
mod scraped;

pub use self::exposition::Format;
pub use self::labels::{
    Backend, CLIENT_CLOSED, Capability, Decision, GuestFailed, ListenerName, NotReady, Outcome,
    RolloutStage, Served, SwapResult, Unavailable, VersionRole,
};
pub use self::scraped::ScrapeState;

use self::labels::{
    BuildLabels, CapabilityLabels, CapabilityOutcomeLabels, CauseLabels, ComponentLabels,
    DecisionLabels, KindLabels, ListenerLabels, PollLabels, RequestStatus, StageLabels,
    StatusLabels, SwapLabels, VersionLabels,
};
use self::process::ProcessMetrics;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::time::Duration;

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
    scraped: std::sync::Arc<scraped::Scraped>,
    process: ProcessMetrics,
    request_seconds: Histogram,
    instantiate_seconds: Histogram,
    capability_calls: Family<CapabilityOutcomeLabels, Counter>,
    capability_seconds: Family<CapabilityLabels, Histogram, fn() -> Histogram>,
    swaps: Family<SwapLabels, Counter>,
    follow_polls: Family<PollLabels, Counter>,
    decisions: Family<DecisionLabels, Counter>,
    stage: Family<StageLabels, Gauge>,
    shadowed: Family<PollLabels, Counter>,
    by_version: Family<VersionLabels, Counter>,
    component: Family<ComponentLabels, Gauge>,
    body_timeouts: Counter,
    reused_instances: Gauge,
    open_connections: Family<ListenerLabels, Gauge>,
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
        let follow_polls = Family::<PollLabels, Counter>::default();
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
        let open_connections = Family::<ListenerLabels, Gauge>::default();
        registry.register(
            "open_connections",
            "Connections open on each listener (public, admin, metrics), TLS handshakes under way included",
            open_connections.clone(),
        );
        let scraped = std::sync::Arc::new(scraped::Scraped::default());
        registry.register_collector(Box::new(scraped.clone()));
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
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "rollout_decisions",
            "What the stages a new version passes before it serves decided, by stage and result",
            decisions.clone(),
        );
        let stage = Family::<StageLabels, Gauge>::default();
        registry.register(
            "rollout_stage",
            "1 for the stage a candidate version is in now (none: no candidate)",
            stage.clone(),
        );
        let shadowed = Family::<PollLabels, Counter>::default();
        registry.register(
            "shadow_requests",
            "Requests a candidate shadowed, by result: agreed, diverged, shed (skipped under load), unusable (the serving version failed)",
            shadowed.clone(),
        );
        let by_version = Family::<VersionLabels, Counter>::default();
        registry.register(
            "version_requests",
            "Requests a component ran to an answer, by the version's role (serving; candidate, in a canary step) and result: ok (below 500), error (a 5xx from the component), trap, timeout",
            by_version.clone(),
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
        let metrics = Metrics {
            open_connections,
            reused_instances,
            registry: root,
            in_flight,
            unavailable,
            guest_failures,
            scraped,
            process,
            body_timeouts,
            requests,
            request_seconds,
            instantiate_seconds,
            capability_calls,
            capability_seconds,
            swaps,
            follow_polls,
            decisions,
            stage,
            shadowed,
            by_version,
            component,
        };
        metrics.create_known_series();
        metrics
    }

    /// Every series whose labels are known up front, at 0: a rate over a
    /// series that appears only with its first event misses that event,
    /// and an alert on it cannot tell "none yet" from "not exported".
    fn create_known_series(&self) {
        for &cause in Unavailable::ALL {
            drop(self.unavailable.get_or_create(&CauseLabels { cause }));
        }
        for &kind in GuestFailed::ALL {
            drop(self.guest_failures.get_or_create(&KindLabels { kind }));
        }
        for &result in SwapResult::ALL {
            drop(self.swaps.get_or_create(&SwapLabels { result }));
        }
        for &stage in RolloutStage::ALL {
            for &result in Decision::ALL {
                drop(
                    self.decisions
                        .get_or_create(&DecisionLabels { stage, result }),
                );
            }
        }
        for &version in VersionRole::ALL {
            for &result in Served::ALL {
                drop(
                    self.by_version
                        .get_or_create(&VersionLabels { version, result }),
                );
            }
        }
        for &capability in Capability::ALL {
            for &outcome in Outcome::ALL {
                drop(
                    self.capability_calls
                        .get_or_create(&CapabilityOutcomeLabels {
                            capability,
                            outcome,
                        }),
                );
            }
        }
        for result in ["unchanged", "swapped", "candidate", "refused", "failed"] {
            drop(self.follow_polls.get_or_create(&PollLabels { result }));
        }
        for result in ["agreed", "diverged", "shed", "unusable"] {
            drop(self.shadowed.get_or_create(&PollLabels { result }));
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

    /// Counts a cause of a 503.
    pub fn unavailable(&self, cause: Unavailable) {
        self.unavailable.get_or_create(&CauseLabels { cause }).inc();
    }

    /// Counts one poll of the followed tag, by how it ended (the
    /// follower's own result type names it).
    pub fn follow_poll(&self, result: &'static str) {
        self.follow_polls
            .get_or_create(&PollLabels { result })
            .inc();
    }

    /// Counts a guest that failed, by how.
    pub fn guest_failed(&self, kind: GuestFailed) {
        self.guest_failures
            .get_or_create(&KindLabels { kind })
            .inc();
    }

    /// Sets what the next scrape reports of readiness, the backends and
    /// the issuer's keys, read just before it.
    pub fn scraped(&self, state: ScrapeState) {
        self.scraped.set(state);
    }

    /// Counts a request body that did not arrive in time.
    pub fn body_timed_out(&self) {
        self.body_timeouts.inc();
    }

    /// The gauge of `listener`'s open connections, for its accept loop
    /// to move (a shared handle: no lookup per connection).
    pub fn open_connections(&self, listener: ListenerName) -> Gauge {
        self.open_connections
            .get_or_create(&ListenerLabels { listener })
            .clone()
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
    pub fn capability(&self, capability: Capability, outcome: Outcome, took: Duration) {
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

    /// Counts a swap or rollback that put `digest` in service, and names it
    /// as the one serving.
    pub fn swapped(&self, digest: &str) {
        self.swaps
            .get_or_create(&SwapLabels {
                result: SwapResult::Ok,
            })
            .inc();
        self.serving(digest);
    }

    /// Counts a swap or rollback that was refused.
    pub fn swap_failed(&self) {
        self.swaps
            .get_or_create(&SwapLabels {
                result: SwapResult::Failed,
            })
            .inc();
    }

    /// Counts what `stage` decided about a new version.
    pub fn decided(&self, stage: RolloutStage, result: Decision) {
        self.decisions
            .get_or_create(&DecisionLabels { stage, result })
            .inc();
    }

    /// Names the stage a candidate is in now, or none.
    pub fn rollout_stage(&self, stage: Option<RolloutStage>) {
        self.stage.clear();
        if let Some(stage) = stage {
            self.stage.get_or_create(&StageLabels { stage }).set(1);
        }
    }

    /// Counts one shadowed request by how it ended (`agreed`, `diverged`,
    /// `shed`, `unusable`).
    pub fn shadowed(&self, result: &'static str) {
        self.shadowed.get_or_create(&PollLabels { result }).inc();
    }

    /// Counts one request `version` ran to an answer, by how it ended.
    pub fn version_request(&self, version: VersionRole, result: Served) {
        self.by_version
            .get_or_create(&VersionLabels { version, result })
            .inc();
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

    /// Every metric, in `format` ([`Format::negotiate`] picks it).
    pub fn encode(&self, format: Format) -> String {
        self.process.update();
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        match format {
            Format::OpenMetrics => text,
            Format::Text => exposition::to_text(&text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_scraped_as_the_readme_names_them() {
        let metrics = Metrics::new();
        metrics.request(200, Duration::from_millis(1));
        metrics.request(200, Duration::from_millis(1));
        metrics.request(503, Duration::from_millis(1));
        metrics.client_closed();
        metrics.unavailable(Unavailable::NotConfigured);
        metrics.guest_failed(GuestFailed::Trap);
        metrics.capability(Capability::Session, Outcome::Forbidden, Duration::ZERO);
        metrics.swap_failed();
        let text = metrics.encode(Format::OpenMetrics);
        for line in [
            r#"keybust_unavailable_total{cause="not_configured"} 1"#,
            r#"keybust_guest_failures_total{kind="trap"} 1"#,
            r#"keybust_capability_calls_total{capability="session",outcome="forbidden"} 1"#,
            r#"keybust_component_swaps_total{result="failed"} 1"#,
            r#"keybust_requests_total{status="200"} 2"#,
            r#"keybust_requests_total{status="503"} 1"#,
            r#"keybust_requests_total{status="client closed"} 1"#,
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
