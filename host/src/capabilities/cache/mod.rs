//! The `cache` capability: forgetting a key in the gateway's validation cache.
//!
//! Every backend sits behind [`CacheBackend`]; [`Cache`] adds what all of
//! them share: the deploy prefix and the deadline. Four backends ship:
//! Redis over RESP, Redis Cluster, the Upstash REST API, and an in-process
//! store.

mod embedded;
mod health;
mod host;
mod redis;
mod redis_cluster;
mod settings;
mod upstash;

pub use self::embedded::EmbeddedCache;
pub use self::health::{CacheHealth, Change};
pub use self::redis::RedisCache;
pub use self::redis_cluster::RedisClusterCache;
pub use self::settings::{
    CacheArgs, CacheBackendSettings, CacheChoice, CacheSettings, deploy_prefix,
};
pub use self::upstash::UpstashCache;

use super::bindings::keybust::gateway::cache as wit;
use crate::deadlines::Deadlines;
use regex::Regex;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A boxed future, so backends can be chosen at run time.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a cache operation did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CacheError {
    /// The backend refused, failed, or could not be reached.
    #[error("cache backend unavailable: {0}")]
    Unavailable(String),
    /// The backend did not answer within the deadline.
    #[error("cache backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The component named a key outside `--allowed-cache-keys`.
    #[error("the key is outside --allowed-cache-keys")]
    Forbidden,
    /// No cache backend is configured, so there is no cache to forget the
    /// key in: a delete must not be reported done (503, as a missing
    /// Convex setting is).
    #[error(
        "no cache backend is configured (REDIS_URL, REDIS_CLUSTER_NODES, UPSTASH_REDIS_REST_URL, or KEYBUST_CACHE=embedded)"
    )]
    NotConfigured,
}

/// A store that holds the gateway's cached key validations.
pub trait CacheBackend: Send + Sync {
    /// Deletes one fully prefixed key; deleting a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>>;

    /// A short name for logs and readiness reports.
    fn name(&self) -> &'static str;

    /// Checks that the backend answers (Redis `PING`, Upstash's `ping`);
    /// the in-process store always does.
    fn ping(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Told when an operation that started at `started` ran out of its
    /// deadline, so a backend whose connection may have gone silent can
    /// replace it. Nothing to do by default.
    fn timed_out(&self, started: Instant) {
        let _ = started;
    }
}

/// The cache the guest sees: a backend, the deploy prefix, and a deadline.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    prefix: String,
    timeout: Duration,
    allowed_keys: Regex,
    health: Arc<CacheHealth>,
    configured: bool,
}

impl Cache {
    /// Builds the backend the settings choose; no connection is made yet.
    /// Every operation gets `deadlines.cache`.
    pub fn from_settings(
        settings: &CacheSettings,
        deadlines: &Deadlines,
        http: reqwest::Client,
    ) -> Result<Self, CacheError> {
        let backend: Arc<dyn CacheBackend> = match &settings.backend {
            CacheBackendSettings::Redis { url } => {
                Arc::new(RedisCache::new(url.expose(), deadlines)?)
            }
            CacheBackendSettings::RedisCluster { nodes } => {
                let nodes: Vec<&str> = nodes.expose().split(',').map(str::trim).collect();
                Arc::new(RedisClusterCache::new(&nodes, deadlines)?)
            }
            CacheBackendSettings::Upstash { url, token } => {
                Arc::new(UpstashCache::new(url.clone(), token.clone(), http))
            }
            CacheBackendSettings::Embedded | CacheBackendSettings::Unset => {
                Arc::new(EmbeddedCache::default())
            }
        };
        let mut cache = Self::new(backend, settings.prefix.clone(), deadlines.cache)
            .with_allowed_keys(settings.allowed_keys.clone());
        cache.configured = !matches!(settings.backend, CacheBackendSettings::Unset);
        Ok(cache)
    }

    /// Wraps any backend.
    /// Wraps any backend; the component may delete the keys
    /// [`CacheSettings::default`] allows.
    pub fn new(backend: Arc<dyn CacheBackend>, prefix: String, timeout: Duration) -> Self {
        Cache {
            backend,
            prefix,
            timeout,
            allowed_keys: CacheSettings::default().allowed_keys,
            health: Arc::default(),
            configured: true,
        }
    }

    /// Whether a backend was chosen. With none, readiness reports the
    /// endpoint unready and every delete is refused
    /// ([`CacheError::NotConfigured`]).
    pub fn is_configured(&self) -> bool {
        self.configured
    }

    /// What the background checks and the deletes found.
    pub fn health(&self) -> &CacheHealth {
        &self.health
    }

    /// Checks the backend within the deadline, and notes the outcome.
    pub async fn check(&self) {
        check(&*self.backend, &self.health, self.timeout).await
    }

    /// Checks the backend every `interval` for as long as the cache lives:
    /// the task holds only weak references. Needs a tokio runtime.
    pub fn watch_health(&self, interval: Duration) {
        // A zero interval would check back to back.
        let interval = interval.max(Duration::from_millis(100));
        let backend = Arc::downgrade(&self.backend);
        let health = Arc::downgrade(&self.health);
        let timeout = self.timeout;
        tokio::spawn(async move {
            loop {
                let (Some(backend), Some(health)) = (backend.upgrade(), health.upgrade()) else {
                    return;
                };
                check(&*backend, &health, timeout).await;
                drop((backend, health));
                tokio::time::sleep(interval).await;
            }
        });
    }

    /// Replaces the keys (as the guest names them) a component may delete.
    pub fn with_allowed_keys(mut self, allowed_keys: Regex) -> Self {
        self.allowed_keys = allowed_keys;
        self
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The full key a guest-side key becomes.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Deletes `key` after prefixing it, within the deadline, if the key is
    /// one a component may delete and a backend is configured.
    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        if !self.configured {
            tracing::warn!("refused a cache delete: no cache backend is configured");
            return Err(CacheError::NotConfigured);
        }
        if !self.allowed_keys.is_match(key) {
            // The key is the component's choice: not logged, it could hold anything.
            tracing::warn!("refused a cache delete outside --allowed-cache-keys");
            return Err(CacheError::Forbidden);
        }
        let key = self.full_key(key);
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, self.backend.delete(&key)).await {
            Ok(result) => result,
            Err(_) => {
                self.backend.timed_out(started);
                Err(CacheError::Timeout(self.timeout))
            }
        };
        if let Err(err) = &result {
            tracing::warn!(backend = self.backend.name(), error = %err, "cache delete failed");
        }
        self.health.deleted(result.is_ok());
        result
    }
}

/// One check of `backend` within `timeout`, noted in `health`.
async fn check(backend: &dyn CacheBackend, health: &CacheHealth, timeout: Duration) {
    let started = Instant::now();
    let outcome = match tokio::time::timeout(timeout, backend.ping()).await {
        Ok(outcome) => outcome,
        Err(_) => {
            backend.timed_out(started);
            Err(CacheError::Timeout(timeout))
        }
    };
    let backend = backend.name();
    let error = outcome.as_ref().err().map(ToString::to_string);
    match health.checked(outcome.map_err(|err| err.to_string())) {
        Change::Quiet => {
            if let Some(error) = error {
                tracing::debug!(backend, %error, "cache check failed");
            }
        }
        Change::WentDown => tracing::warn!(
            backend,
            error = error.as_deref().unwrap_or_default(),
            "cache backend is down: deletes fail (503) and /readyz answers 503 until it answers"
        ),
        Change::StillDown(down_for) => tracing::warn!(
            backend,
            error = error.as_deref().unwrap_or_default(),
            down_for_s = down_for.as_secs(),
            "cache backend is still down"
        ),
        Change::CameBack(down_for) => tracing::info!(
            backend,
            down_for_ms = down_for.as_millis() as u64,
            "cache backend answers again"
        ),
    }
}

impl From<CacheError> for wit::CacheError {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Timeout(_) => wit::CacheError::Timeout,
            // The WIT contract has no "forbidden" for the cache; the guest
            // fails closed on "unavailable" all the same (503).
            CacheError::Unavailable(_) | CacheError::Forbidden | CacheError::NotConfigured => {
                wit::CacheError::Unavailable
            }
        }
    }
}

#[cfg(feature = "native-policy")]
impl From<CacheError> for keybust_guest::policy::CacheError {
    fn from(err: CacheError) -> Self {
        use keybust_guest::policy::CacheError as Policy;
        match err {
            CacheError::Timeout(_) => Policy::Timeout,
            CacheError::Unavailable(_) | CacheError::Forbidden | CacheError::NotConfigured => {
                Policy::Unavailable
            }
        }
    }
}
