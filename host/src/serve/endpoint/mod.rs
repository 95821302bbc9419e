//! The keybust endpoint as one value: a component slot plus what every
//! request goes through around it (routing, request ids, the access log,
//! metrics). This is the type to embed: build it from capabilities and a
//! component (`load.rs`: the configuration, the first version, the
//! history), then hand it `hyper::Request`s.

mod load;
mod shadow;
mod start;

pub use load::{Configured, EndpointConfig, EndpointError};

use crate::body::{ResponseBody, json_response};
use crate::capabilities::Capabilities;
use crate::metrics::{GuestFailed, Metrics, NotReady, Unavailable, VersionRole};
use crate::runtime::GuestFailure;
use crate::serve::access::{AccessRecord, REQUEST_ID};
use crate::telemetry::IncomingTrace;
use crate::versions::slot::{ComponentSlot, Picked};
use bytes::Bytes;
use std::sync::Arc;
use tracing::Instrument;

/// The only path the component serves (the contract's).
pub const ENDPOINT_PATH: &str = crate::contract::rows::ENDPOINT_PATH;

/// The serving side: the component slot and what each request goes through
/// around it (routing, request ids, the access log, metrics).
pub struct Endpoint {
    /// Shared with what swaps versions in (a follower, a file watcher),
    /// which hold it, not the whole endpoint.
    slot: Arc<ComponentSlot>,
    /// Admission: one permit per request that may run a guest at once
    /// (`--max-concurrent-requests`, kept below the instance pool so a
    /// pooling slot is always free for an admitted request). A request
    /// waits for a permit at most `--queue-timeout`, then gets 503 with
    /// `Retry-After`: under overload clients get a fast, retryable answer
    /// instead of a queue that grows without bound. The permit moves into
    /// the task that runs the guest and is released when the guest has
    /// finished, not when the client goes away: a client that hangs up
    /// cannot free a slot while its guest still runs. The semaphore is
    /// fair, so waiters are admitted in order.
    admission: Arc<tokio::sync::Semaphore>,
    /// Set when the process starts to stop: readiness turns at once, so a
    /// load balancer stops sending traffic while requests still finish.
    draining: std::sync::atomic::AtomicBool,
    /// What a caller's `traceparent` counts for.
    incoming_trace: IncomingTrace,
    /// Shadow runs of a candidate, apart from the admission slots.
    shadow_runs: Arc<tokio::sync::Semaphore>,
}

impl Endpoint {
    /// Serves whatever `slot` holds.
    pub fn new(slot: ComponentSlot) -> Self {
        let admission = Arc::new(tokio::sync::Semaphore::new(
            slot.limits().max_concurrent_requests,
        ));
        let slot = Arc::new(slot);
        slot.share();
        Endpoint {
            slot,
            admission,
            draining: std::sync::atomic::AtomicBool::new(false),
            incoming_trace: IncomingTrace::default(),
            shadow_runs: shadow::runs(),
        }
    }

    /// What a caller's `traceparent` counts for: a link (the default, for
    /// a listener that faces strangers), or the parent
    /// (`--trust-trace-context`).
    pub fn with_incoming_trace(mut self, incoming: IncomingTrace) -> Self {
        self.incoming_trace = incoming;
        self
    }

    /// The component slot, for swaps.
    pub fn slot(&self) -> &Arc<ComponentSlot> {
        &self.slot
    }

    /// Marks the endpoint as going away: [`Endpoint::unready_reasons`]
    /// says so from now on. Requests are still served.
    pub fn start_draining(&self) {
        self.draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Why this endpoint should get no traffic now, if it should not:
    /// draining, or what [`Capabilities::unready_reasons`] finds.
    pub fn unready_reasons(&self) -> Vec<(NotReady, String)> {
        let mut reasons = Vec::new();
        if self.draining.load(std::sync::atomic::Ordering::SeqCst) {
            reasons.push((
                NotReady::Draining,
                "draining: the process is stopping".to_owned(),
            ));
        }
        reasons.extend(self.capabilities().unready_reasons());
        reasons
    }

    /// What does not stop requests but weakens what keybust checks: the
    /// contract gate turned off. `/readyz` lists them beside its status.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if !self.slot.admission().gate.is_on() {
            warnings.push(crate::contract::GATE_OFF_WARNING.to_owned());
        }
        warnings
    }

    /// The capabilities given to the component.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        self.slot.capabilities()
    }

    /// The registry requests, swaps and capability calls are counted into:
    /// what `/metrics` shows.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.slot.metrics()
    }

    /// Answers one request: the endpoint's path goes to the component, any
    /// other path gets 404 from the host. Every answer carries `x-request-id`
    /// (the client's, or a new one) and gets one access-log line, written
    /// when the request is over ([`AccessRecord`]).
    pub async fn route<B>(&self, request: hyper::Request<B>) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // The request runs to its end on the version picked now: the
        // serving one, or a candidate in a canary step.
        let picked = self.slot.pick();
        let route = (request.uri().path() == ENDPOINT_PATH).then_some(ENDPOINT_PATH);
        let record = AccessRecord::start(
            &request,
            route,
            picked.version.digest(),
            self.metrics().clone(),
            self.incoming_trace,
        );
        let span = record.span().clone();
        self.answer(picked, request, record).instrument(span).await
    }
}

impl Endpoint {
    /// [`Endpoint::route`] inside the request's server span.
    async fn answer<B>(
        &self,
        picked: Picked,
        request: hyper::Request<B>,
        record: Arc<AccessRecord>,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let mut response = if request.uri().path() != ENDPOINT_PATH {
            json_response(404, r#"{"error":"Not found"}"#)
        } else if !has_usable_authority(&request) {
            // wasi:http hands the guest an authority; without one there is
            // no request to hand it. The client's fault, not the host's.
            tracing::debug!(
                request_id = record.request_id().to_str().unwrap_or_default(),
                "request without a usable Host"
            );
            json_response(400, r#"{"error":"Bad request"}"#)
        } else {
            self.admit_and_handle(picked, request, record.clone()).await
        };
        record.answered(response.status().as_u16());
        response
            .headers_mut()
            .insert(REQUEST_ID, record.request_id().clone());
        response
    }

    /// Runs the request once a concurrency slot is free; past the queue
    /// timeout, answers 503 with `Retry-After` instead of piling up. The
    /// slot and the access record stay with the guest until it finishes.
    async fn admit_and_handle<B>(
        &self,
        picked: Picked,
        request: hyper::Request<B>,
        record: Arc<AccessRecord>,
    ) -> hyper::Response<ResponseBody>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let headers = request.headers().clone();
        let queue_timeout = self.slot.limits().queue_timeout;
        let admitted =
            tokio::time::timeout(queue_timeout, self.admission.clone().acquire_owned()).await;
        let mut response = match admitted {
            Ok(Ok(permit)) => {
                let Picked {
                    version,
                    role,
                    tally,
                } = picked;
                record.runs_on(role, tally);
                let watch = record.clone();
                let shadowing = match role {
                    VersionRole::Serving => self.shadowing(),
                    VersionRole::Candidate => None,
                };
                let handled = match shadowing {
                    Some(candidate) => {
                        shadow::serve(
                            &self.slot,
                            &version,
                            candidate,
                            self.shadow_runs.clone(),
                            request,
                            (permit, record),
                        )
                        .await
                    }
                    None => version.plugin.handle(request, (permit, record)).await,
                };
                match handled {
                    Ok(response) => return response,
                    Err(failure) => {
                        let metrics = self.metrics();
                        let kind = match failure {
                            GuestFailure::BodyTimeout => None,
                            GuestFailure::Failed(_) => Some(GuestFailed::Trap),
                            GuestFailure::OutOfTime(_) => Some(GuestFailed::Timeout),
                        };
                        match kind {
                            Some(kind) => {
                                metrics.guest_failed(kind);
                                watch.guest_failed(kind);
                            }
                            None => metrics.body_timed_out(),
                        }
                        failure.response()
                    }
                }
            }
            _ => {
                self.metrics().unavailable(Unavailable::Shed);
                let mut busy = json_response(503, r#"{"error":"Service unavailable"}"#);
                busy.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                busy
            }
        };
        self.capabilities()
            .origins
            .add_cors_headers(&headers, response.headers_mut());
        response
    }
}

impl Endpoint {
    /// The candidate, when it shadows this request: its share of them, and
    /// none while fewer than a quarter of the admission slots are free
    /// (shadow work is the first thing given up under load).
    fn shadowing(&self) -> Option<Arc<crate::versions::candidate::Candidate>> {
        let candidate = self.slot.shadow_pick()?;
        let slots = self.slot.limits().max_concurrent_requests;
        if self.admission.available_permits() < slots / 4 {
            candidate.shed();
            self.metrics().shadowed("shed");
            return None;
        }
        Some(candidate)
    }
}

/// The authority wasi:http gives the guest: the URI's, else a `Host` header
/// of visible ASCII.
fn has_usable_authority<B>(request: &hyper::Request<B>) -> bool {
    request.uri().authority().is_some()
        || request
            .headers()
            .get(http::header::HOST)
            .is_some_and(|host| !host.is_empty() && host.to_str().is_ok())
}

#[cfg(test)]
mod tests {
    /// The host routes this path to the guest; the guest's policy names it too.
    #[test]
    fn the_path_is_the_guests() {
        assert_eq!(super::ENDPOINT_PATH, keybust_guest::policy::ENDPOINT_PATH);
    }
}
