//! What one version did with the requests it served during one canary
//! step: how many, how many failed and how, and how long they took to
//! their answer's head.
//!
//! Counted on every request a canary step sends either way, so it takes
//! no lock: counters and a latency histogram of atomics. The histogram's
//! buckets are log-linear (eight per power of two, as HdrHistogram's with
//! three significant bits): a percentile read from it is at most 12.5 %
//! above the true one, far inside the latency margin it is judged with,
//! and it holds any number of requests in 4 KiB.

pub use crate::metrics::Served;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bits of each latency below its leading one that pick its bucket.
const SUB_BITS: u32 = 3;
/// Enough buckets for any `u64` of microseconds.
const BUCKETS: usize = 64 << SUB_BITS;

/// One version's counts over one step; see the module docs.
pub struct Tally {
    requests: AtomicU64,
    server_errors: AtomicU64,
    traps: AtomicU64,
    timeouts: AtomicU64,
    latency: Box<[AtomicU64]>,
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            requests: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            traps: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            latency: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Tally {
    /// Counts one request that ended as `served`, `took` after it began.
    pub fn count(&self, served: Served, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let failures = match served {
            Served::Answered => None,
            Served::ServerError => Some(&self.server_errors),
            Served::Trap => Some(&self.traps),
            Served::Timeout => Some(&self.timeouts),
        };
        if let Some(failures) = failures {
            failures.fetch_add(1, Ordering::Relaxed);
        }
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency[bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn summary(&self) -> Summary {
        let counts: Vec<u64> = self
            .latency
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect();
        let server_errors = self.server_errors.load(Ordering::Relaxed);
        let traps = self.traps.load(Ordering::Relaxed);
        let timeouts = self.timeouts.load(Ordering::Relaxed);
        Summary {
            requests: self.requests.load(Ordering::Relaxed),
            failures: server_errors + traps + timeouts,
            server_errors,
            traps,
            timeouts,
            p99_ms: quantile(&counts, 0.99).map(|micros| micros as f64 / 1000.0),
        }
    }
}

/// A [`Tally`] read at one moment, as `GET /admin/rollout` shows it and
/// the canary's judge compares it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Requests served.
    pub requests: u64,
    /// Of them, 5xx answers, traps and timeouts together.
    pub failures: u64,
    /// 5xx answers the component gave.
    pub server_errors: u64,
    /// Traps.
    pub traps: u64,
    /// Timeouts.
    pub timeouts: u64,
    /// The 99th percentile of the time to the answer's head, in
    /// milliseconds (an upper bound, within 12.5 %); none before the first
    /// request.
    pub p99_ms: Option<f64>,
}

impl Summary {
    /// The share of requests that failed; 0 with none.
    pub fn failure_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.failures as f64 / self.requests as f64
        }
    }
}

/// The bucket `micros` falls in: values below 8 have one each; above,
/// eight buckets share each power of two.
fn bucket(micros: u64) -> usize {
    if micros < 1 << SUB_BITS {
        return micros as usize;
    }
    let leading = 63 - micros.leading_zeros();
    let shift = leading - SUB_BITS;
    let fraction = (micros >> shift) & ((1 << SUB_BITS) - 1);
    (((shift + 1) << SUB_BITS) as u64 + fraction) as usize
}

/// The largest value bucket `index` holds.
fn upper_bound(index: usize) -> u64 {
    let per_power = 1usize << SUB_BITS;
    if index < per_power {
        return index as u64;
    }
    let shift = (index / per_power - 1) as u32;
    let first_above = u128::from((per_power + index % per_power + 1) as u64) << shift;
    u64::try_from(first_above - 1).unwrap_or(u64::MAX)
}

/// The `q` quantile of the values counted in `counts` (by bucket), as its
/// bucket's upper bound; none when nothing was counted.
fn quantile(counts: &[u64], q: f64) -> Option<u64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(upper_bound(index));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_lies_in_its_bucket_within_an_eighth() {
        for micros in (0..5000).chain([65_535, 1 << 20, 20_000_000, u64::MAX / 3, u64::MAX]) {
            let index = bucket(micros);
            assert!(index < BUCKETS, "{micros}");
            let upper = upper_bound(index);
            assert!(upper >= micros, "{micros} above its bucket's {upper}");
            assert!(
                (upper - micros) as f64 <= micros as f64 / 8.0 + 1.0,
                "{micros} in a bucket up to {upper}"
            );
            if index > 0 {
                assert!(upper_bound(index - 1) < micros, "{micros}");
            }
        }
    }

    #[test]
    fn the_99th_percentile_is_the_hundredth_slowest_of_ten_thousand() {
        let tally = Tally::default();
        for i in 0..9_900 {
            tally.count(Served::Answered, Duration::from_micros(1_000 + i % 100));
        }
        for _ in 0..100 {
            tally.count(Served::Trap, Duration::from_millis(30));
        }
        let summary = tally.summary();
        assert_eq!(summary.requests, 10_000);
        assert_eq!((summary.failures, summary.traps), (100, 100));
        let p99 = summary.p99_ms.unwrap();
        assert!((1.099..=1.25).contains(&p99), "{p99}");
        tally.count(Served::Timeout, Duration::from_millis(30));
        assert!(tally.summary().p99_ms.unwrap() >= 30.0);
        assert_eq!(Tally::default().summary().p99_ms, None);
    }
}
