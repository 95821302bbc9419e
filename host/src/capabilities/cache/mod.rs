//! The `cache` capability: forgetting a key in the gateway's validation cache.
//!
//! Every backend sits behind [`CacheBackend`]; [`Cache`] adds what all of
//! them share: the deploy prefix and the deadline. Three backends ship:
//! Redis over RESP, the Upstash REST API, and an in-process store.

mod embedded;
mod redis;
mod settings;
mod upstash;

pub use self::embedded::EmbeddedCache;
pub use self::redis::RedisCache;
pub use self::settings::{CacheArgs, CacheBackendSettings, CacheSettings, deploy_prefix};
pub use self::upstash::UpstashCache;

use super::bindings::keybust::gateway::cache as wit;
use crate::deadlines::Deadlines;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

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
}

/// A store that holds the gateway's cached key validations.
pub trait CacheBackend: Send + Sync {
    /// Deletes one fully prefixed key; deleting a missing key succeeds.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>>;

    /// A short name for logs and readiness reports.
    fn name(&self) -> &'static str;
}

/// The cache the guest sees: a backend, the deploy prefix, and a deadline.
#[derive(Clone)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    prefix: String,
    timeout: Duration,
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
            CacheBackendSettings::Upstash { url, token } => {
                Arc::new(UpstashCache::new(url.clone(), token.clone(), http))
            }
            CacheBackendSettings::Embedded => Arc::new(EmbeddedCache::default()),
        };
        Ok(Self::new(backend, settings.prefix.clone(), deadlines.cache))
    }

    /// Wraps any backend.
    pub fn new(backend: Arc<dyn CacheBackend>, prefix: String, timeout: Duration) -> Self {
        Cache {
            backend,
            prefix,
            timeout,
        }
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The full key a guest-side key becomes.
    pub fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Deletes `key` after prefixing it, within the deadline.
    pub async fn delete(&self, key: &str) -> Result<(), CacheError> {
        let key = self.full_key(key);
        let result = match tokio::time::timeout(self.timeout, self.backend.delete(&key)).await {
            Ok(result) => result,
            Err(_) => Err(CacheError::Timeout(self.timeout)),
        };
        if let Err(err) = &result {
            tracing::warn!(backend = self.backend.name(), error = %err, "cache delete failed");
        }
        result
    }
}

impl From<CacheError> for wit::CacheError {
    fn from(err: CacheError) -> Self {
        match err {
            CacheError::Timeout(_) => wit::CacheError::Timeout,
            CacheError::Unavailable(_) => wit::CacheError::Unavailable,
        }
    }
}

#[cfg(feature = "native-policy")]
impl From<CacheError> for keybust_guest::policy::CacheError {
    fn from(err: CacheError) -> Self {
        use keybust_guest::policy::CacheError as Policy;
        match err {
            CacheError::Timeout(_) => Policy::Timeout,
            CacheError::Unavailable(_) => Policy::Unavailable,
        }
    }
}
