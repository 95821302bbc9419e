//! One access-log line, one count and one server span per request, closed
//! when the request is really over: for a request that runs the guest, when
//! the guest has finished, even if the client hung up long before.
//!
//! An [`AccessRecord`] is shared by the code answering the client and by
//! the task running the guest. Whichever lets go of it last writes the line
//! (on drop). The answering side notes the status when it has a response
//! head; a record dropped without one belongs to a client that went away
//! first, and is written with the status `client closed`.

use crate::canary::tally::Tally;
use crate::metrics::{CLIENT_CLOSED, GuestFailed, Metrics, Served, VersionRole};
use crate::telemetry::{self, IncomingTrace, TRACE_TARGET};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The target of the access lines, for log filters and writers.
pub const ACCESS_TARGET: &str = "keybust::access";

/// The most of a `User-Agent` an access line carries: a client chooses
/// it, and a line should stay a line.
const MAX_USER_AGENT: usize = 256;

/// The header that carries a request's id, in and out.
pub const REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// What the access line says about one request; see the module docs.
pub struct AccessRecord {
    method: http::Method,
    path: String,
    /// The peer's address: the client's, or the load balancer's in front.
    client: Option<std::net::SocketAddr>,
    /// The client's `User-Agent`, as sent (a shared copy of the header,
    /// not a new string), cut to [`MAX_USER_AGENT`] when logged.
    user_agent: Option<http::HeaderValue>,
    request_id: http::HeaderValue,
    digest: String,
    started: Instant,
    metrics: Arc<Metrics>,
    /// The request's server span; it ends when the record is dropped.
    span: tracing::Span,
    /// The trace the span belongs to, when one is recorded.
    trace_id: Option<String>,
    /// The status and the time to the response head, once known.
    answered: Mutex<Option<(u16, Duration)>>,
    /// The version that ran the request, once it was admitted.
    guest: Mutex<Option<GuestRun>>,
}

/// Which version ran a request, for its counts.
struct GuestRun {
    role: VersionRole,
    /// Its canary step's counts, during a canary.
    tally: Option<Arc<Tally>>,
    failed: Option<GuestFailed>,
}

impl AccessRecord {
    /// Starts the record of a request: its id is the client's
    /// `x-request-id` when usable, else a new one. `route` is the route the
    /// request matched, if any, for the span's name.
    pub fn start<B>(
        request: &hyper::Request<B>,
        route: Option<&'static str>,
        digest: &str,
        metrics: Arc<Metrics>,
        incoming: IncomingTrace,
    ) -> Arc<Self> {
        let request_id = request
            .headers()
            .get(REQUEST_ID)
            .filter(|value| is_usable_request_id(value.as_bytes()))
            .cloned()
            .unwrap_or_else(new_request_id);
        metrics.request_started();
        let digest = digest.get(..12).unwrap_or(digest).to_owned();
        let span = server_span(request, route, &request_id, &digest, incoming);
        let trace_id = telemetry::trace_id(&span);
        Arc::new(AccessRecord {
            method: request.method().clone(),
            path: request.uri().path().to_owned(),
            client: request
                .extensions()
                .get::<crate::serve::connection::Peer>()
                .map(|peer| peer.0),
            user_agent: request.headers().get(http::header::USER_AGENT).cloned(),
            request_id,
            digest,
            started: Instant::now(),
            metrics,
            span,
            trace_id,
            answered: Mutex::new(None),
            guest: Mutex::new(None),
        })
    }

    /// Notes the version that runs the request, and the canary step's
    /// counts it goes into, if any: the request is counted for it once
    /// it is over.
    pub fn runs_on(&self, role: VersionRole, tally: Option<Arc<Tally>>) {
        *self.lock_guest() = Some(GuestRun {
            role,
            tally,
            failed: None,
        });
    }

    /// Notes that the guest failed (the host answered for it).
    pub fn guest_failed(&self, kind: GuestFailed) {
        if let Some(run) = self.lock_guest().as_mut() {
            run.failed = Some(kind);
        }
    }

    fn lock_guest(&self) -> std::sync::MutexGuard<'_, Option<GuestRun>> {
        self.guest
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The request's server span: the work done for it runs inside.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The request's id, to echo in the response.
    pub fn request_id(&self) -> &http::HeaderValue {
        &self.request_id
    }

    /// Notes the status of the response head the client is getting now.
    pub fn answered(&self, status: u16) {
        let took = self.started.elapsed();
        self.span.record("http.response.status_code", status);
        if status >= 500 {
            self.span.record("otel.status_code", "error");
        }
        *self
            .answered
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = Some((status, took));
    }
}

impl Drop for AccessRecord {
    fn drop(&mut self) {
        let answered = *self
            .answered
            .get_mut()
            .unwrap_or_else(|poison| poison.into_inner());
        self.metrics.request_over();
        let request_id = self.request_id.to_str().unwrap_or_default();
        // Borrowed, not copied: a header that is visible ASCII (as
        // `to_str` requires) can be cut at any byte. One that is not is
        // left out rather than decoded per request.
        let user_agent = self
            .user_agent
            .as_ref()
            .and_then(|agent| agent.to_str().ok())
            .map(|agent| &agent[..agent.len().min(MAX_USER_AGENT)]);
        // The status is a number in the log when there is one, so log
        // pipelines can compare it; a client that hung up has none.
        match answered {
            Some((status, took)) => {
                self.metrics.request(status, took);
                let guest = self
                    .guest
                    .get_mut()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .take();
                if let Some(run) = guest {
                    let served = match run.failed {
                        Some(GuestFailed::Trap) => Served::Trap,
                        Some(GuestFailed::Timeout) => Served::Timeout,
                        None if status >= 500 => Served::ServerError,
                        None => Served::Answered,
                    };
                    self.metrics.version_request(run.role, served);
                    if let Some(tally) = run.tally {
                        tally.count(served, took);
                    }
                }
                tracing::info!(
                    target: ACCESS_TARGET,
                    method = %self.method,
                    path = self.path,
                    status,
                    client = self.client.map(tracing::field::display),
                    user_agent,
                    latency_ms = took.as_secs_f64() * 1000.0,
                    digest = self.digest,
                    request_id,
                    trace_id = self.trace_id.as_deref(),
                );
            }
            None => {
                let took = self.started.elapsed();
                self.metrics.client_closed();
                tracing::info!(
                    target: ACCESS_TARGET,
                    method = %self.method,
                    path = self.path,
                    status = CLIENT_CLOSED,
                    client = self.client.map(tracing::field::display),
                    user_agent,
                    latency_ms = took.as_secs_f64() * 1000.0,
                    digest = self.digest,
                    request_id,
                    trace_id = self.trace_id.as_deref(),
                );
            }
        }
    }
}

/// The server span of one request, following the HTTP semantic
/// conventions, with the caller's `traceparent` as `incoming` says.
/// Only a matched route names the span: a client's made-up paths would
/// make every span name unique.
fn server_span<B>(
    request: &hyper::Request<B>,
    route: Option<&'static str>,
    request_id: &http::HeaderValue,
    digest: &str,
    incoming: IncomingTrace,
) -> tracing::Span {
    let method = request.method();
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "request",
        otel.name = match route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        url.scheme = request
            .extensions()
            .get::<crate::serve::server::Scheme>()
            .map_or("http", |scheme| scheme.0),
        keybust.request_id = request_id.to_str().unwrap_or_default(),
        keybust.component.digest = digest,
    );
    telemetry::incoming_trace(&span, request.headers(), incoming);
    span
}

/// Client-chosen request ids are kept when they are short and printable.
fn is_usable_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= 128 && value.iter().all(|b| b.is_ascii_graphic())
}

/// A process-unique request id: a random per-process prefix and a counter.
fn new_request_id() -> http::HeaderValue {
    static PREFIX: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 4];
        // A failed fill leaves a zero prefix: ids stay unique within the process.
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        u32::from_ne_bytes(bytes)
    });
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    http::HeaderValue::from_str(&format!("{prefix:08x}-{n:012x}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"))
}
