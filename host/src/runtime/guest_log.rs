//! What a guest writes to stderr, kept for the host's log.
//!
//! The guest's stderr is a bounded buffer the host drains once per
//! request, one WARN line per line written. Past the bound, output is
//! counted and dropped, never refused: a guest that prints too much must
//! not trap (Rust's `eprintln!` panics when its write fails), and an
//! instance kept for `--instance-reuse` starts every request with room.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// How much of what the guest writes to stderr the host keeps per request.
pub const GUEST_LOG_CAPACITY: usize = 4096;

/// The guest's stderr: clones share one buffer, so the store hands one to
/// WASI and keeps another to drain.
#[derive(Clone)]
pub struct GuestLog {
    kept: Arc<Mutex<Kept>>,
}

struct Kept {
    bytes: Vec<u8>,
    dropped: usize,
}

impl GuestLog {
    /// An empty log holding at most [`GUEST_LOG_CAPACITY`] bytes between drains.
    pub fn new() -> Self {
        GuestLog {
            kept: Arc::new(Mutex::new(Kept {
                bytes: Vec::new(),
                dropped: 0,
            })),
        }
    }

    fn keep(&self, bytes: &[u8]) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let room = GUEST_LOG_CAPACITY.saturating_sub(kept.bytes.len());
        let taken = bytes.len().min(room);
        kept.bytes.extend_from_slice(&bytes[..taken]);
        kept.dropped += bytes.len() - taken;
    }

    /// Empties the buffer into the host's log: one WARN per line the guest
    /// wrote, and one saying how much did not fit.
    pub fn drain(&self) {
        self.drain_as(false);
    }

    /// [`GuestLog::drain`], at DEBUG for a `rehearsal`: a run with a
    /// stand-in for the backends (the contract gate's) makes the guest
    /// meet failures on purpose, and what it says of them is no news.
    pub(crate) fn drain_as(&self, rehearsal: bool) {
        let (bytes, dropped) = {
            let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
            if kept.bytes.is_empty() && kept.dropped == 0 {
                return;
            }
            (
                std::mem::take(&mut kept.bytes),
                std::mem::take(&mut kept.dropped),
            )
        };
        for line in String::from_utf8_lossy(&bytes).lines() {
            if rehearsal {
                tracing::debug!(target: "keybust::guest", rehearsal, "{line}");
            } else {
                tracing::warn!(target: "keybust::guest", "{line}");
            }
        }
        if dropped > 0 {
            tracing::warn!(
                target: "keybust::guest",
                dropped_bytes = dropped,
                "guest output past {GUEST_LOG_CAPACITY} bytes dropped"
            );
        }
    }
}

impl Default for GuestLog {
    fn default() -> Self {
        Self::new()
    }
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for GuestLog {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.keep(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Always ready: what does not fit is dropped, not waited on.
        Ok(GUEST_LOG_CAPACITY)
    }
}

#[async_trait::async_trait]
impl Pollable for GuestLog {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for GuestLog {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.keep(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_past_the_bound_is_counted_and_the_next_request_has_room() {
        let log = GuestLog::new();
        let mut stream = log.clone();
        for _ in 0..3 {
            stream.write(Bytes::from(vec![b'x'; 3000])).unwrap();
        }
        {
            let kept = log.kept.lock().unwrap();
            assert_eq!(kept.bytes.len(), GUEST_LOG_CAPACITY);
            assert_eq!(kept.dropped, 9000 - GUEST_LOG_CAPACITY);
        }
        log.drain();
        stream.write(Bytes::from_static(b"again\n")).unwrap();
        let kept = log.kept.lock().unwrap();
        assert_eq!(kept.bytes, b"again\n");
        assert_eq!(kept.dropped, 0);
    }
}
