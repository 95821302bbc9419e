//! The Upstash REST API, the reference platform's transport.

use super::{BoxFuture, CacheBackend, CacheError};
use crate::capabilities::outbound::{ErrorChain, read_bounded};
use crate::config::Secret;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::Value;

/// What `encodeURIComponent` leaves alone.
const URI_COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'!')
    .remove(b'~')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

/// The most of an answer the host reads from Upstash; a `DEL` answers
/// `{"result":1}`.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// An Upstash Redis database reached over HTTPS with a bearer token.
pub struct UpstashCache {
    url: String,
    token: Secret,
    http: reqwest::Client,
}

impl UpstashCache {
    /// Uses `http`'s keep-alive pool for every call.
    pub fn new(url: String, token: Secret, http: reqwest::Client) -> Self {
        UpstashCache { url, token, http }
    }
}

impl UpstashCache {
    /// POSTs one REST command (`del/<key>`, `ping`) and checks the answer:
    /// a 2xx status with a JSON body that holds no `error`.
    async fn command(&self, command: &str) -> Result<(), CacheError> {
        let response = self
            .http
            .post(format!("{}/{command}", self.url))
            .headers(crate::telemetry::outgoing_headers())
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|err| {
                CacheError::Unavailable(format!("upstash: {}", ErrorChain(&err.without_url())))
            })?;
        let status = response.status();
        let body = read_bounded(response, MAX_ANSWER_BYTES)
            .await
            .map_err(|err| CacheError::Unavailable(format!("upstash: {err}")))?;
        let body: Option<Value> = serde_json::from_slice(&body).ok();
        let error = body.as_ref().and_then(|b| b.get("error"));
        if !status.is_success() || error.is_some() || body.is_none() {
            return Err(CacheError::Unavailable(format!(
                "upstash answered HTTP {}{}",
                status.as_u16(),
                error
                    .and_then(Value::as_str)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        Ok(())
    }
}

impl CacheBackend for UpstashCache {
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.command(&format!("del/{}", utf8_percent_encode(key, URI_COMPONENT)))
                .await
        })
    }

    fn name(&self) -> &'static str {
        "upstash"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        Box::pin(self.command("ping"))
    }
}
