//! A copy of a shadowed request: its head, and its body as the serving
//! version read it. The body is copied while it streams to the serving
//! version ([`Tee`]), so nothing is read that the serving version did not
//! ask for, and at most [`MAX_BODY_BYTES`] plus one byte is kept (what the
//! endpoint itself reads at most).

use crate::body::MAX_BODY_BYTES;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

/// What the serving version read of a request's body.
#[derive(Debug, Default)]
struct Read {
    bytes: Vec<u8>,
    /// Whether the body came to its end.
    ended: bool,
}

/// A request's head, and a handle on its body as it is read.
pub struct RequestCopy {
    head: http::request::Parts,
    read: Arc<Mutex<Read>>,
}

/// Splits `request` into the request to serve, whose body is copied as it
/// is read, and its copy.
pub fn tee<B>(request: hyper::Request<B>) -> (hyper::Request<Tee<B>>, RequestCopy) {
    let (head, body) = request.into_parts();
    let read = Arc::new(Mutex::new(Read::default()));
    let copy = RequestCopy {
        head: head.clone(),
        read: read.clone(),
    };
    (
        hyper::Request::from_parts(head, Tee { inner: body, read }),
        copy,
    )
}

impl RequestCopy {
    /// The request's head.
    pub fn head(&self) -> &http::request::Parts {
        &self.head
    }

    /// The body as read so far.
    pub fn body(&self) -> Vec<u8> {
        self.lock().bytes.clone()
    }

    /// Whether the serving version read the whole body.
    pub fn body_ended(&self) -> bool {
        self.lock().ended
    }

    /// The request again, with the body as read: what the candidate gets.
    pub fn request(&self) -> hyper::Request<Full<Bytes>> {
        hyper::Request::from_parts(self.head.clone(), Full::new(Bytes::from(self.body())))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Read> {
        self.read.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A body that keeps a copy of what is read of it.
pub struct Tee<B> {
    inner: B,
    read: Arc<Mutex<Read>>,
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
                    let room = (MAX_BODY_BYTES + 1).saturating_sub(read.bytes.len());
                    let taken = data.len().min(room);
                    read.bytes.extend_from_slice(&data[..taken]);
                }
            }
            Poll::Ready(None) => {
                self.read
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .ended = true;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
