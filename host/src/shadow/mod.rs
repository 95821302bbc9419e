//! Shadow replay: a candidate that passed the contract gate runs beside the
//! serving version on a share of live requests, without answering them
//! and without reaching a backend, until it has agreed with the serving
//! version often enough (or for long enough) to be trusted with clients.
//!
//! The gate checks what the contract's rows cover; live traffic holds
//! shapes no table does. For a shadowed request the serving version runs
//! as usual, with its capability calls and their answers written on a
//! [`Tape`](crate::capabilities::Tape), and its body copied as it reads it
//! ([`copy`]). Once it has finished, the candidate runs on a copy of the
//! same request with a [`Replay`](replay::Replay) answering its calls from
//! the tape: the same call gets the same answer, a call the serving
//! version did not make gets "unavailable". The two runs are compared
//! ([`compare`]): status, the presence of the CORS headers, and the backend
//! calls with their arguments. One divergence refuses the candidate.
//!
//! Shadow work never delays a client: it starts after the serving
//! version's run has ended. It takes no admission slot (a semaphore of its
//! own, one run at a time) and is skipped first under load, when fewer
//! than a quarter of the admission slots are free.

pub mod compare;
pub mod copy;
pub mod replay;

use crate::config::parse_duration;
use std::time::Duration;

/// How the shadow stage runs (`--shadow*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowSettings {
    /// Whether a candidate goes through the stage at all; off, it serves
    /// once it passes the gate.
    pub enabled: bool,
    /// The share of live requests a candidate shadows, from 0 to 1.
    pub share: f64,
    /// After this many agreeing requests, the candidate serves.
    pub requests: u64,
    /// After this long without a divergence, the candidate serves, however
    /// few requests it has seen: revocations are rare.
    pub window: Duration,
}

impl Default for ShadowSettings {
    /// Off: a library user turns it on; `keybust serve` has it on.
    fn default() -> Self {
        ShadowSettings {
            enabled: false,
            share: 0.1,
            requests: 200,
            window: Duration::from_secs(30),
        }
    }
}

/// Whether a stage runs (`on` or `off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    /// It runs.
    On,
    /// It is skipped.
    Off,
}

/// The shadow stage's settings, as flags with their environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct ShadowArgs {
    /// Whether a new version that passed the contract gate first runs in
    /// the shadow of the serving one on live requests (answering none,
    /// reaching no backend) before it serves.
    #[arg(long = "shadow", env = "KEYBUST_SHADOW", value_enum, default_value_t = Switch::On)]
    pub shadow: Switch,

    /// The share of live requests a candidate shadows, e.g. 10%.
    #[arg(long, env = "KEYBUST_SHADOW_SHARE", default_value = "10%", value_parser = parse_share)]
    pub shadow_share: f64,

    /// After this many requests on which it agreed with the serving
    /// version, the candidate serves.
    #[arg(long, env = "KEYBUST_SHADOW_REQUESTS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    pub shadow_requests: u64,

    /// After this long without a divergence, the candidate serves, however
    /// few requests it has seen.
    #[arg(long, env = "KEYBUST_SHADOW_WINDOW", default_value = "30s", value_parser = parse_window)]
    pub shadow_window: Duration,
}

impl ShadowArgs {
    /// The settings these flags give.
    pub fn settings(&self) -> ShadowSettings {
        ShadowSettings {
            enabled: self.shadow == Switch::On,
            share: self.shadow_share,
            requests: self.shadow_requests,
            window: self.shadow_window,
        }
    }
}

/// A window of at least a second: a shorter one would end the stage
/// before a request could arrive, and skip it without saying so
/// (`--shadow off` says so).
fn parse_window(value: &str) -> Result<Duration, String> {
    let window = parse_duration(value).map_err(|err| err.to_string())?;
    if window < Duration::from_secs(1) {
        return Err(format!(
            "a shadow window lasts at least 1s, not {value} (--shadow off skips the stage)"
        ));
    }
    Ok(window)
}

/// A share: `10%`, or a fraction from 0 to 1 (`0.1`).
pub fn parse_share(value: &str) -> Result<f64, String> {
    let value = value.trim();
    let share = match value.strip_suffix('%') {
        Some(percent) => percent.trim().parse::<f64>().map(|percent| percent / 100.0),
        None => value.parse::<f64>(),
    }
    .map_err(|_| format!("{value:?} is not a share (10% or 0.1)"))?;
    if (0.0..=1.0).contains(&share) && share > 0.0 {
        Ok(share)
    } else {
        Err(format!("a share is above 0% and at most 100%, not {value}"))
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_share, parse_window};
    use std::time::Duration;

    #[test]
    fn a_window_too_short_for_a_request_is_refused() {
        assert!(parse_window("0s").is_err());
        assert!(parse_window("200ms").is_err());
        assert_eq!(parse_window("2s"), Ok(Duration::from_secs(2)));
    }

    #[test]
    fn shares_are_percentages_or_fractions_above_nothing() {
        assert_eq!(parse_share("10%"), Ok(0.1));
        assert_eq!(parse_share("100%"), Ok(1.0));
        assert_eq!(parse_share("0.25"), Ok(0.25));
        assert!(parse_share("0%").is_err());
        assert!(parse_share("150%").is_err());
        assert!(parse_share("some").is_err());
    }
}
