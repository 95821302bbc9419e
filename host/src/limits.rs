//! Every bound keybust puts on guests, clients and connections, as one value.
//!
//! The component is code that gets swapped at runtime, and clients are
//! strangers: a bad build or a hostile client must cost a bounded amount of
//! memory, CPU and time, and never take the host down.

use crate::config::parse_duration;
use std::time::Duration;

/// Instances that may be alive at once; the pooling allocator reserves this
/// many slots, and admitted requests stay below it.
pub const MAX_INSTANCES: u32 = 1000;

/// The largest component keybust takes, from a file, an upload or a
/// registry: a bound on what a swap may make it read and compile.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// How often the engine's epoch advances; the granularity of the guest's CPU budget.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The bounds, with their defaults in [`Limits::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Linear memory one instance may grow to; past it the guest traps.
    pub max_instance_memory: usize,
    /// Time the guest may spend executing for one request (time spent
    /// waiting on host calls does not count).
    pub guest_timeout: Duration,
    /// Wall-clock bound on one request, host calls included.
    pub request_timeout: Duration,
    /// Requests handled at once; more wait briefly, then get 503.
    pub max_concurrent_requests: usize,
    /// How long a request waits for a free slot before it gets 503.
    pub queue_timeout: Duration,
    /// Open client connections; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long a client may take to send its request head, and how long
    /// a connection may stay open with no request in flight (before its
    /// first request: TLS handshake included).
    pub header_read_timeout: Duration,
    /// The largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// The most memory one `wasi:http` fields resource may take.
    pub max_field_bytes: usize,
    /// How long the whole request body may take to arrive, from the
    /// request head on; past it, 408.
    pub body_timeout: Duration,
    /// Open connections from one client address; `None`: no bound beyond
    /// `max_connections` (behind a load balancer every client is the
    /// balancer).
    pub max_connections_per_ip: Option<usize>,
    /// Requests one HTTP/2 connection may have open at once; each is
    /// admitted (`max_concurrent_requests`) like any request.
    pub max_concurrent_streams: u32,
    /// Requests one instance serves, one after another, before it is
    /// dropped; 1 (the default) is a fresh instance per request.
    pub instance_reuse: usize,
    /// How long a reused instance waits for its next request before it is dropped.
    pub instance_idle_timeout: Duration,
}

/// File descriptors kept back from client connections: listeners, backend
/// connections, component files, the artifact cache.
pub const RESERVED_FDS: u64 = 256;

/// Connections the admin listener, and the metrics listener, each keep
/// open at once: a few operators, scrapers and probes. Each has a cap of
/// its own, so that the public listener at its cap leaves the kubelet's
/// probe a connection, and a small one, so that silent connections there
/// cost few descriptors. Both are counted in the descriptor budget beside
/// `max_connections` ([`Limits::fit_to_fd_limit`]).
pub const PLANE_MAX_CONNECTIONS: usize = 64;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_instance_memory: 16 << 20,
            guest_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(15),
            max_concurrent_requests: 512,
            queue_timeout: Duration::from_millis(100),
            max_connections: 4096,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 << 10,
            max_field_bytes: 64 << 10,
            body_timeout: Duration::from_secs(5),
            max_connections_per_ip: None,
            max_concurrent_streams: 128,
            instance_reuse: 1,
            instance_idle_timeout: Duration::from_secs(1),
        }
    }
}

impl Limits {
    /// Raises this process's soft limit on open files to its hard limit,
    /// and keeps `max_connections` below it by [`RESERVED_FDS`] and the two
    /// admin planes' caps ([`PLANE_MAX_CONNECTIONS`]), with a warning: a connection cap above the file limit makes the process
    /// run out of descriptors first, and then every outbound connect to a
    /// backend fails (503) while the listener keeps accepting.
    pub fn fit_to_fd_limit(&mut self) {
        let soft = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(soft) => soft,
            Err(err) => {
                tracing::warn!(error = %err, "cannot read or raise the open-file limit");
                return;
            }
        };
        let reserved = RESERVED_FDS + 2 * PLANE_MAX_CONNECTIONS as u64;
        let room = soft.saturating_sub(reserved).max(1);
        if self.max_connections as u64 > room {
            tracing::warn!(
                max_connections = self.max_connections,
                open_file_limit = soft,
                clamped_to = room,
                "--max-connections is above what the open-file limit allows; clamped"
            );
            self.max_connections = room as usize;
        }
    }

    /// The bounds an admin plane's listener serves with: the public
    /// listener's timeouts and head bounds, under its own small cap.
    pub fn for_plane(&self) -> Limits {
        Limits {
            max_connections: PLANE_MAX_CONNECTIONS,
            max_connections_per_ip: None,
            ..self.clone()
        }
    }

    /// Epoch ticks of guest execution per request.
    pub fn guest_ticks(&self) -> u64 {
        (self.guest_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// The bounds, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Linear memory one guest instance may use, in bytes; past it the guest traps (500).
    #[arg(long, env = "KEYBUST_MAX_INSTANCE_MEMORY", default_value_t = Limits::default().max_instance_memory)]
    pub max_instance_memory: usize,

    /// Guest execution time per request (host calls excluded); past it, 504 (e.g. 1s, 250ms).
    #[arg(long, env = "KEYBUST_GUEST_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub guest_timeout: Duration,

    /// Wall-clock bound on one request, host calls included; past it, 504.
    #[arg(long, env = "KEYBUST_REQUEST_TIMEOUT", default_value = "15s", value_parser = parse_duration)]
    pub request_timeout: Duration,

    /// Requests handled at once; more wait up to --queue-timeout, then get 503 + Retry-After.
    #[arg(long, env = "KEYBUST_MAX_CONCURRENT_REQUESTS", default_value_t = Limits::default().max_concurrent_requests)]
    pub max_concurrent_requests: usize,

    /// How long a request waits for a free slot.
    #[arg(long, env = "KEYBUST_QUEUE_TIMEOUT", default_value = "100ms", value_parser = parse_duration)]
    pub queue_timeout: Duration,

    /// Open client connections; further ones wait in the listen backlog.
    #[arg(long, env = "KEYBUST_MAX_CONNECTIONS", default_value_t = Limits::default().max_connections)]
    pub max_connections: usize,

    /// How long a connection may go without a request in flight: to send its first request head (TLS handshake included), and between requests; HTTP/2 then gets a GOAWAY.
    #[arg(long, env = "KEYBUST_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,

    /// Time the whole request body may take to arrive, from the request head on; past it, 408.
    #[arg(long, env = "KEYBUST_BODY_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub body_timeout: Duration,

    /// Open connections from one client address; further ones are closed at
    /// once [default: no bound; behind a load balancer every client is the balancer].
    #[arg(long, env = "KEYBUST_MAX_CONNECTIONS_PER_IP", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_ip: Option<u32>,

    /// Largest request head accepted, in bytes (at least 8192); larger gets 431.
    #[arg(long, env = "KEYBUST_MAX_HEADER_BYTES", default_value_t = Limits::default().max_header_bytes)]
    pub max_header_bytes: usize,

    /// Requests one HTTP/2 connection may have open at once (streams past
    /// it are refused by the protocol); each is admitted like any request.
    #[arg(long, env = "KEYBUST_MAX_CONCURRENT_STREAMS", default_value_t = Limits::default().max_concurrent_streams, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// Requests one guest instance serves, one after another, before it is
    /// dropped [default: 1, a fresh instance per request]. Above 1, a
    /// request may see what earlier ones left in the instance's memory;
    /// the memory cap, CPU budget and timeouts still hold per request, and
    /// a trap drops the instance.
    #[arg(long, env = "KEYBUST_INSTANCE_REUSE", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub instance_reuse: u32,

    /// How long a reused instance (--instance-reuse above 1) is kept idle
    /// for its next request before it is dropped.
    #[arg(long, env = "KEYBUST_INSTANCE_IDLE_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub instance_idle_timeout: Duration,
}

/// A bound that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// `--max-concurrent-requests` is 0, or not below the instance pool.
    #[error("--max-concurrent-requests must be between 1 and {}", MAX_INSTANCES - 1)]
    Concurrency,
    /// `--max-connections` is 0.
    #[error("--max-connections must be at least 1")]
    Connections,
}

impl LimitArgs {
    /// The bounds these settings ask for. Admitted requests must stay below
    /// the instance pool, so an admitted request always finds a slot.
    pub fn limits(&self) -> Result<Limits, LimitError> {
        if self.max_concurrent_requests == 0
            || self.max_concurrent_requests >= MAX_INSTANCES as usize
        {
            return Err(LimitError::Concurrency);
        }
        if self.max_connections == 0 {
            return Err(LimitError::Connections);
        }
        Ok(Limits {
            max_instance_memory: self.max_instance_memory,
            guest_timeout: self.guest_timeout,
            request_timeout: self.request_timeout,
            max_concurrent_requests: self.max_concurrent_requests,
            queue_timeout: self.queue_timeout,
            max_connections: self.max_connections,
            header_read_timeout: self.header_timeout,
            max_header_bytes: self.max_header_bytes,
            body_timeout: self.body_timeout,
            max_connections_per_ip: self.max_connections_per_ip.map(|n| n as usize),
            max_concurrent_streams: self.max_concurrent_streams,
            instance_reuse: self.instance_reuse as usize,
            instance_idle_timeout: self.instance_idle_timeout,
            ..Limits::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_lookup;

    #[test]
    fn flags_default_to_the_documented_values() {
        let args = parse_lookup::<LimitArgs>(|_| None).unwrap();
        assert_eq!(args.limits().unwrap(), Limits::default());
    }
}
