//! Whether the cache backend answers, as readiness reports it: the last
//! background check (a `PING`, or Upstash's `ping`) and the deletes since.
//!
//! A backend that hangs rather than refuses makes every delete wait out
//! its deadline; an orchestrator should stop sending traffic before that.
//! The check runs every few seconds in the background
//! ([`super::Cache::watch_health`]); a run of failed deletes counts too,
//! so readiness can turn before the next check.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Failed deletes in a row that make the cache count as down.
pub const FAILED_DELETES_BEFORE_DOWN: u32 = 3;

/// What the checks and the deletes found; see the module docs.
#[derive(Debug, Default)]
pub struct CacheHealth {
    /// The last background check's failure, if it failed. A `std` mutex:
    /// held for a copy or a replace, never across an `.await`.
    last_check: Mutex<Option<String>>,
    failed_deletes: AtomicU32,
}

impl CacheHealth {
    /// Notes a background check's outcome.
    pub fn checked(&self, outcome: Result<(), String>) {
        if outcome.is_ok() {
            self.failed_deletes.store(0, Ordering::Relaxed);
        }
        *self
            .last_check
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = outcome.err();
    }

    /// Notes a delete's outcome.
    pub fn deleted(&self, ok: bool) {
        if ok {
            self.failed_deletes.store(0, Ordering::Relaxed);
        } else {
            self.failed_deletes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Why the cache counts as down, if it does.
    pub fn problem(&self) -> Option<String> {
        let last_check = self
            .last_check
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        if let Some(reason) = last_check {
            return Some(format!("the cache backend failed its last check: {reason}"));
        }
        let failed = self.failed_deletes.load(Ordering::Relaxed);
        (failed >= FAILED_DELETES_BEFORE_DOWN)
            .then(|| format!("the last {failed} cache deletes failed"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_and_deletes_decide() {
        let health = CacheHealth::default();
        assert_eq!(health.problem(), None);
        health.checked(Err("timed out".into()));
        assert!(health.problem().unwrap().contains("timed out"));
        health.checked(Ok(()));
        assert_eq!(health.problem(), None);
        for _ in 0..FAILED_DELETES_BEFORE_DOWN {
            health.deleted(false);
        }
        assert!(health.problem().unwrap().contains("deletes failed"));
        health.deleted(true);
        assert_eq!(health.problem(), None);
    }
}
