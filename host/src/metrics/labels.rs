//! The label sets of keybust's metrics, and the typed values they take.
//!
//! Every value is a `Copy` enum or a `&'static str`, never a `String` made
//! per request: a label value becomes text only when `/metrics` is
//! scraped. The words a scrape reads (`shed`, `trap`, `ok`, …) are written
//! once, here, in [`label_values!`]'s table.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use std::fmt::Write as _;

/// Declares a label-value enum with the text each variant is scraped as.
macro_rules! label_values {
    ($(#[$meta:meta])* pub enum $name:ident {
        $($(#[$variant_meta:meta])* $variant:ident => $text:literal,)+
    }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($(#[$variant_meta])* $variant,)+
        }

        impl $name {
            /// Every value, so that each series exists (at 0) from the
            /// first scrape: a rate over a series that appears only with
            /// its first event misses that event.
            #[allow(dead_code)]
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The text a scrape reads.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

label_values! {
    /// How a capability call ended, as `keybust_capability_calls_total`
    /// counts it.
    pub enum Outcome {
        /// It did what was asked (an invalid token counts: the check worked).
        Ok => "ok",
        /// A backend failed, timed out, or is not configured.
        Error => "error",
        /// The component asked for something outside the host's allow-lists.
        Forbidden => "forbidden",
    }
}

label_values! {
    /// A host capability, as the `capability` label names it.
    pub enum Capability {
        /// `keybust:gateway/convex`.
        Convex => "convex",
        /// `keybust:gateway/cache`.
        Cache => "cache",
        /// `keybust:gateway/session`.
        Session => "session",
        /// `keybust:gateway/origins`.
        Origins => "origins",
    }
}

label_values! {
    /// Why a request was answered 503, as `keybust_unavailable_total{cause}`
    /// counts it.
    pub enum Unavailable {
        /// No request slot came free within the queue timeout.
        Shed => "shed",
        /// A backend failed, timed out or answered non-2xx.
        Backend => "backend",
        /// The backend the component asked for is not configured.
        NotConfigured => "not_configured",
        /// The component asked for something outside the allow-lists.
        Forbidden => "forbidden",
    }
}

label_values! {
    /// How a guest failed, as `keybust_guest_failures_total{kind}` counts it.
    pub enum GuestFailed {
        /// It trapped or answered nothing (500).
        Trap => "trap",
        /// It ran out of its CPU budget or its request's time (504).
        Timeout => "timeout",
    }
}

label_values! {
    /// How an attempt to replace the serving component ended, as
    /// `keybust_component_swaps_total{result}` counts it.
    pub enum SwapResult {
        /// The new version serves (or the rollback target does).
        Ok => "ok",
        /// It was refused; what served before still does.
        Failed => "failed",
    }
}

label_values! {
    /// A stage a new version passes before it serves clients, as
    /// `keybust_rollout_decisions_total` names it.
    pub enum RolloutStage {
        /// The contract gate (`crate::contract`).
        Gate => "gate",
        /// Shadow replay (`crate::shadow`).
        Shadow => "shadow",
        /// The weighted canary (`crate::canary`).
        Canary => "canary",
    }
}

label_values! {
    /// Which version served a request, as `keybust_version_requests_total`
    /// names it: roles, not digests, so the series stay few and an alert
    /// compares the two across swaps.
    pub enum VersionRole {
        /// The version serving clients.
        Serving => "serving",
        /// A candidate in a canary step.
        Candidate => "candidate",
    }
}

label_values! {
    /// How a request a version served ended, for its counts.
    pub enum Served {
        /// An answer below 500.
        Answered => "ok",
        /// A 5xx answer from the component (a backend it could not reach,
        /// its own error).
        ServerError => "error",
        /// The component trapped (500 from the host).
        Trap => "trap",
        /// The component ran out of time (504 from the host).
        Timeout => "timeout",
    }
}

label_values! {
    /// What a stage decided about a version.
    pub enum Decision {
        /// It passed the stage.
        Passed => "passed",
        /// It was refused there (or had been before: the record of refused
        /// versions answered).
        Refused => "refused",
    }
}

/// The status of requests whose client hung up before their answer, in
/// `keybust_requests_total` and the access log.
pub const CLIENT_CLOSED: &str = "client closed";

/// A request's `status` label: the HTTP status, or `client closed` for a
/// client that hung up first. Counted on every request, so it is a copy
/// of two bytes, not a string made per request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(super) enum RequestStatus {
    Answered(u16),
    ClientClosed,
}

impl EncodeLabelValue for RequestStatus {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self {
            RequestStatus::Answered(code) => write!(encoder, "{code}"),
            RequestStatus::ClientClosed => encoder.write_str(CLIENT_CLOSED),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StatusLabels {
    pub(super) status: RequestStatus,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CapabilityLabels {
    pub(super) capability: Capability,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CapabilityOutcomeLabels {
    pub(super) capability: Capability,
    pub(super) outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CauseLabels {
    pub(super) cause: Unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct KindLabels {
    pub(super) kind: GuestFailed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct BuildLabels {
    pub(super) version: &'static str,
    pub(super) git_sha: &'static str,
    pub(super) wasmtime: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct SwapLabels {
    pub(super) result: SwapResult,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct StageLabels {
    pub(super) stage: RolloutStage,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct DecisionLabels {
    pub(super) stage: RolloutStage,
    pub(super) result: Decision,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct VersionLabels {
    pub(super) version: VersionRole,
    pub(super) result: Served,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PollLabels {
    pub(super) result: &'static str,
}

/// The digest serving now: one series, replaced at each swap, so its one
/// `String` is made per swap, not per request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ComponentLabels {
    pub(super) digest: String,
}

label_values! {
    /// Why the endpoint is not ready, as `keybust_ready`'s `reason` label
    /// (the first reason, when there are several; `/readyz` lists them
    /// all, in words).
    pub enum NotReady {
        /// Ready.
        Ready => "none",
        /// The process is stopping.
        Draining => "draining",
        /// A backend's settings are missing.
        NotConfigured => "not_configured",
        /// The token issuer's keys have not been fetched yet.
        KeysNotFetched => "jwks_not_fetched",
        /// The cache backend failed its last check, or the last deletes.
        CacheDown => "cache_down",
    }
}

label_values! {
    /// A backend whose health `keybust_backend_up` reports.
    pub enum Backend {
        /// The cache backend: its background check and deletes.
        Cache => "cache",
        /// Convex: its last call.
        Convex => "convex",
        /// The token issuer: its last key fetch.
        Issuer => "issuer",
    }
}

label_values! {
    /// One of keybust's listeners.
    pub enum ListenerName {
        /// The endpoint's.
        Public => "public",
        /// The admin API's.
        Admin => "admin",
        /// The probes-only one (`--metrics-listen`).
        Metrics => "metrics",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct ListenerLabels {
    pub(super) listener: ListenerName,
}
