//! Redis over RESP: one multiplexed connection, reconnected on failure.

use super::{BoxFuture, CacheBackend, CacheError};
use crate::deadlines::Deadlines;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A Redis server reached through redis-rs's `ConnectionManager`.
pub struct RedisCache {
    connection: ConnectionManager,
}

impl RedisCache {
    /// Prepares the connection; it is opened on first use, so a Redis that
    /// is down at start does not stop keybust from starting.
    pub fn new(url: &str, deadlines: &Deadlines) -> Result<Self, CacheError> {
        crate::capabilities::use_aws_lc_for_tls();
        let client = redis::Client::open(url).map_err(|err| {
            CacheError::Unavailable(format!("invalid REDIS_URL: {:?}", err.kind()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadlines.cache))
            .set_response_timeout(Some(deadlines.cache))
            .set_number_of_retries(1)
            .set_max_delay(deadlines.redis_reconnect_max_delay);
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| CacheError::Unavailable(err.to_string()))?;
        Ok(RedisCache { connection })
    }
}

impl CacheBackend for RedisCache {
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        let mut connection = self.connection.clone();
        Box::pin(async move {
            redis::cmd("DEL")
                .arg(key)
                .query_async::<i64>(&mut connection)
                .await
                .map(drop)
                .map_err(|err| CacheError::Unavailable(format!("redis: {err}")))
        })
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}
