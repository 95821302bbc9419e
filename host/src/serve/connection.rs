//! One accepted connection, from its first byte to its close.
//!
//! A connection holds a slot of its listener's connection cap for as long
//! as it is open, so a connection that sends nothing must not stay open.
//! The time a connection spends with no request in flight is bounded by
//! `--header-timeout`, whatever it is waiting in: the TLS handshake,
//! hyper-util's look at the first bytes for the HTTP/2 preface, the first
//! request head, or, on HTTP/2, a stream that never opens while the client
//! keeps answering pings. hyper's own header timeout starts only once the
//! protocol is chosen, and its HTTP/2 server has no idle bound, so the
//! bound is kept here, around the whole connection ([`Activity`]).
//!
//! A connection that never completed a request head is dropped when the
//! bound passes. One that did, and has since gone quiet, is closed
//! gracefully: HTTP/2 gets a GOAWAY, so a client's pool learns the
//! connection is gone rather than finding out on its next request.
//!
//! Over TLS the protocol is the one ALPN chose (`h2`, else HTTP/1.1), never
//! a guess from the first bytes; only plaintext connections are sniffed, to
//! tell h2c with prior knowledge from HTTP/1.1.

use crate::body::ResponseBody;
use crate::serve::tls::Acceptor;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

/// The client's address, on every request a connection hands its handler.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The scheme the request arrived over (`http` or `https`), set as a
/// request extension for the request's span.
#[derive(Debug, Clone, Copy)]
pub struct Scheme(pub &'static str);

/// A connection's bytes, plaintext or TLS, behind one type so that both are
/// served by the same code.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What one accepted connection is served with.
pub(super) struct Accepted<F> {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub tls: Option<Acceptor>,
    pub builder: auto::Builder<TokioExecutor>,
    pub handler: F,
    /// The longest a connection may go with no request in flight.
    pub quiet_bound: Duration,
    /// Turns `true` when the server stops: the connection finishes what
    /// is in flight and closes.
    pub stop: watch::Receiver<bool>,
}

/// Serves one connection until it closes, the client's or the bound's
/// doing, or until the server stops.
pub(super) async fn serve<F, Fut>(accepted: Accepted<F>)
where
    F: Fn(hyper::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = hyper::Response<ResponseBody>> + Send + 'static,
{
    let Accepted {
        stream,
        peer,
        tls,
        builder,
        handler,
        quiet_bound,
        mut stop,
    } = accepted;
    let activity = Arc::new(Activity::new());
    let quiet = activity.clone().quiet_for(quiet_bound);
    let mut quiet = std::pin::pin!(quiet);
    let scheme = Scheme(if tls.is_some() { "https" } else { "http" });
    let mut client_ca_changes = tls.as_ref().and_then(Acceptor::client_ca_changes);
    let (io, builder): (Box<dyn Io>, _) = match tls {
        None => (Box::new(stream), builder),
        Some(tls) => tokio::select! {
            accepted = tls.accept(stream) => match accepted {
                Ok(stream) => {
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
                    let builder = if h2 { builder.http2_only() } else { builder.http1_only() };
                    (Box::new(stream), builder)
                }
                Err(err) => {
                    tracing::debug!(%peer, error = %err, "TLS handshake failed");
                    return;
                }
            },
            () = &mut quiet => {
                tracing::debug!(%peer, "TLS handshake timed out");
                return;
            }
        },
    };
    let service = service_fn({
        let activity = activity.clone();
        move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(Peer(peer));
            request.extensions_mut().insert(scheme);
            let in_flight = activity.start();
            let response = handler(request);
            async move {
                let response = response.await;
                drop(in_flight);
                Ok::<_, Infallible>(response)
            }
        }
    });
    let connection = builder.serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    // Closed gracefully after going quiet or losing its authority (bounded
    // by one more quiet bound), or at the server's stop (bounded by its
    // grace).
    let bounded = tokio::select! {
        ended = connection.as_mut() => {
            if let Err(err) = ended {
                tracing::debug!(%peer, error = %err, "connection ended with an error");
            }
            return;
        }
        () = &mut quiet => {
            if !activity.served() {
                tracing::debug!(%peer, "closed: no request head within --header-timeout");
                return;
            }
            true
        }
        // An error: the server is gone, which is a stop too.
        _ = stop.wait_for(|stopping| *stopping) => false,
        () = changed(&mut client_ca_changes) => {
            tracing::info!(%peer, "closing an admin connection made under the replaced client CA");
            true
        }
    };
    connection.as_mut().graceful_shutdown();
    if bounded {
        // The client has one more bound to take its GOAWAY and finish.
        if tokio::time::timeout(quiet_bound, connection).await.is_err() {
            tracing::debug!(%peer, "closed: did not finish after going quiet");
        }
    } else if let Err(err) = connection.await {
        tracing::debug!(%peer, error = %err, "connection ended with an error");
    }
}

/// Resolves when the client CA this connection was authorized under is
/// replaced; never, for a connection that checks no client certificate.
async fn changed(changes: &mut Option<watch::Receiver<u64>>) {
    // An error: the certificates are gone with the server; a stop closes
    // the connection then.
    let replaced = match changes {
        Some(changes) => changes.changed().await.is_ok(),
        None => false,
    };
    if !replaced {
        std::future::pending::<()>().await;
    }
}

/// Whether a connection has a request in flight, and since when it has had
/// none. A `std` mutex: held for a counter update at each request's start
/// and end, and by the connection's own timer when it wakes.
struct Activity {
    state: Mutex<State>,
}

struct State {
    in_flight: usize,
    served: bool,
    quiet_since: Instant,
}

/// One request in flight; dropping it (the response is ready, or the
/// client went away) ends it.
struct InFlight(Arc<Activity>);

impl Activity {
    /// Quiet from now: a new connection has sent nothing yet.
    fn new() -> Self {
        Activity {
            state: Mutex::new(State {
                in_flight: 0,
                served: false,
                quiet_since: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// A request's head is complete and its handler runs.
    fn start(self: &Arc<Self>) -> InFlight {
        let mut state = self.lock();
        state.in_flight += 1;
        state.served = true;
        InFlight(self.clone())
    }

    /// Whether a request head ever arrived.
    fn served(&self) -> bool {
        self.lock().served
    }

    /// Resolves once the connection has had no request in flight for
    /// `bound`. While one is in flight it only wakes once per `bound` to
    /// look again: the request has bounds of its own.
    async fn quiet_for(self: Arc<Self>, bound: Duration) {
        loop {
            let wake = {
                let state = self.lock();
                if state.in_flight == 0 {
                    state.quiet_since + bound
                } else {
                    Instant::now() + bound
                }
            };
            tokio::time::sleep_until(wake).await;
            let state = self.lock();
            if state.in_flight == 0 && Instant::now() >= state.quiet_since + bound {
                return;
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight -= 1;
        if state.in_flight == 0 {
            state.quiet_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Activity;
    use std::sync::Arc;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn quiet_counts_from_the_last_request_and_never_during_one() {
        let bound = Duration::from_millis(100);
        let activity = Arc::new(Activity::new());
        let began = Instant::now();
        // Nothing sent: quiet after the bound, counted from the accept.
        activity.clone().quiet_for(bound).await;
        assert!(began.elapsed() >= bound);
        assert!(!activity.served());

        // A request in flight for several bounds: never quiet meanwhile.
        let in_flight = activity.start();
        let waiting = tokio::spawn(activity.clone().quiet_for(bound));
        tokio::time::sleep(bound * 4).await;
        assert!(!waiting.is_finished());
        let ended = Instant::now();
        drop(in_flight);
        // Quiet once a whole bound has passed since the request ended.
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("quiet after the request ended")
            .unwrap();
        assert!(ended.elapsed() >= bound);
        assert!(activity.served());
    }
}
