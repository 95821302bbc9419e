//! Every bound keybust puts on guests, clients and connections, as one value.
//!
//! The component is code that gets swapped at runtime, and clients are
//! strangers: a bad build or a hostile client must cost a bounded amount of
//! memory, CPU and time, and never take the host down.

use std::time::Duration;

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
    /// How long a client may take to send its request head.
    pub header_read_timeout: Duration,
    /// The largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// The most memory one `wasi:http` fields resource may take.
    pub max_field_bytes: usize,
}

/// The request body bound (SPEC §1 row 15). The guest answers 413 past it
/// (`guest/src/policy.rs`); the host passes it at most one byte more, so
/// nothing past the bound is ever buffered.
pub const MAX_BODY_BYTES: usize = 64 << 10;

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
        }
    }
}

impl Limits {
    /// Epoch ticks of guest execution per request.
    pub fn guest_ticks(&self) -> u64 {
        (self.guest_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}
