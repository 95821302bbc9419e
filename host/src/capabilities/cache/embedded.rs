//! An in-process store: the default when no cache service is configured.

use super::{BoxFuture, CacheBackend, CacheError};
use std::collections::HashMap;
use std::sync::Mutex;

/// Keys and values held in this process's memory.
#[derive(Debug, Default)]
pub struct EmbeddedCache {
    entries: Mutex<HashMap<String, Vec<u8>>>,
}

impl EmbeddedCache {
    /// Stores a value, as the gateway's validation path would.
    pub fn set(&self, key: impl Into<String>, value: impl Into<Vec<u8>>) {
        self.lock().insert(key.into(), value.into());
    }

    /// Whether `key` is present.
    pub fn contains(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave a HashMap half-written
        // in a way that matters here; keep serving.
        self.entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

impl CacheBackend for EmbeddedCache {
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        self.lock().remove(key);
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
