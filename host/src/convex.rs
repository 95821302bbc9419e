//! The `convex` capability: POSTs to Convex HTTP actions with the
//! deployment's shared secret, which only the host holds.

use crate::config::{ConvexSettings, Secret};
use bytes::Bytes;
use http::HeaderValue;
use std::time::Duration;

/// The most response body the host reads from Convex.
pub const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Why a Convex call produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConvexError {
    /// `CONVEX_SITE_URL` or `CONVEX_SERVER_SHARED_SECRET` is missing.
    #[error("Convex is not configured")]
    NotConfigured,
    /// The path is not one of Convex's internal HTTP actions.
    #[error("path is not a Convex internal action")]
    ForbiddenPath,
    /// No complete answer within the deadline.
    #[error("Convex did not answer in time")]
    Timeout,
    /// Connection, protocol, or oversized answer.
    #[error("Convex exchange failed")]
    Transport,
}

/// A complete answer from Convex.
#[derive(Debug, Clone)]
pub struct ConvexResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The body, at most [`MAX_RESPONSE_BYTES`].
    pub body: Bytes,
}

/// A keep-alive client for one Convex deployment.
pub struct ConvexClient {
    site_url: Option<String>,
    secret: Option<HeaderValue>,
    timeout: Duration,
    http: reqwest::Client,
}

impl ConvexClient {
    /// Uses `http`'s connection pool; `settings` says where and with what secret.
    pub fn new(settings: &ConvexSettings, http: reqwest::Client) -> Self {
        let secret = settings
            .shared_secret
            .as_ref()
            .and_then(|secret: &Secret| HeaderValue::from_str(secret.expose()).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        ConvexClient {
            site_url: settings.site_url.clone(),
            secret,
            timeout: settings.timeout,
            http,
        }
    }

    /// Whether both the URL and the secret are set.
    pub fn is_configured(&self) -> bool {
        self.site_url.is_some() && self.secret.is_some()
    }

    /// POSTs `body` as JSON to `{CONVEX_SITE_URL}{path}` within the deadline.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<ConvexResponse, ConvexError> {
        let (Some(site_url), Some(secret)) = (&self.site_url, &self.secret) else {
            tracing::warn!("missing CONVEX_SITE_URL or CONVEX_SERVER_SHARED_SECRET: answering 503");
            return Err(ConvexError::NotConfigured);
        };
        if !is_internal_action(path) {
            tracing::warn!(path, "refused a Convex call outside /api/internal-*");
            return Err(ConvexError::ForbiddenPath);
        }
        let exchange = async {
            let mut response = self
                .http
                .post(format!("{site_url}{path}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("x-convex-shared-secret", secret.clone())
                .body(body)
                .send()
                .await?;
            let status = response.status().as_u16();
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await? {
                if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    return Ok(Err(ConvexError::Transport));
                }
                body.extend_from_slice(&chunk);
            }
            Ok::<_, reqwest::Error>(Ok(ConvexResponse {
                status,
                body: body.into(),
            }))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                tracing::warn!(path, timeout = ?self.timeout, "Convex call timed out");
                Err(ConvexError::Timeout)
            }
            Ok(Err(err)) => {
                tracing::warn!(path, error = %err.without_url(), "Convex call failed");
                Err(ConvexError::Transport)
            }
            Ok(Ok(Err(err))) => {
                tracing::warn!(path, "Convex answered more than {MAX_RESPONSE_BYTES} bytes");
                Err(err)
            }
            Ok(Ok(Ok(response))) => Ok(response),
        }
    }
}

/// Convex's internal HTTP actions: `/api/internal-` followed by a plain name.
pub fn is_internal_action(path: &str) -> bool {
    path.strip_prefix("/api/internal-").is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

#[cfg(test)]
mod tests {
    use super::is_internal_action;

    #[test]
    fn only_internal_actions() {
        assert!(is_internal_action("/api/internal-get-key-owner"));
        assert!(!is_internal_action("/api/internal-"));
        assert!(!is_internal_action("/api/public"));
        assert!(!is_internal_action("/api/internal-x/../admin"));
        assert!(!is_internal_action("/api/internal-x?y=1"));
        assert!(!is_internal_action("//evil.example/api/internal-x"));
    }
}
