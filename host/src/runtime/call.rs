//! One request's link to the instance that serves it, for instances that
//! outlive their request (`--instance-reuse`, and wasi:http 0.3).
//!
//! The store belongs to the instance, not to the request, so what must end
//! with the request (its `guest` span, the guest's stderr written meanwhile,
//! its CPU-budget flag, why its instance failed) is kept here and shared
//! between the request's side and the store's data.

use super::guest_log::GuestLog;
use crate::capabilities::Effects;
use crate::telemetry::TRACE_TARGET;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;
use tokio::sync::Notify;

/// One request's link to the instance serving it: its `guest` span (the
/// parent of the capabilities' spans), its CPU-budget flag, and the
/// instance's stderr, drained into the log when the request ends.
pub(crate) struct Call {
    span: Mutex<Option<tracing::Span>>,
    out_of_time: OnceLock<Arc<AtomicBool>>,
    log: OnceLock<GuestLog>,
    /// Why the instance failed while serving this request, from its worker.
    failure: OnceLock<wasmtime::Error>,
    failed: Notify,
    /// How this request's guest reaches the backends.
    effects: Effects,
}

impl Call {
    pub(super) fn new(effects: Effects) -> Self {
        // Opened here, where the request's span is current; it ends with the
        // request, however long the instance lives.
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "guest",
            otel.status_code = tracing::field::Empty,
        );
        Call {
            span: Mutex::new(Some(span)),
            out_of_time: OnceLock::new(),
            log: OnceLock::new(),
            failure: OnceLock::new(),
            failed: Notify::new(),
            effects,
        }
    }

    /// How this request's guest reaches the backends.
    pub(crate) fn effects(&self) -> &Effects {
        &self.effects
    }

    /// Hands the request what its instance keeps for it: the flag that
    /// says whether it ran out of CPU budget, and the guest's stderr.
    pub(super) fn started(&self, out_of_time: Arc<AtomicBool>, log: GuestLog) {
        let _ = self.out_of_time.set(out_of_time);
        let _ = self.log.set(log);
    }

    /// Records why the instance serving this request failed.
    pub(super) fn instance_failed(&self, why: wasmtime::Error) {
        if self.failure.set(why).is_ok() {
            self.failed.notify_waiters();
        }
    }

    /// Why the instance failed, once its worker has said so, within `bound`.
    pub(super) async fn worker_failure(&self, bound: Duration) -> Option<wasmtime::Error> {
        let reported = async {
            loop {
                let notified = self.failed.notified();
                tokio::pin!(notified);
                // Registered before the check, so a report between the
                // check and the wait still wakes us.
                notified.as_mut().enable();
                if self.failure.get().is_some() {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(bound, reported).await;
        self.failure
            .get()
            .map(|why| wasmtime::format_err!("{why:#}"))
    }

    /// The span a capability call made for this request belongs under, until
    /// the request ends.
    pub(crate) fn span(&self) -> Option<tracing::Span> {
        self.span
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn out_of_time(&self) -> bool {
        self.out_of_time
            .get()
            .is_some_and(|flag| flag.load(Ordering::Relaxed))
    }

    /// Closes the request's side: its span ends (marked error if it
    /// failed) and what the guest wrote to stderr meanwhile is logged.
    pub(super) fn end(&self, failed: bool) {
        let span = self
            .span
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(span) = span {
            if failed {
                span.record("otel.status_code", "error");
            }
            if let Some(log) = self.log.get() {
                let _inside = span.enter();
                log.drain_as(self.effects.is_rehearsal());
            }
        }
    }
}

/// Ends a [`Call`] when dropped: the answer body has been sent, or the
/// client went away.
pub(super) struct Ended(pub(super) Arc<Call>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.end(false);
    }
}
