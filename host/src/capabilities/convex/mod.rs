//! The `convex` capability: POSTs to Convex HTTP actions with the
//! deployment's shared secret, which only the host holds.

mod host;

use super::bindings::keybust::gateway::convex as wit;
use super::outbound::{ErrorChain, PooledClient, ReadError, pooled_client, read_bounded};
use crate::config::{ConfigError, PlainHttp, Secret, header_safe, http_url, non_empty, split_list};
use crate::deadlines::Deadlines;
use bytes::Bytes;
use http::HeaderValue;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

/// The Convex HTTP actions a component may call by default: the owner
/// lookup, and nothing else.
pub const DEFAULT_ALLOWED_PATHS: &[&str] = &["/api/internal-get-key-owner"];

/// Where Convex lives, how to prove we are the gateway, and which actions
/// a component may call. With the URL or the secret unset, the endpoint
/// answers 503 (contract rule E8).
#[derive(Debug, Clone)]
pub struct ConvexSettings {
    /// `CONVEX_SITE_URL`, without a trailing slash.
    pub site_url: Option<String>,
    /// `CONVEX_SERVER_SHARED_SECRET`.
    pub shared_secret: Option<Secret>,
    /// The action paths a component may POST to with the shared secret;
    /// any other is refused as forbidden, whatever the component asks.
    pub allowed_paths: Vec<String>,
}

impl ConvexSettings {
    /// Convex at `site_url` (no trailing slash), reached with
    /// `shared_secret`; the default allowed paths.
    pub fn new(site_url: impl Into<String>, shared_secret: Secret) -> Self {
        ConvexSettings {
            site_url: Some(site_url.into()),
            shared_secret: Some(shared_secret),
            ..ConvexSettings::default()
        }
    }
}

impl Default for ConvexSettings {
    /// Nothing configured; the owner lookup allowed.
    fn default() -> Self {
        ConvexSettings {
            site_url: None,
            shared_secret: None,
            allowed_paths: DEFAULT_ALLOWED_PATHS
                .iter()
                .map(|p| (*p).to_owned())
                .collect(),
        }
    }
}

/// The Convex settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct ConvexArgs {
    /// Convex deployment's site URL, e.g. <https://example.convex.site>; unset: 503.
    #[arg(long, env = "CONVEX_SITE_URL")]
    pub convex_site_url: Option<String>,

    /// Shared secret sent to Convex as x-convex-shared-secret (prefer the
    /// environment variable: a flag shows in `ps`).
    #[arg(long, env = "CONVEX_SERVER_SHARED_SECRET", hide_env_values = true)]
    pub convex_server_shared_secret: Option<String>,

    /// Comma-separated Convex action paths a component may call; others are
    /// refused and counted [default: /api/internal-get-key-owner].
    #[arg(long, env = "KEYBUST_ALLOWED_CONVEX_PATHS")]
    pub allowed_convex_paths: Option<String>,
}

impl ConvexArgs {
    /// Checks the values: a URL that is not http(s) (or plain http beyond
    /// loopback unless `plain` allows it), a secret that cannot travel in
    /// a header, or an allowed path that is not an internal action stops
    /// keybust at start.
    pub fn settings(&self, plain: PlainHttp) -> Result<ConvexSettings, ConfigError> {
        let mut settings = ConvexSettings {
            site_url: non_empty(self.convex_site_url.clone())
                .map(|url| http_url("CONVEX_SITE_URL", url, plain))
                .transpose()?,
            shared_secret: non_empty(self.convex_server_shared_secret.clone())
                .map(|secret| header_safe("CONVEX_SERVER_SHARED_SECRET", secret))
                .transpose()?,
            ..ConvexSettings::default()
        };
        if let Some(list) = non_empty(self.allowed_convex_paths.clone()) {
            settings.allowed_paths = split_list(Some(&list));
            if let Some(bad) = settings
                .allowed_paths
                .iter()
                .find(|p| !is_internal_action(p))
            {
                return Err(ConfigError::invalid(
                    "KEYBUST_ALLOWED_CONVEX_PATHS",
                    format!("{bad} is not a Convex internal action (/api/internal-...)"),
                ));
            }
        }
        Ok(settings)
    }
}

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
    allowed_paths: Vec<String>,
    timeout: Duration,
    transport: Transport,
    /// How the last call ended, for `keybust_backend_up`: [`NOT_ASKED`],
    /// [`ANSWERED`] or [`FAILED`]. Relaxed: a gauge, read by a scrape.
    last_call: AtomicU8,
}

const NOT_ASKED: u8 = 0;
const ANSWERED: u8 = 1;
const FAILED: u8 = 2;

/// How Convex is reached: hyper-util's pooled client, measured faster
/// (see [`PooledClient`]), unless the environment names a proxy for the
/// Convex URL (`HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY`, less `NO_PROXY`,
/// as reqwest reads them); then reqwest, which speaks to proxies.
enum Transport {
    Direct(Box<PooledClient>),
    Proxied(reqwest::Client),
}

impl ConvexClient {
    /// A client with its own keep-alive pool, or `http`'s when a proxy
    /// applies; `settings` says where and with what secret,
    /// `deadlines.convex` how long one call may take.
    pub fn new(
        settings: &ConvexSettings,
        deadlines: &Deadlines,
        http: reqwest::Client,
    ) -> Result<Self, rustls::Error> {
        let secret = settings
            .shared_secret
            .as_ref()
            .and_then(|secret: &Secret| HeaderValue::from_str(secret.expose()).ok())
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        Ok(ConvexClient {
            site_url: settings.site_url.clone(),
            secret,
            allowed_paths: settings.allowed_paths.clone(),
            timeout: deadlines.convex,
            transport: if proxied(settings.site_url.as_deref()) {
                tracing::info!("Convex is reached through the proxy the environment names");
                Transport::Proxied(http)
            } else {
                Transport::Direct(Box::new(pooled_client(deadlines)?))
            },
            last_call: AtomicU8::new(NOT_ASKED),
        })
    }

    /// Whether both the URL and the secret are set.
    pub fn is_configured(&self) -> bool {
        self.site_url.is_some() && self.secret.is_some()
    }

    /// Whether Convex answered the last call (a status below 500);
    /// `None` before the first.
    pub fn answered(&self) -> Option<bool> {
        match self.last_call.load(Ordering::Relaxed) {
            ANSWERED => Some(true),
            FAILED => Some(false),
            _ => None,
        }
    }

    /// POSTs `body` as JSON to `{CONVEX_SITE_URL}{path}` within the deadline.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<ConvexResponse, ConvexError> {
        let (Some(site_url), Some(secret)) = (&self.site_url, &self.secret) else {
            tracing::warn!("missing CONVEX_SITE_URL or CONVEX_SERVER_SHARED_SECRET: answering 503");
            return Err(ConvexError::NotConfigured);
        };
        // The path is the component's choice: it is not logged, since a
        // component could hide anything in it.
        if !is_internal_action(path) || !self.allowed_paths.iter().any(|allowed| allowed == path) {
            tracing::warn!("refused a Convex call outside --allowed-convex-paths");
            return Err(ConvexError::ForbiddenPath);
        }
        let url = format!("{site_url}{path}");
        let exchange = async {
            match &self.transport {
                Transport::Direct(client) => {
                    let mut request = http::Request::post(url)
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header("x-convex-shared-secret", secret.clone())
                        .body(Full::new(Bytes::from(body)))
                        .map_err(ExchangeError::Request)?;
                    request
                        .headers_mut()
                        .extend(crate::telemetry::outgoing_headers());
                    let response = client.request(request).await.map_err(ExchangeError::Send)?;
                    let status = response.status().as_u16();
                    let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
                        .collect()
                        .await
                        .map_err(|err| match err.downcast::<LengthLimitError>() {
                            Ok(_) => ExchangeError::TooLarge,
                            Err(err) => ExchangeError::Read(err),
                        })?
                        .to_bytes();
                    Ok::<_, ExchangeError>(ConvexResponse { status, body })
                }
                Transport::Proxied(client) => {
                    let response = client
                        .post(url)
                        .headers(crate::telemetry::outgoing_headers())
                        .header(http::header::CONTENT_TYPE, "application/json")
                        .header("x-convex-shared-secret", secret.clone())
                        .body(body)
                        .send()
                        .await
                        .map_err(|err| {
                            ExchangeError::Proxied(ReadError::Transport(err.without_url()))
                        })?;
                    let status = response.status().as_u16();
                    let body = read_bounded(response, MAX_RESPONSE_BYTES)
                        .await
                        .map_err(ExchangeError::Proxied)?;
                    Ok(ConvexResponse { status, body })
                }
            }
        };
        let result = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                tracing::warn!(path, timeout = ?self.timeout, "Convex call timed out");
                Err(ConvexError::Timeout)
            }
            Ok(Err(err)) => {
                tracing::warn!(path, error = %ErrorChain(&err), "Convex call failed");
                Err(ConvexError::Transport)
            }
            Ok(Ok(response)) => Ok(response),
        };
        let answered = matches!(&result, Ok(response) if response.status < 500);
        self.last_call
            .store(if answered { ANSWERED } else { FAILED }, Ordering::Relaxed);
        result
    }
}

/// Why a Convex exchange broke off, for the log line.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    /// The URL and path do not make a request (a path with characters a
    /// URI cannot hold).
    #[error("cannot build the request")]
    Request(#[source] http::Error),
    /// Connecting, sending, or the answer's head failed.
    #[error("the exchange failed")]
    Send(#[source] hyper_util::client::legacy::Error),
    /// The connection failed while the body came in.
    #[error("reading the answer failed")]
    Read(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The answer is longer than Convex has any reason to send.
    #[error("the answer is longer than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
    /// The exchange through the proxy failed.
    #[error("through the proxy")]
    Proxied(#[source] ReadError),
}

/// Whether the environment names a proxy for the Convex URL.
fn proxied(site_url: Option<&str>) -> bool {
    site_url
        .and_then(|url| url.parse::<http::Uri>().ok())
        .is_some_and(|uri| {
            hyper_util::client::proxy::matcher::Matcher::from_env()
                .intercept(&uri)
                .is_some()
        })
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

impl From<ConvexError> for wit::ConvexError {
    fn from(err: ConvexError) -> Self {
        match err {
            ConvexError::NotConfigured => wit::ConvexError::NotConfigured,
            ConvexError::ForbiddenPath => wit::ConvexError::ForbiddenPath,
            ConvexError::Timeout => wit::ConvexError::Timeout,
            ConvexError::Transport => wit::ConvexError::Transport,
        }
    }
}

impl From<ConvexResponse> for wit::ConvexResponse {
    fn from(response: ConvexResponse) -> Self {
        wit::ConvexResponse {
            status: response.status,
            body: response.body.into(),
        }
    }
}

#[cfg(feature = "native-policy")]
impl From<ConvexError> for keybust_guest::policy::ConvexError {
    fn from(err: ConvexError) -> Self {
        use keybust_guest::policy::ConvexError as Policy;
        match err {
            ConvexError::NotConfigured => Policy::NotConfigured,
            ConvexError::ForbiddenPath => Policy::ForbiddenPath,
            ConvexError::Timeout => Policy::Timeout,
            ConvexError::Transport => Policy::Transport,
        }
    }
}

#[cfg(feature = "native-policy")]
impl From<ConvexResponse> for keybust_guest::policy::ConvexResponse {
    fn from(response: ConvexResponse) -> Self {
        keybust_guest::policy::ConvexResponse {
            status: response.status,
            body: response.body.into(),
        }
    }
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
