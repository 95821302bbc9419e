//! The outbound HTTP every capability shares: one client for Convex, the
//! JWKS and Upstash, its TLS provider, and bounded reads of what the
//! backends answer.

use crate::deadlines::Deadlines;
use bytes::Bytes;
use std::time::Duration;

/// One pooled, keep-alive HTTP client for Convex, the JWKS and Upstash.
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
