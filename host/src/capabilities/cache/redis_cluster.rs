//! Redis Cluster over RESP, through redis-rs's async cluster client: it
//! learns the slot map from the seed nodes, sends each key to the master
//! that holds its slot, and follows `MOVED`/`ASK` redirections while slots
//! migrate.
//!
//! A silent node is handled as for one Redis ([`super::RedisCache`]): the
//! cache's deadline bounds every command, and a command that runs out of
//! it replaces the whole cluster connection for the commands after it.

use super::redis::{del, ping, tcp_settings};
use super::{BoxFuture, CacheBackend, CacheError};
use crate::deadlines::Deadlines;
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use std::sync::Mutex;
use std::time::Instant;

/// A Redis Cluster, reached from its seed nodes.
pub struct RedisClusterCache {
    client: ClusterClient,
    /// The cluster connection every command goes through, and when it was
    /// made; none until the first command. A `std` mutex held only to clone
    /// or replace the handle, never across an `.await`.
    current: Mutex<Option<(ClusterConnection, Instant)>>,
}

impl RedisClusterCache {
    /// Prepares the client from the seed nodes' URLs; no connection is made
    /// until the first command, so a cluster that is down at start does not
    /// stop keybust from starting.
    pub fn new(nodes: &[&str], deadlines: &Deadlines) -> Result<Self, CacheError> {
        crate::capabilities::outbound::use_aws_lc_for_tls();
        let infos = nodes
            .iter()
            .map(|node| {
                redis::IntoConnectionInfo::into_connection_info(*node).map_err(|err| {
                    CacheError::Unavailable(format!(
                        "invalid REDIS_CLUSTER_NODES entry: {:?}",
                        err.kind()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // No response timeout of redis-rs's own: it would retry on the same
        // silent connection. The deadline is the cache's (`timed_out`).
        let client = ClusterClient::builder(infos)
            .connection_timeout(deadlines.cache)
            .tcp_settings(tcp_settings())
            .retries(1)
            .build()
            .map_err(|err| CacheError::Unavailable(format!("redis cluster: {:?}", err.kind())))?;
        Ok(RedisClusterCache {
            client,
            current: Mutex::new(None),
        })
    }

    /// The connection to send a command on; made on first use (it needs
    /// the async runtime), in the background: the command waits for it.
    fn connection(&self) -> ClusterConnection {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        current
            .get_or_insert_with(|| (self.connect(), Instant::now()))
            .0
            .clone()
    }

    fn connect(&self) -> ClusterConnection {
        self.client
            .get_pending_async_connection_with_config(ClusterConfig::new())
    }
}

impl CacheBackend for RedisClusterCache {
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), CacheError>> {
        let mut connection = self.connection();
        Box::pin(async move { del(&mut connection, key, "redis cluster").await })
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    /// A PING to a node the client picks; the cluster's slot coverage is
    /// the nodes' own business, and a key whose node is gone fails its
    /// delete (and, three in a row, readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), CacheError>> {
        let mut connection = self.connection();
        Box::pin(async move { ping(&mut connection, "redis cluster").await })
    }

    /// Replaces the connection a command started on at `started` that ran
    /// out of its deadline; commands that time out together replace it once.
    fn timed_out(&self, started: Instant) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if current.as_ref().is_some_and(|(_, made)| *made > started) {
            return;
        }
        // Debug: see `RedisCache::timed_out`.
        tracing::debug!("redis cluster did not answer within the deadline; reconnecting");
        *current = None;
    }
}
