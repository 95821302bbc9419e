//! Traces: the spans keybust opens for each request, and how a trace
//! crosses into and out of the process (W3C `traceparent`).
//!
//! keybust describes its work as [`tracing`] spans under one target,
//! [`TRACE_TARGET`]. Whatever subscriber the process installs decides what
//! becomes of them: the `keybust` binary hands them to OpenTelemetry when
//! `OTEL_*` asks for it ([`export`]) and turns them off otherwise, so a
//! process without tracing pays one cached "disabled" check per span. An
//! embedder with a `tracing-opentelemetry` layer of its own gets the same
//! spans in its traces.
//!
//! The spans, for one request through the component:
//!
//! ```text
//! POST /api/invalidate-user-api-key-cache   (server; parent from traceparent)
//! ├── instantiate
//! └── guest
//!     ├── origins.is_allowed, origins.default_origin
//!     ├── session.validate                  (jwks.refetched)
//!     │   └── jwks.fetch                    (client; sends traceparent)
//!     ├── convex.post                       (client; sends traceparent)
//!     └── cache.delete                      (cache.backend; Upstash gets traceparent)
//! ```
//!
//! No span carries a token, a secret, a key hash or a cache key.
//!
//! A caller's trace context is a stranger's say on the public listener:
//! continued as the parent only with `--trust-trace-context` (behind a
//! gateway or mesh that sets it). Otherwise, as the OpenTelemetry guidance
//! for untrusted edges has it, each request starts a trace of its own,
//! the sampler decides afresh, the caller's span is kept only as a link,
//! and the caller's `tracestate` is sent nowhere ([`IncomingTrace`]).
//!
//! The link to OpenTelemetry (the caller's trace continued, `traceparent`
//! sent on, trace ids in access lines) is the `traces` feature; the
//! exporter, `otlp`. Without `traces` the spans are plain `tracing` spans,
//! and each trace starts and ends in this process.

#[cfg(feature = "otlp")]
pub mod export;

#[cfg(feature = "traces")]
use opentelemetry::propagation::TextMapPropagator;
#[cfg(feature = "traces")]
use opentelemetry::trace::TraceContextExt;
#[cfg(feature = "traces")]
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
#[cfg(feature = "traces")]
use opentelemetry_sdk::propagation::TraceContextPropagator;
#[cfg(feature = "traces")]
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span keybust opens for a request. A subscriber can
/// turn them all on or off by it; log output leaves them out.
pub const TRACE_TARGET: &str = "keybust::trace";

/// What a request's `traceparent` (and `tracestate`) counts for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IncomingTrace {
    /// The caller's span is a link of a new trace; see the module docs.
    #[default]
    Link,
    /// The caller's span is the parent: its trace, sampling decision and
    /// `tracestate` carry on (`--trust-trace-context`).
    Continue,
}

/// Puts the trace an incoming request names in `traceparent` (and
/// `tracestate`) on `span`, as `incoming` says: as its parent, or as a
/// link of the new trace `span` starts. Without a usable header, `span`
/// starts a trace of its own either way.
#[cfg(feature = "traces")]
pub(crate) fn incoming_trace(
    span: &tracing::Span,
    headers: &http::HeaderMap,
    incoming: IncomingTrace,
) {
    if span.is_disabled() || !headers.contains_key("traceparent") {
        return;
    }
    let caller = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    match incoming {
        // Fails only when no OpenTelemetry layer listens: nothing to
        // continue then.
        IncomingTrace::Continue => {
            let _ = span.set_parent(caller);
        }
        IncomingTrace::Link => {
            let caller = caller.span().span_context().clone();
            if caller.is_valid() {
                span.add_link(caller);
            }
        }
    }
}

/// The `traceparent` (and `tracestate`) that carry the current span's trace
/// to a backend; empty when no trace is being recorded.
#[cfg(feature = "traces")]
pub(crate) fn outgoing_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    let span = tracing::Span::current();
    if !span.is_disabled() {
        TraceContextPropagator::new()
            .inject_context(&span.context(), &mut HeaderInjector(&mut headers));
    }
    headers
}

/// The id of the trace `span` belongs to, for the access log; none when no
/// trace is being recorded, or this one is not sampled.
#[cfg(feature = "traces")]
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    // An unsampled trace is exported nowhere: no id to look up.
    (span_context.is_valid() && span_context.is_sampled())
        .then(|| span_context.trace_id().to_string())
}

/// Without OpenTelemetry there is no caller's trace to continue.
#[cfg(not(feature = "traces"))]
pub(crate) fn incoming_trace(
    _span: &tracing::Span,
    _headers: &http::HeaderMap,
    _incoming: IncomingTrace,
) {
}

/// Without OpenTelemetry no trace is carried to a backend.
#[cfg(not(feature = "traces"))]
pub(crate) fn outgoing_headers() -> http::HeaderMap {
    http::HeaderMap::new()
}

/// Without OpenTelemetry no trace has an id to look up.
#[cfg(not(feature = "traces"))]
pub(crate) fn trace_id(_span: &tracing::Span) -> Option<String> {
    None
}
