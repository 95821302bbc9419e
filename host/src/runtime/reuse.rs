//! `--instance-reuse N`: an instance serves up to N requests, one after
//! another, before it is dropped.
//!
//! Instantiation is most of what a cheap request costs, so reuse buys
//! throughput; the price is isolation. A request may see what an earlier
//! one left in the instance's memory (a component that keeps state between
//! requests, or a bug that does), which a fresh instance per request, the
//! default, rules out.
//!
//! The scheduling is wasi:http's own [`ProxyHandler`]: it keeps a queue of
//! requests and a set of workers, each owning one store and instance, and
//! starts a worker only when none is free. keybust decides, per worker,
//! when it stops taking requests ([`Worker`]) and when it is dropped
//! ([`Expiry`]). The bounds of a fresh instance hold here as well:
//!
//! * **memory**: the store's cap holds for the instance's whole life;
//! * **CPU**: every request starts with a full `--guest-timeout` budget;
//!   spending it traps, which poisons the store, so the worker ends;
//! * **time**: a request that has no answer by `--request-timeout` gets
//!   504 and its worker takes no more requests; a worker still busy past
//!   that bound (a guest that never yields) is dropped from outside;
//! * **a trap** ends the worker: its instance never serves again;
//! * **admission**: the request's slot (and its access-log record) is
//!   held until its answer body has been sent, not until the instance is
//!   dropped. An idle instance holds a pool slot but no admission slot, so
//!   it is dropped after `--instance-idle-timeout`.
//!
//! A swap retires the old version's instances: idle ones are dropped at
//! once, busy ones after their current request.
//!
//! A wasi:http 0.3 component is always served here, even with N = 1 (one
//! request per instance): its async export is driven by [`ProxyHandler`].
//! Its instances, like 0.2 ones, take one request at a time: the
//! capabilities are host calls that hold the store until they return, and
//! the CPU budget is the store's, so concurrent requests would stall on
//! each other's backend calls and spend each other's budget. One overlap
//! remains: a 0.3 handler returns its response before a task it spawned
//! has written the body, and wasi:http's handler counts the request done
//! then, so the next request may start while that task still writes.

use super::call::{Call, Ended};
use super::failure::GuestFailure;
use super::store::{GuestState, RequestState, new_store};
use crate::body::{ResponseBody, bound_request};
use crate::capabilities::{Capabilities, Effects};
use crate::limits::Limits;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use wasmtime::component::GuestTaskId;
use wasmtime::{Store, StoreContextMut};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, ProxyHandler, ProxyPre, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};

/// The reused instances of one version of the component.
pub(crate) struct Reuse {
    limits: Arc<Limits>,
    /// wasi:http's queue and workers; no worker runs until a request comes.
    handler: ProxyHandler<Workers>,
    retirement: Arc<Retirement>,
}

impl Reuse {
    /// The kept instances of `pre`. `counted`: whether their
    /// instantiations count in the metrics (not a rehearsal's, which no
    /// client sent).
    pub(crate) fn new(
        pre: Arc<ProxyPre<RequestState>>,
        engine: wasmtime::Engine,
        capabilities: Arc<Capabilities>,
        limits: Arc<Limits>,
        counted: bool,
    ) -> Self {
        let retirement = Arc::new(Retirement::default());
        Reuse {
            handler: ProxyHandler::new(Workers {
                engine,
                pre,
                capabilities,
                limits: limits.clone(),
                retirement: retirement.clone(),
                counted,
            }),
            limits,
            retirement,
        }
    }

    /// Stops every instance of this version from taking more requests:
    /// idle ones are dropped now, busy ones after their request. Instances
    /// started later (after a rollback to this version) serve as usual.
    pub(crate) fn retire(&self) {
        self.retirement.retire();
    }

    /// Serves one request on a reused instance, with the bounds of
    /// [`serve_request`](super::fresh::serve_request). `hold` is kept until the answer
    /// body has been sent or dropped.
    pub(crate) async fn serve<B>(
        &self,
        request: hyper::Request<B>,
        hold: impl Send + 'static,
        effects: Effects,
    ) -> Result<hyper::Response<ResponseBody>, GuestFailure>
    where
        B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let limits = &self.limits;
        let (request, body_timed_out) = bound_request(request, limits.body_timeout);
        let request = request.map(|body| body.map_err(Into::into).boxed_unsync());
        let call = Arc::new(Call::new(effects));
        // Ends the call however this returns, or if the caller drops it (the
        // client went away): the request's spans must not stay open, and
        // its guest output unlogged, until the instance's next request.
        let ended = Ended(call.clone());
        let deadline = limits.request_timeout;
        let handled =
            tokio::time::timeout(deadline, self.handler.handle(call.clone(), request)).await;
        let answer = match handled {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is::<ExpirationError>() => {
                Err(GuestFailure::request_timed_out(deadline))
            }
            Ok(Err(_)) if call.out_of_time() => Err(GuestFailure::out_of_budget()),
            Ok(Err(err)) if err.is::<TrapOrPanicError>() => {
                // The instance's event loop ended (a wasi:http 0.3 guest that
                // trapped): its worker says why as it drops the store, just
                // after this request's answer channel closed.
                let why = call.worker_failure(WORKER_REPORT).await;
                Err(GuestFailure::Failed(why.unwrap_or(err)))
            }
            Ok(Err(err)) => Err(GuestFailure::Failed(err)),
            Err(_) => Err(GuestFailure::request_timed_out(deadline)),
        };
        if body_timed_out.load(Ordering::Relaxed) {
            call.end(true);
            return Err(GuestFailure::BodyTimeout);
        }
        match answer {
            Ok(response) => Ok(response.map(|body| {
                HeldBody {
                    body,
                    held: Some((Box::new(hold), ended)),
                }
                .boxed_unsync()
            })),
            Err(failure) => {
                call.end(true);
                Err(failure)
            }
        }
    }
}

impl Drop for Reuse {
    fn drop(&mut self) {
        self.retirement.retire();
    }
}

/// How much longer than `--request-timeout` a worker gives a request
/// before it ends the instance. The request's own deadline, started
/// before the worker's, answers 504 first; the worker's ends the guest
/// (which may be blocked in a host call, where wasi:http's handler cannot
/// reach it) a little later.
const WORKER_GRACE: Duration = Duration::from_millis(250);

/// How long a request whose instance failed waits for its worker to say
/// why; the worker does so right after, so this is only a bound.
const WORKER_REPORT: Duration = Duration::from_millis(100);

/// An answer body that keeps its request's admission slot and access
/// record until it has been sent.
struct HeldBody {
    body: ResponseBody,
    held: Option<(Box<dyn Send>, Ended)>,
}

impl hyper::body::Body for HeldBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.held = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Tells a version's workers that it no longer serves. A generation count,
/// not a flag: a worker retires when the generation it was started in is
/// over, so a version rolled back to serves with new workers.
#[derive(Default)]
struct Retirement {
    generation: AtomicU64,
    notify: Notify,
}

impl Retirement {
    fn current(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn retire(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_waiters();
    }

    /// Resolves once generation `born` is over.
    async fn over(self: Arc<Self>, born: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a retirement between the
            // check and the wait still wakes us.
            notified.as_mut().enable();
            if self.current() != born {
                return;
            }
            notified.await;
        }
    }
}

/// What [`ProxyHandler`] needs to start a worker: one instance of the
/// version, in a store bounded as a fresh instance's would be.
struct Workers {
    engine: wasmtime::Engine,
    pre: Arc<ProxyPre<RequestState>>,
    capabilities: Arc<Capabilities>,
    limits: Arc<Limits>,
    retirement: Arc<Retirement>,
    /// Whether instantiations count in the metrics.
    counted: bool,
}

impl HandlerState for Workers {
    type StoreData = RequestState;
    type WorkerExpiration = Expiry;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<RequestState, Expiry, Worker>> {
        let born = self.retirement.current();
        let mut store = new_store(&self.engine, self.capabilities.clone(), &self.limits);
        let started = Instant::now();
        // Start functions run under the store's CPU budget; this bounds
        // the wall clock as well.
        let proxy = tokio::time::timeout(
            self.limits.request_timeout,
            self.pre.instantiate_async(&mut store),
        )
        .await
        .map_err(|_| wasmtime::format_err!("instantiation did not finish in time"))??;
        let metrics = self.capabilities.metrics();
        if self.counted {
            metrics.instantiated(started.elapsed());
        }
        // A 0.3 component's instances come through here with N = 1 too;
        // only instances that may serve more than one request are counted.
        if self.counted && self.limits.instance_reuse > 1 {
            metrics.reused_instance_started();
        }
        Ok(Instance {
            store,
            proxy,
            view: <RequestState as WasiHttpView>::http,
            expiration: Expiry {
                idle_timeout: self.limits.instance_idle_timeout,
                busy_timeout: self.limits.request_timeout + WORKER_GRACE,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                retired: Some(Box::pin(self.retirement.clone().over(born))),
            },
            state: Worker {
                reuse: self.limits.instance_reuse,
                request_timeout: self.limits.request_timeout + WORKER_GRACE,
                retirement: self.retirement.clone(),
                born,
                capabilities: self.capabilities.clone(),
            },
        })
    }
}

/// When a worker takes requests, and what each request starts with.
struct Worker {
    reuse: usize,
    request_timeout: Duration,
    retirement: Arc<Retirement>,
    born: u64,
    capabilities: Arc<Capabilities>,
}

impl WorkerState for Worker {
    type StoreData = RequestState;
    type RequestData = Arc<Call>;

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse || self.retirement.current() != self.born {
            ShouldAccept::Never
        } else if concurrent > 0 {
            // One request at a time, for either wasi:http (see the module
            // docs).
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        mut store: StoreContextMut<'_, RequestState>,
        call: Arc<Call>,
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync>> {
        let state = store.data_mut();
        call.started(state.bounds().renew(), state.guest_log().clone());
        state.serve_call(call);
        Box::pin(tokio::time::sleep(self.request_timeout))
    }

    fn drop(&self, store: Store<RequestState>, result: wasmtime::Result<()>) {
        if let Err(err) = result {
            tracing::debug!(error = %format!("{err:#}"), "reused instance dropped after a failure");
            if let Some(call) = store.data().call() {
                call.instance_failed(err);
            }
        }
        store.data().guest_log().drain();
        if self.reuse > 1 {
            self.capabilities.metrics().reused_instance_stopped();
        }
    }
}

/// When a worker's instance is dropped: idle past `--instance-idle-timeout`,
/// retired by a swap while idle, or busy past `--request-timeout` (which
/// fails what it still serves).
struct Expiry {
    idle_timeout: Duration,
    busy_timeout: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    retired: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
}

impl WorkerExpiration for Expiry {
    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        since: Instant,
    ) -> Poll<()> {
        let this = &mut *self;
        if let Some(retired) = &mut this.retired
            && retired.as_mut().poll(cx).is_ready()
        {
            this.retired = None;
        }
        let timeout = match status {
            WorkerStatus::Idle if this.retired.is_none() => return Poll::Ready(()),
            WorkerStatus::Idle => this.idle_timeout,
            WorkerStatus::Requests | WorkerStatus::PostReturn => this.busy_timeout,
        };
        let Some(deadline) = since.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = tokio::time::Instant::from_std(deadline);
        if this.sleep.deadline() != deadline {
            this.sleep.as_mut().reset(deadline);
        }
        this.sleep.as_mut().poll(cx)
    }
}
