//! Whether a candidate did worse than the serving version over one step.
//!
//! Both versions run in the same process, at the same time, on the same
//! backends, so whatever slows or fails the machine (another process on a
//! 2-core box, a slow Redis, a Convex outage) falls on both in proportion
//! to their weights: the candidate is judged against the serving version
//! over the same window, never against a fixed number. What is left is
//! sampling noise, which the margins absorb:
//!
//! - **Failures.** Worse when its failure rate (5xx, traps, timeouts) is
//!   above the serving version's by more than the failure margin (1
//!   point by default), and it failed at least [`MIN_FAILURES`] times: on
//!   an instance that sees a few requests a minute, one unlucky timeout
//!   is 20 % of five requests, and should not roll anything back.
//! - **Latency.** Worse when its p99 is above the serving version's by
//!   more than the latency margin (10 ms by default) or half the serving
//!   p99, whichever is larger. The absolute part covers a scheduler stall
//!   of a few milliseconds landing on one of a small sample's slowest
//!   requests; the relative part covers a loaded machine, where every
//!   p99 is itself tens of milliseconds and moves by more than 10 ms
//!   from one window to the next. Judged only once both versions served
//!   `--rollout-min-requests` in the step: the p99 of 20 requests is their
//!   maximum, which one stall decides. With fewer, the log says the
//!   latency was not compared.

use super::tally::Summary;
use std::time::Duration;

/// The failures below which no failure rate rolls a candidate back.
pub const MIN_FAILURES: u64 = 3;

/// How much worse than the serving version a candidate may do
/// (`--rollout-*-margin`, `--rollout-min-requests`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Margins {
    /// Failure-rate points above the serving version's (0.01: one point).
    pub failure_rate: f64,
    /// Milliseconds of p99 above the serving version's (at least; half
    /// the serving p99 when that is more).
    pub latency: Duration,
    /// Requests each version must have served in the step before their
    /// latencies are compared.
    pub min_requests: u64,
}

impl Default for Margins {
    fn default() -> Self {
        Margins {
            failure_rate: 0.01,
            latency: Duration::from_millis(10),
            min_requests: 100,
        }
    }
}

/// What a step showed.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The candidate did no worse; why, for the log.
    Fine(String),
    /// It did worse; how, for the log and the record of refusals.
    Worse(String),
}

/// Compares the candidate's step with the serving version's.
pub fn judge(serving: &Summary, candidate: &Summary, margins: &Margins) -> Verdict {
    let (serving_rate, candidate_rate) = (serving.failure_rate(), candidate.failure_rate());
    if candidate.failures >= MIN_FAILURES && candidate_rate > serving_rate + margins.failure_rate {
        return Verdict::Worse(format!(
            "{} of its {} requests failed ({:.1} %: {} 5xx, {} traps, {} timeouts) against {:.1} % of the serving version's {}, more than {:.1} points worse",
            candidate.failures,
            candidate.requests,
            candidate_rate * 100.0,
            candidate.server_errors,
            candidate.traps,
            candidate.timeouts,
            serving_rate * 100.0,
            serving.requests,
            margins.failure_rate * 100.0,
        ));
    }
    let counts = format!(
        "{} requests, {} failed, against the serving version's {}, {} failed",
        candidate.requests, candidate.failures, serving.requests, serving.failures
    );
    let enough =
        candidate.requests >= margins.min_requests && serving.requests >= margins.min_requests;
    let (Some(serving_p99), Some(candidate_p99), true) = (serving.p99_ms, candidate.p99_ms, enough)
    else {
        return Verdict::Fine(format!(
            "{counts}; latency not compared, fewer than {} requests each",
            margins.min_requests
        ));
    };
    let margin = (margins.latency.as_secs_f64() * 1000.0).max(serving_p99 / 2.0);
    if candidate_p99 > serving_p99 + margin {
        return Verdict::Worse(format!(
            "its p99 was {candidate_p99:.1} ms against the serving version's {serving_p99:.1} ms, more than {margin:.1} ms slower ({counts})"
        ));
    }
    Verdict::Fine(format!(
        "{counts}; p99 {candidate_p99:.1} ms against {serving_p99:.1} ms"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(requests: u64, failures: u64, p99_ms: f64) -> Summary {
        Summary {
            requests,
            failures,
            server_errors: failures,
            traps: 0,
            timeouts: 0,
            p99_ms: Some(p99_ms),
        }
    }

    fn worse(serving: Summary, candidate: Summary) -> bool {
        matches!(
            judge(&serving, &candidate, &Margins::default()),
            Verdict::Worse(_)
        )
    }

    #[test]
    fn twenty_ms_slower_is_worse_on_an_idle_or_a_busy_machine() {
        assert!(worse(summary(2000, 0, 4.0), summary(200, 0, 24.0)));
        assert!(worse(summary(2000, 0, 30.0), summary(200, 0, 50.0)));
    }

    #[test]
    fn noise_is_not_worse() {
        // A stall on one of a small sample's slowest requests.
        assert!(!worse(summary(2000, 0, 4.0), summary(100, 0, 13.0)));
        // A loaded machine: p99s of tens of ms, 40 % apart.
        assert!(!worse(summary(2000, 0, 30.0), summary(150, 0, 42.0)));
        // Too few requests to judge a p99 at all.
        assert!(!worse(summary(2000, 0, 4.0), summary(20, 0, 90.0)));
        // Two unlucky failures, or as many as the serving version's share.
        assert!(!worse(summary(2000, 0, 4.0), summary(20, 2, 4.0)));
        assert!(!worse(summary(2000, 100, 4.0), summary(200, 11, 4.0)));
    }

    #[test]
    fn failing_more_than_the_serving_version_is_worse() {
        assert!(worse(summary(2000, 0, 4.0), summary(100, 3, 4.0)));
        let Verdict::Worse(why) = judge(
            &summary(2000, 20, 4.0),
            &summary(100, 10, 4.0),
            &Margins::default(),
        ) else {
            panic!("10 % against 1 % is worse");
        };
        assert!(why.contains("10 of its 100 requests failed"), "{why}");
    }
}
