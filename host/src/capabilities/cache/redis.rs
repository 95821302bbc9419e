//! Redis over RESP: one multiplexed connection, replaced when it fails or
//! goes silent.
//!
//! redis-rs's `ConnectionManager` reconnects when a connection breaks, but
//! not when it merely stops answering: a peer that hangs, a failover that
//! blackholes the old address, or a NAT that forgets the flow leave a
//! connection that is open and silent, and every command on it times out
//! for as long as the process lives. So keybust keeps the deadline itself
//! ([`super::Cache`]) and, when a command runs out of it, opens a new
//! connection for the commands after it ([`RedisCache::timed_out`]). TCP
//! keepalive and `TCP_USER_TIMEOUT` let the kernel notice a dead peer on
//! idle and busy connections alike.

use super::{BoxFuture, CacheBackend, CacheError};
use crate::deadlines::Deadlines;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::io::tcp::{TcpSettings, socket2::TcpKeepalive};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Idle time before the kernel probes the connection, and between probes.
const KEEPALIVE: Duration = Duration::from_secs(5);

/// How long sent data may stay unacknowledged before the kernel gives the
/// connection up.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// Keepalive and `TCP_USER_TIMEOUT` for every connection to Redis, so the
/// kernel gives up on a peer that vanished.
pub(super) fn tcp_settings() -> TcpSettings {
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE)
        .with_interval(KEEPALIVE);
    let tcp = TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let tcp = tcp.set_user_timeout(TCP_USER_TIMEOUT);
    tcp
}

/// A Redis server reached through redis-rs's `ConnectionManager`.
pub struct RedisCache {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// The connection every command goes through, and when it was opened.
    /// A `std` mutex held only to clone or replace the handle (a cheap
    /// reference count), never across an `.await`.
    current: Mutex<(ConnectionManager, Instant)>,
}

impl RedisCache {
    /// Prepares the connection; it is opened on first use, so a Redis that
    /// is down at start does not stop keybust from starting.
    pub fn new(url: &str, deadlines: &Deadlines) -> Result<Self, CacheError> {
        crate::capabilities::outbound::use_aws_lc_for_tls();
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|err| {
            CacheError::Unavailable(format!("invalid REDIS_URL: {:?}", err.kind()))
        })?;
        let client = redis::Client::open(info.set_tcp_settings(tcp_settings()))
            .map_err(|err| CacheError::Unavailable(format!("redis: {:?}", err.kind())))?;
        // No response timeout of redis-rs's own: it would retry on the same
        // silent connection. The deadline is the cache's (`timed_out`).
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(deadlines.cache))
            .set_response_timeout(None)
            .set_number_of_retries(1)
            .set_max_delay(deadlines.redis_reconnect_max_delay);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|err| CacheError::Unavailable(err.to_string()))?;
        Ok(RedisCache {
            client,
            config,
            current: Mutex::new((manager, Instant::now())),
        })
    }

    fn connection(&self) -> ConnectionManager {
        self.current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .0
            .clone()
    }
}

/// `DEL key` on any Redis connection (one server's, or a cluster's); the
/// error names `backend`.
pub(super) async fn del(
    connection: &mut impl redis::aio::ConnectionLike,
    key: &str,
    backend: &str,
) -> Result<(), CacheError> {
    redis::cmd("DEL")
        .arg(key)
        .query_async::<i64>(connection)
        .await
        .map(drop)
        .map_err(|err| CacheError::Unavailable(format!("{backend}: {err}")))
}

/// `PING` on any Redis connection; the error names `backend`.
pub(super) async fn ping(
    connection: &mut impl redis::aio::ConnectionLike,
    backend: &str,
) -> Result<(), CacheError> {
    redis::cmd("PING")
        .query_async::<String>(connection)
        .await
        .map(drop)
        .map_err(|err| CacheError::Unavailable(format!("{backend}: {err}")))
}

impl CacheBackend for RedisCache {
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        let mut connection = self.connection();
        Box::pin(async move { del(&mut connection, key, "redis").await })
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        let mut connection = self.connection();
        Box::pin(async move { ping(&mut connection, "redis").await })
    }

    /// Replaces the connection a command started on at `started` that ran
    /// out of its deadline. Commands that time out together on one silent
    /// connection replace it once: a connection opened after `started` is
    /// kept.
    fn timed_out(&self, started: Instant) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.1 > started {
            return;
        }
        match ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone()) {
            Ok(manager) => {
                // Debug: while Redis stays silent this is every check; the
                // health change says it once (`health.rs`).
                tracing::debug!(
                    "redis did not answer within the deadline; opening a new connection"
                );
                *current = (manager, Instant::now());
            }
            Err(err) => {
                tracing::warn!(error = %err, "redis did not answer, and no new connection can be prepared");
            }
        }
    }
}
