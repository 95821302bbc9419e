//! How a request body is bounded before the guest sees it, and the bodies
//! the host writes itself.
//!
//! The guest enforces the endpoint's body bound ([`MAX_BODY_BYTES`],
//! contract rule E15) and answers 413 past it. The host wraps the client's
//! body in a [`BoundedBody`] that ends one byte past that bound, so the guest
//! can tell "too large" while nothing past the bound is ever buffered.

use bytes::Bytes;
use http_body_util::BodyExt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The request body bound (contract rule E15). The guest answers 413 past
/// it (`guest/src/policy.rs` holds the same number, checked by a test
/// below); the host passes it at most one byte more, so nothing past the
/// bound is ever buffered.
pub const MAX_BODY_BYTES: usize = 64 << 10;

/// The response body type every keybust answer has, the component's and the
/// host's alike: routes an embedder writes beside keybust's return it too.
pub type ResponseBody = wasmtime_wasi_http::p2::body::HyperOutgoingBody;

/// A request body that ends after `remaining` bytes, whatever the client sends.
pub struct BoundedBody<B> {
    inner: B,
    remaining: usize,
}

impl<B> BoundedBody<B> {
    /// Passes at most `limit` bytes of `inner`.
    pub fn new(inner: B, limit: usize) -> Self {
        BoundedBody {
            inner,
            remaining: limit,
        }
    }
}

impl<B> hyper::body::Body for BoundedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, B::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
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
        self.remaining == 0 || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        let mut hint = hyper::body::SizeHint::new();
        hint.set_upper(self.remaining as u64);
        hint
    }
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

    /// The guest enforces the bound, the host clamps to it: they must agree.
    #[test]
    fn the_body_bound_is_the_guests() {
        assert_eq!(MAX_BODY_BYTES, keybust_guest::policy::MAX_BODY_BYTES);
    }
}
