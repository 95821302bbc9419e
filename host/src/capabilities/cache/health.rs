//! Whether the cache backend answers, as readiness reports it: the last
//! background check (a `PING`, or Upstash's `ping`) and the deletes since.
//!
//! A backend that hangs rather than refuses makes every delete wait out
//! its deadline; an orchestrator should stop sending traffic before that.
//! The check runs every few seconds in the background
//! ([`super::Cache::watch_health`]); a run of failed deletes counts too,
//! so readiness can turn before the next check.
//!
//! The log hears of a backend that stays down once when it goes down, then
//! at most once per [`REMIND_EVERY`], and once when it answers again
//! ([`Change`]): a WARN per check was 1,800 lines an hour per instance at
//! the default interval, and hid every other line.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Failed deletes in a row that make the cache count as down.
pub const FAILED_DELETES_BEFORE_DOWN: u32 = 3;

/// How often a backend that stays down is logged again.
pub const REMIND_EVERY: Duration = Duration::from_secs(60);

/// What the checks and the deletes found; see the module docs.
#[derive(Debug, Default)]
pub struct CacheHealth {
    /// The checks' findings. A `std` mutex: held for a copy or a replace,
    /// never across an `.await`.
    checks: Mutex<Checks>,
    failed_deletes: AtomicU32,
}

#[derive(Debug, Default)]
struct Checks {
    /// The last check's failure, if it failed.
    last: Option<String>,
    /// Since when the checks have failed, and when the log last heard so.
    down: Option<(Instant, Instant)>,
}

/// What a check changed, for the log to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Up as before, or down and told recently.
    Quiet,
    /// The first failed check after an answer (or at start).
    WentDown,
    /// Still down, for this long; told at most once per [`REMIND_EVERY`].
    StillDown(Duration),
    /// Answers again, after being down this long.
    CameBack(Duration),
}

impl CacheHealth {
    /// Notes a background check's outcome, and says what it changed.
    pub fn checked(&self, outcome: Result<(), String>) -> Change {
        if outcome.is_ok() {
            self.failed_deletes.store(0, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut checks = self
            .checks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let change = match (&outcome, checks.down) {
            (Ok(()), None) => Change::Quiet,
            (Ok(()), Some((since, _))) => {
                checks.down = None;
                Change::CameBack(now - since)
            }
            (Err(_), None) => {
                checks.down = Some((now, now));
                Change::WentDown
            }
            (Err(_), Some((since, told))) if now - told >= REMIND_EVERY => {
                checks.down = Some((since, now));
                Change::StillDown(now - since)
            }
            (Err(_), Some(_)) => Change::Quiet,
        };
        checks.last = outcome.err();
        change
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
            .checks
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .last
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
        assert_eq!(health.checked(Ok(())), Change::Quiet);
        assert_eq!(health.checked(Err("timed out".into())), Change::WentDown);
        assert!(health.problem().unwrap().contains("timed out"));
        assert_eq!(health.checked(Err("refused".into())), Change::Quiet);
        assert!(health.problem().unwrap().contains("refused"));
        assert!(matches!(health.checked(Ok(())), Change::CameBack(_)));
        assert_eq!(health.problem(), None);
        assert_eq!(health.checked(Ok(())), Change::Quiet);
        for _ in 0..FAILED_DELETES_BEFORE_DOWN {
            health.deleted(false);
        }
        assert!(health.problem().unwrap().contains("deletes failed"));
        health.deleted(true);
        assert_eq!(health.problem(), None);
    }
}
