//! The outbound HTTP the capabilities share: one reqwest client for the
//! JWKS, Upstash, and Convex behind a proxy; hyper-util's pooled client
//! for Convex reached directly; their TLS provider; and bounded reads of
//! what the backends answer.

use crate::deadlines::Deadlines;
use bytes::Bytes;
use std::time::Duration;

/// One pooled, keep-alive HTTP client for the JWKS, Upstash, and Convex
/// when a proxy is in the way. It honours `HTTP_PROXY`, `HTTPS_PROXY`,
/// `ALL_PROXY` and `NO_PROXY`.
/// Redirects are not followed: a backend that redirects is misconfigured,
/// and following it could carry a secret somewhere else.
pub(crate) fn outbound_client(deadlines: &Deadlines) -> Result<reqwest::Client, reqwest::Error> {
    use_aws_lc_for_tls();
    reqwest::Client::builder()
        .connect_timeout(deadlines.connect)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// The pooled, keep-alive client for Convex, which every full-path request
/// calls: hyper-util's, over plain hyper. Measured against reqwest (with
/// the settings of [`outbound_client`]) in `benches/convex_client.rs`,
/// side by side against one loopback stand-in: 1.2–1.7× faster per
/// sequential call, and 1.5–1.7× the calls per second with 64 callers.
/// Like reqwest's, it follows no redirects, trusts what the platform's
/// verifier trusts, and probes idle connections (TCP keepalive, and a
/// bound on unacknowledged data) so a connection a middlebox dropped is
/// not handed to a request. Unlike reqwest's, it speaks to no proxy:
/// [`crate::capabilities::convex`] takes reqwest when one applies.
pub(crate) type PooledClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<Bytes>,
>;

/// Builds a [`PooledClient`] with [`outbound_client`]'s connect deadline,
/// idle timeout and `TCP_NODELAY`.
pub(crate) fn pooled_client(deadlines: &Deadlines) -> Result<PooledClient, rustls::Error> {
    use hyper_util::client::legacy::connect::HttpConnector;
    use hyper_util::rt::{TokioExecutor, TokioTimer};
    use_aws_lc_for_tls();
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.set_connect_timeout(Some(deadlines.connect));
    // reqwest's defaults, which Convex calls had before.
    http.set_keepalive(Some(Duration::from_secs(15)));
    http.set_keepalive_interval(Some(Duration::from_secs(15)));
    http.set_keepalive_retries(Some(3));
    #[cfg(target_os = "linux")]
    http.set_tcp_user_timeout(Some(Duration::from_secs(30)));
    // The TLS layer takes https:// URLs; plain http:// (a local Convex, a
    // stand-in) passes through.
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .try_with_platform_verifier()?
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(https),
    )
}

/// Every TLS client keybust opens (reqwest for Convex, the JWKS and
/// Upstash; redis-rs for `rediss://`) takes rustls's process-wide crypto
/// provider. keybust uses aws-lc-rs, the library it already verifies tokens
/// with; when the embedding process has installed a provider of its own,
/// that one is kept.
pub(crate) fn use_aws_lc_for_tls() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race to another thread installing one is as good.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    }
}

/// Why a backend's answer could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    /// The connection failed while the body came in.
    #[error("reading the answer failed: {0}")]
    Transport(#[source] reqwest::Error),
    /// The answer is longer than the backend has any reason to send.
    #[error("the answer is longer than {0} bytes")]
    TooLarge(usize),
}

/// Reads a backend's answer body, refusing one longer than `max` bytes
/// without buffering past it: a backend that misbehaves (or an attacker in
/// its place) costs bounded memory.
pub(crate) async fn read_bounded(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Bytes, ReadError> {
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(ReadError::TooLarge(max));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|err| ReadError::Transport(err.without_url()))?
    {
        if body.len() + chunk.len() > max {
            return Err(ReadError::TooLarge(max));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

/// An error and its sources, `: `-separated: hyper's errors say what
/// failed only in their sources ("client error (Connect)": connection
/// refused).
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}
