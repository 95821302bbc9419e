//! How a request body is bounded before the guest sees it, and the bodies
//! the host writes itself.
//!
//! The guest enforces the endpoint's body bound ([`MAX_BODY_BYTES`],
//! contract rule E15) and answers 413 past it. The host wraps the client's
//! body in a [`BoundedBody`] that ends one byte past that bound, so the guest
//! can tell "too large" while nothing past the bound is ever buffered; that
//! fails once `--body-timeout` has passed, so a slow sender cannot hold a
//! request slot; and that drains what the guest left unread, so an early
//! answer reaches a client that is still sending.

use bytes::Bytes;
use http_body_util::BodyExt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

/// The request body bound (contract rule E15). The guest answers 413 past
/// it (`guest/src/policy.rs` holds the same number, checked by a test
/// below); the host passes it at most one byte more, so nothing past the
/// bound is ever buffered.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// The response body type every keybust answer has, the component's and the
/// host's alike: routes an embedder writes beside keybust's return it too.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A request body as the guest sees it: it ends after `limit` bytes
/// whatever the client sends, fails once `deadline` has passed before its
/// end, and, when dropped unfinished, is drained in the background.
///
/// The drain is nginx's lingering close. A client still sending a body
/// when keybust answers early (413 past the bound, 401 before the body is
/// read) would otherwise have the connection closed under it: the kernel
/// answers the unread bytes with a reset, and the client often sees that
/// reset instead of the answer. Reading on, and discarding, for at most
/// [`LINGER_TIME`] and [`LINGER_BYTES`] lets the answer arrive first.
pub struct BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    inner: Option<B>,
    remaining: usize,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    timed_out: Arc<AtomicBool>,
    ended: bool,
}

/// How long an unfinished request body is read and discarded after the
/// guest has let go of it.
pub const LINGER_TIME: Duration = Duration::from_secs(3);

/// How much of an unfinished request body is read and discarded after the
/// guest has let go of it.
pub const LINGER_BYTES: usize = 4 << 20;

impl<B> BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    /// Passes at most `limit` bytes of `inner`, with no deadline.
    pub fn new(inner: B, limit: usize) -> Self {
        BoundedBody {
            inner: Some(inner),
            remaining: limit,
            deadline: None,
            timed_out: Arc::default(),
            ended: false,
        }
    }

    /// Fails the body with a timeout unless it has ended within `timeout`
    /// from now; [`BoundedBody::timed_out`] then says so.
    pub fn with_deadline(mut self, timeout: Duration) -> Self {
        self.deadline = Some(Box::pin(tokio::time::sleep(timeout)));
        self
    }

    /// Set once the body failed because its deadline passed; readable
    /// after the body itself has been handed over.
    pub fn timed_out(&self) -> Arc<AtomicBool> {
        self.timed_out.clone()
    }
}

/// `request` with its body as the guest sees it: at most
/// [`MAX_BODY_BYTES`] and one byte more (so the guest can tell "too
/// large" without anything past the bound being buffered), ending within
/// `body_timeout`. The flag says, once the guest has answered, whether the
/// deadline cut the body short (the client gets 408, whatever the guest
/// made of it).
pub fn bound_request<B>(
    request: hyper::Request<B>,
    body_timeout: Duration,
) -> (hyper::Request<BoundedBody<B>>, Arc<AtomicBool>)
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    let (parts, body) = request.into_parts();
    let body = BoundedBody::new(body, MAX_BODY_BYTES + 1).with_deadline(body_timeout);
    let timed_out = body.timed_out();
    (hyper::Request::from_parts(parts, body), timed_out)
}

/// Why the guest's view of the request body failed.
#[derive(Debug)]
pub enum BoundedBodyError<E> {
    /// The client's body failed.
    Inner(E),
    /// The body did not end within its deadline.
    TimedOut,
}

impl<E: Into<wasmtime_wasi_http::Error>> From<BoundedBodyError<E>> for wasmtime_wasi_http::Error {
    fn from(err: BoundedBodyError<E>) -> Self {
        match err {
            BoundedBodyError::Inner(err) => err.into(),
            BoundedBodyError::TimedOut => wasmtime_wasi_http::Error::ConnectionReadTimeout,
        }
    }
}

impl<B> hyper::body::Body for BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = BoundedBodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 || self.ended {
            return Poll::Ready(None);
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(err))) => {
                return Poll::Ready(Some(Err(BoundedBodyError::Inner(err))));
            }
            Poll::Ready(None) => {
                self.ended = true;
                return Poll::Ready(None);
            }
            Poll::Pending => {
                if let Some(deadline) = self.deadline.as_mut()
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    self.timed_out.store(true, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(BoundedBodyError::TimedOut)));
                }
                return Poll::Pending;
            }
        };
        match frame.into_data() {
            Ok(mut data) => {
                if data.len() > self.remaining {
                    data.truncate(self.remaining);
                }
                self.remaining -= data.len();
                Poll::Ready(Some(Ok(hyper::body::Frame::data(data))))
            }
            Err(frame) => Poll::Ready(Some(Ok(frame))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
            || self.ended
            || self
                .inner
                .as_ref()
                .is_none_or(|inner| inner.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = hyper::body::SizeHint::new();
        hint.set_upper(self.remaining as u64);
        hint
    }
}

impl<B> Drop for BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        let Some(inner) = self.inner.take() else {
            return;
        };
        if self.ended || inner.is_end_stream() {
            return;
        }
        // Outside a runtime (a test dropping a body by hand) there is no
        // connection to keep reading either.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(inner));
        }
    }
}

/// Reads and discards, in the background, a body the host answers without
/// reading (a refused admin upload, say), so the answer is not lost to a
/// reset; see [`BoundedBody`].
pub fn discard<B>(body: B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin + Send + 'static,
{
    if !body.is_end_stream()
        && let Ok(runtime) = tokio::runtime::Handle::try_current()
    {
        runtime.spawn(linger(body));
    }
}

/// Reads and discards what is left of a body, within [`LINGER_TIME`] and
/// [`LINGER_BYTES`]; dropping it then lets the connection close.
async fn linger<B>(mut body: B)
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let drain = async {
        let mut read = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                read += data.len();
                if read > LINGER_BYTES {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

/// A JSON answer made by the host itself (404, 500, 503, 504, the admin API).
pub fn json_response(status: u16, body: impl Into<Bytes>) -> hyper::Response<ResponseBody> {
    let body = http_body_util::Full::new(body.into())
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;

    #[tokio::test]
    async fn passes_at_most_the_limit() {
        let body = Full::new(Bytes::from(vec![7u8; 10_000]));
        let collected = BoundedBody::new(body, MAX_BODY_BYTES.min(2500))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(collected.len(), 2500);
    }

    /// A body whose client never sends the rest.
    struct Stalled;

    impl hyper::body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn a_stalled_body_fails_at_its_deadline() {
        let body = BoundedBody::new(Stalled, 10).with_deadline(Duration::from_millis(50));
        let timed_out = body.timed_out();
        let started = std::time::Instant::now();
        let result = body.collect().await;
        assert!(matches!(result, Err(BoundedBodyError::TimedOut)));
        assert!(timed_out.load(Ordering::Relaxed));
        assert!(started.elapsed() >= Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_body_that_ends_in_time_does_not_time_out() {
        let body = BoundedBody::new(Full::new(Bytes::from_static(b"{}")), 10)
            .with_deadline(Duration::from_millis(50));
        let timed_out = body.timed_out();
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"{}");
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert!(!timed_out.load(Ordering::Relaxed));
    }

    /// The guest enforces the bound, the host clamps to it: they must agree.
    #[test]
    fn the_body_bound_is_the_guests() {
        assert_eq!(MAX_BODY_BYTES, keybust_guest::policy::MAX_BODY_BYTES);
    }
}
