//! Serving HTTP on hyper: accepting under the listener's connection cap,
//! HTTP/1.1 and HTTP/2 (over TLS as ALPN chose; in plaintext h2c with
//! prior knowledge, told apart by the connection's first bytes),
//! keep-alive, header bounds, and a graceful stop. Each connection, quiet
//! ones above all, is served by `serve::connection`. What a
//! request gets is decided by the handler given to [`serve`]:
//! [`crate::serve::endpoint::Endpoint::route`] or [`crate::admin::handle`].
//! Every HTTP/2 stream is a request like any other: admitted, bounded and
//! timed the same way.

use crate::body::ResponseBody;
use crate::limits::Limits;
use crate::serve::connection::{self, Accepted};
use crate::serve::tls::Acceptor;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;

pub use crate::serve::connection::{Peer, Scheme};

/// Serves `listener` until `shutdown` resolves, then waits for open
/// connections to finish their in-flight requests; with `tls`, every
/// connection is a TLS connection accepted by it. At most
/// `limits.max_connections` are open at once; `open` counts them.
pub async fn serve<F, Fut>(
    listener: TcpListener,
    tls: Option<Acceptor>,
    handler: F,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    limits: Limits,
    open: prometheus_client::metrics::gauge::Gauge,
) where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    // Every connection holds a receiver: `closed` resolves once the last
    // one has ended, which is what the drain waits for.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    // At the connection limit, stop accepting: further clients wait in the
    // kernel's listen backlog instead of costing memory here.
    let connections = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = limits.max_connections_per_ip.map(PerIp::new);
    let builder = connection_builder(&limits);
    loop {
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let peer_slot = match &per_ip {
            Some(per_ip) => match per_ip.admit(peer.ip()) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(%peer, "connection refused: --max-connections-per-ip");
                    continue;
                }
            },
            None => None,
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            stream,
            peer,
            tls: tls.clone(),
            builder: builder.clone(),
            handler: handler.clone(),
            quiet_bound: limits.header_read_timeout,
            stop: stopping.clone(),
        };
        open.inc();
        let open = open.clone();
        tokio::spawn(async move {
            connection::serve(accepted).await;
            open.dec();
            drop(permit);
            drop(peer_slot);
        });
    }
    // Close the listening socket now: a client that connects during the
    // drain is refused at once instead of waiting in the backlog.
    drop(listener);
    drop(stopping);
    let _ = stop.send(true);
    if tokio::time::timeout(grace, stop.closed()).await.is_err() {
        tracing::warn!(
            ?grace,
            "shutdown grace elapsed with requests still in flight"
        );
    }
}

/// How each connection is served: HTTP/1.1 with its head bounded in size
/// and time; HTTP/2 with the same head bound per stream, and at most
/// `--max-concurrent-streams` streams open at once. How long a connection
/// may go without a request is `serve::connection`'s bound.
fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.max_concurrent_streams)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    builder
}

/// Open connections per client address, for `--max-connections-per-ip`.
/// A `std` mutex: held for one map update at accept and at close.
#[derive(Clone)]
struct PerIp {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One open connection from an address; closing it frees the count.
struct PeerSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(max: usize) -> Self {
        PerIp {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for one more connection from `ip`, or `None` at the bound.
    fn admit(&self, ip: IpAddr) -> Option<PeerSlot> {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        // Counted only once admitted: refused addresses leave no entry.
        if open.get(&ip).copied().unwrap_or(0) >= self.max {
            return None;
        }
        *open.entry(ip).or_insert(0) += 1;
        Some(PeerSlot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::PerIp;
    use std::net::IpAddr;

    #[test]
    fn per_ip_slots_are_counted_and_freed() {
        let per_ip = PerIp::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = per_ip.admit(a).unwrap();
        let _second = per_ip.admit(a).unwrap();
        assert!(per_ip.admit(a).is_none());
        assert!(per_ip.admit(b).is_some());
        drop(first);
        assert!(per_ip.admit(a).is_some());
        let none = PerIp::new(0);
        assert!(none.admit(a).is_none());
        assert!(none.open.lock().unwrap().is_empty());
    }
}
