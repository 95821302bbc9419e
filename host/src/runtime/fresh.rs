//! The default serving path: one request through a fresh instance, in a
//! store of its own, dropped when the guest has finished.
//!
//! A fresh instance per request is what makes a request unable to see
//! anything an earlier one left behind; the pooling allocator makes it
//! cheap. `--instance-reuse` (`reuse.rs`) trades that isolation for
//! throughput, and every wasi:http 0.3 component is served there too.

use super::failure::GuestFailure;
use super::store::GuestState;
use crate::body::{ResponseBody, bound_request};
use crate::limits::Limits;
use crate::telemetry::TRACE_TARGET;
use bytes::Bytes;
use std::time::Instant;
use tracing::Instrument;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Serves one request through a fresh instance of `pre` in `store`, with
/// keybust's bounds: the body clamped to [`MAX_BODY_BYTES`](crate::body::MAX_BODY_BYTES) (plus one byte,
/// so the guest can tell "too large") and to `--body-timeout`, the whole
/// run to `--request-timeout`, and the store's own [`GuestBounds`]
/// (memory, CPU). The store must have gone through
/// [`bound_store`](super::store::bound_store): on an engine with epoch interruption, a
/// store without an epoch deadline traps at once. This is what
/// [`Plugin::handle`](super::Plugin::handle) runs (and logs the failures of); a gateway with its
/// own `Linker` and store data calls it with its own `ProxyPre`.
///
/// `hold` is kept until the guest has finished, answer body included, even
/// when the caller has gone away meanwhile (give it the request's admission
/// permit). A failure is a [`GuestFailure`], whose
/// [`GuestFailure::response`] is the answer to give in the guest's place.
///
/// [`GuestBounds`]: super::store::GuestBounds
pub async fn serve_request<T, B>(
    pre: wasmtime_wasi_http::p2::bindings::ProxyPre<T>,
    mut store: wasmtime::Store<T>,
    request: hyper::Request<B>,
    limits: &Limits,
    hold: impl Send + 'static,
) -> Result<hyper::Response<ResponseBody>, GuestFailure>
where
    T: GuestState,
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let (request, body_timed_out) = bound_request(request, limits.body_timeout);
    let request = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, request)
        .map_err(GuestFailure::Failed)?;
    let outparam = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(GuestFailure::Failed)?;
    let deadline = limits.request_timeout;
    // The guest keeps running after it hands over the response head: it
    // still has to write the body, which the client reads as it comes.
    // The task, not the caller, owns `hold`: a client that hangs up
    // drops the caller, while the guest runs on to its end.
    // The task runs inside the request's span, so its spans (and the
    // capabilities' under them) belong to the request's trace.
    let task = tokio::spawn(
        async move {
            let _hold = hold;
            // Opened once the instance exists, so it starts when the
            // guest does; a failure before that leaves it unopened.
            let mut guest = tracing::Span::none();
            let call = async {
                let started = Instant::now();
                let proxy = pre
                    .instantiate_async(&mut store)
                    .instrument(tracing::info_span!(target: TRACE_TARGET, "instantiate"))
                    .await?;
                store.data_mut().instantiated(started.elapsed());
                guest = tracing::info_span!(
                    target: TRACE_TARGET,
                    "guest",
                    otel.status_code = tracing::field::Empty,
                );
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, request, outparam)
                    .instrument(guest.clone())
                    .await
            };
            let outcome = match tokio::time::timeout(deadline, call).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) if store.data_mut().bounds().out_of_time() => {
                    Err(GuestFailure::out_of_budget())
                }
                Ok(Err(err)) => Err(GuestFailure::Failed(err)),
                Err(_) => Err(GuestFailure::request_timed_out(deadline)),
            };
            if outcome.is_err() {
                guest.record("otel.status_code", "error");
            }
            store.data_mut().finished();
            // The instance goes back to the pool before the request's slot
            // frees, so an admitted request always finds a pool slot.
            drop(store);
            outcome
        }
        .instrument(tracing::Span::current()),
    );
    let answer = match receiver.await {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(code)) => Err(GuestFailure::Failed(wasmtime::format_err!(
            "guest answered with error code {code:?}"
        ))),
        Err(_) => match task.await {
            Ok(Ok(())) => Err(GuestFailure::Failed(wasmtime::format_err!(
                "guest returned without a response"
            ))),
            Ok(Err(failure)) => Err(failure),
            Err(join) => Err(GuestFailure::Failed(wasmtime::format_err!(
                "guest task failed: {join}"
            ))),
        },
    };
    // A guest that saw its body fail answers what it makes of that (a
    // 422, say); the client deserves to hear that it was too slow.
    if body_timed_out.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(GuestFailure::BodyTimeout);
    }
    answer
}
