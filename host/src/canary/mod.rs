//! The weighted canary: after the contract gate and the shadow stage, a
//! candidate serves real clients, a growing share of them step by step
//! (`--rollout-steps 5%,25%,100%`), and at the end of each step
//! (`--rollout-step-duration`) it is compared with the serving version
//! over the same step: its failures and its p99 ([`judge`]). Worse beyond
//! the margins, it is rolled back at once and recorded as refused, like a
//! gate refusal; after its last step, it serves every request.
//!
//! The gate and the shadow check what a version *does*, with no client
//! exposed; what only real answers show (a version that is slower, or
//! fails against the real backends) needs real traffic, and the steps
//! bound how much of it a bad version gets. Off by default (no steps): on
//! an instance that sees a few revocations a minute a step sees too few
//! requests to judge, and the gate and the shadow stage already run.
//!
//! Each request is counted for the version that served it
//! ([`tally::Tally`]) by the access record, when it is over; which version
//! serves a request is picked like the shadow's share, spread evenly.

pub mod judge;
pub mod step;
pub mod tally;

use crate::config::parse_duration;
use crate::shadow::parse_share;
use judge::Margins;
use std::time::Duration;

/// How the weighted canary runs (`--rollout-*`).
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySettings {
    /// The candidate's share of requests at each step, rising; empty: no
    /// canary. A last step of 100 % is the end, not a step: the candidate
    /// then serves.
    pub steps: Vec<f64>,
    /// How long each step lasts before it is judged.
    pub step_duration: Duration,
    /// How much worse than the serving version the candidate may do.
    pub margins: Margins,
}

impl Default for CanarySettings {
    /// No steps: a library user (or `keybust serve`) asks for them.
    fn default() -> Self {
        CanarySettings {
            steps: Vec::new(),
            step_duration: Duration::from_secs(60),
            margins: Margins::default(),
        }
    }
}

impl CanarySettings {
    /// Whether a candidate goes through weighted steps at all.
    pub fn enabled(&self) -> bool {
        !self.steps.is_empty()
    }
}

/// The canary's settings, as flags with their environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct CanaryArgs {
    /// The candidate's share of client requests at each step, rising, e.g.
    /// 5%,25%,100% (reaching 100% ends the canary: the candidate serves).
    /// `none`: no weighted steps.
    #[arg(long, env = "KEYBUST_ROLLOUT_STEPS", default_value = "none", value_parser = parse_steps)]
    pub rollout_steps: Steps,

    /// How long each step lasts before the candidate is compared with the
    /// serving version over it.
    #[arg(long, env = "KEYBUST_ROLLOUT_STEP_DURATION", default_value = "60s", value_parser = parse_step_duration)]
    pub rollout_step_duration: Duration,

    /// Failure-rate points (5xx, traps, timeouts) the candidate may have
    /// above the serving version's in a step, e.g. 1%; worse, and with at
    /// least 3 failures, it is rolled back.
    #[arg(long, env = "KEYBUST_ROLLOUT_FAILURE_MARGIN", default_value = "1%", value_parser = parse_margin)]
    pub rollout_failure_margin: f64,

    /// How much slower the candidate's p99 may be than the serving
    /// version's in a step (or half the serving p99, when that is more);
    /// slower, it is rolled back.
    #[arg(long, env = "KEYBUST_ROLLOUT_LATENCY_MARGIN", default_value = "10ms", value_parser = parse_duration)]
    pub rollout_latency_margin: Duration,

    /// Requests each version must serve in a step before their p99s are
    /// compared: the p99 of a few requests is their slowest one.
    #[arg(long, env = "KEYBUST_ROLLOUT_MIN_REQUESTS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub rollout_min_requests: u64,
}

impl CanaryArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> CanarySettings {
        CanarySettings {
            steps: self.rollout_steps.0.clone(),
            step_duration: self.rollout_step_duration,
            margins: Margins {
                failure_rate: self.rollout_failure_margin,
                latency: self.rollout_latency_margin,
                min_requests: self.rollout_min_requests,
            },
        }
    }
}

/// The steps `--rollout-steps` names, without a final 100 %.
#[derive(Debug, Clone, PartialEq)]
pub struct Steps(pub Vec<f64>);

/// `5%,25%,100%` (or fractions), rising; `none` for no steps. A step of
/// 100 % may only come last, where it ends the canary.
pub fn parse_steps(value: &str) -> Result<Steps, String> {
    let value = value.trim();
    if value.is_empty() || value.eq_ignore_ascii_case("none") {
        return Ok(Steps(Vec::new()));
    }
    let mut steps = Vec::new();
    let mut ended = false;
    for part in value.split(',') {
        let share = parse_share(part)?;
        if ended {
            return Err(format!(
                "100% ends the steps: nothing may follow it in {value:?}"
            ));
        }
        if steps.last().is_some_and(|last| *last >= share) {
            return Err(format!(
                "steps rise: {part} after a larger one in {value:?}"
            ));
        }
        if share >= 1.0 {
            ended = true;
        } else {
            steps.push(share);
        }
    }
    Ok(Steps(steps))
}

/// A step long enough to hold requests to judge: at least one second.
fn parse_step_duration(value: &str) -> Result<Duration, String> {
    let duration = parse_duration(value).map_err(|err| err.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err(format!("a step lasts at least 1s, not {value}"));
    }
    Ok(duration)
}

/// A failure margin: a share from 0% to 100%.
fn parse_margin(value: &str) -> Result<f64, String> {
    if value.trim().trim_end_matches('%').trim().parse::<f64>() == Ok(0.0) {
        return Ok(0.0);
    }
    parse_share(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_rise_and_end_at_100_percent() {
        assert_eq!(parse_steps("5%,25%,100%"), Ok(Steps(vec![0.05, 0.25])));
        assert_eq!(parse_steps("10%, 50%"), Ok(Steps(vec![0.1, 0.5])));
        assert_eq!(parse_steps("none"), Ok(Steps(Vec::new())));
        assert!(parse_steps("25%,5%").is_err());
        assert!(parse_steps("5%,5%").is_err());
        assert!(parse_steps("100%,50%").is_err());
        assert!(parse_steps("0%").is_err());
        assert!(parse_steps("5%,lots").is_err());
    }

    #[test]
    fn steps_last_a_second_at_least_and_margins_may_be_nothing() {
        assert!(parse_step_duration("500ms").is_err());
        assert_eq!(parse_step_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_margin("0%"), Ok(0.0));
        assert_eq!(parse_margin("2%"), Ok(0.02));
        assert!(parse_margin("-1%").is_err());
    }
}
