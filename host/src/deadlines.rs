//! Every deadline keybust puts on its backends, as one value.
//!
//! The endpoint is three remote calls deep (the JWKS, Convex, then the
//! cache), and it fails closed: a backend that does not answer in time
//! costs the client a 503 (or a 401 when tokens cannot be verified), never
//! a hung request. [`Deadlines`] is where each of those waits is decided;
//! the capabilities take their deadline from it and from nowhere else.

use crate::config::parse_duration;
use std::time::Duration;

/// How long keybust waits on each backend, with the defaults in
/// [`Deadlines::default`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadlines {
    /// Opening a TCP (and TLS) connection to Convex, the JWKS issuer or
    /// Upstash.
    pub connect: Duration,
    /// One Convex owner lookup, connection included.
    pub convex: Duration,
    /// One JWKS fetch, connection included.
    pub jwks: Duration,
    /// One cache operation (Redis, Upstash), connection included.
    pub cache: Duration,
    /// The least time between two JWKS fetches caused by unknown key ids,
    /// so a flood of made-up key ids costs one fetch.
    pub jwks_refetch_cooldown: Duration,
    /// The least time between two JWKS fetches after one failed.
    pub jwks_retry_after_failure: Duration,
    /// How old the issuer's keys may grow before a request that uses them
    /// starts a refetch in the background, so removed keys stop working.
    pub jwks_max_age: Duration,
    /// The longest back-off between two Redis reconnection attempts.
    pub redis_reconnect_max_delay: Duration,
    /// How often the cache backend is checked in the background, for
    /// readiness.
    pub cache_check_interval: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            connect: Duration::from_secs(3),
            convex: Duration::from_secs(3),
            jwks: Duration::from_secs(3),
            cache: Duration::from_millis(1500),
            jwks_refetch_cooldown: Duration::from_secs(30),
            jwks_retry_after_failure: Duration::from_secs(2),
            jwks_max_age: Duration::from_secs(600),
            redis_reconnect_max_delay: Duration::from_millis(200),
            cache_check_interval: Duration::from_secs(2),
        }
    }
}

/// The deadline settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadlineArgs {
    /// Deadline for one Convex owner lookup, connection included; past it, 503.
    #[arg(long, env = "KEYBUST_CONVEX_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub convex_timeout: Duration,

    /// Deadline for one JWKS fetch from the token issuer.
    #[arg(long, env = "KEYBUST_JWKS_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub jwks_timeout: Duration,

    /// Least time between two JWKS fetches caused by tokens naming unknown key ids.
    #[arg(long, env = "KEYBUST_JWKS_REFETCH_COOLDOWN", default_value = "30s", value_parser = parse_duration)]
    pub jwks_refetch_cooldown: Duration,

    /// Age of the issuer's keys after which they are fetched again, in the background.
    #[arg(long, env = "KEYBUST_JWKS_MAX_AGE", default_value = "10m", value_parser = parse_duration)]
    pub jwks_max_age: Duration,

    /// Deadline for one cache operation (Redis, Upstash); past it, 503 [default: 1500ms].
    #[arg(long, env = "KEYBUST_CACHE_TIMEOUT", value_parser = parse_duration)]
    pub cache_timeout: Option<Duration>,

    /// Deprecated: use --cache-timeout / KEYBUST_CACHE_TIMEOUT, which take a unit.
    #[arg(long, env = "KEYBUST_CACHE_TIMEOUT_MS", value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_timeout_ms: Option<u64>,

    /// How often the cache backend is checked (PING) in the background; a
    /// failed check makes /readyz answer 503.
    #[arg(long, env = "KEYBUST_CACHE_CHECK_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub cache_check_interval: Duration,

    /// Deadline for opening a connection to Convex, the token issuer or Upstash.
    #[arg(long, env = "KEYBUST_BACKEND_CONNECT_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub backend_connect_timeout: Duration,
}

impl DeadlineArgs {
    /// The deadlines these settings ask for; the deprecated millisecond
    /// setting still counts, with a warning, when the new one is not given.
    pub fn deadlines(&self) -> Deadlines {
        let defaults = Deadlines::default();
        let cache = match (self.cache_timeout, self.cache_timeout_ms) {
            (Some(timeout), _) => timeout,
            (None, Some(ms)) => {
                tracing::warn!(
                    "KEYBUST_CACHE_TIMEOUT_MS is deprecated: set KEYBUST_CACHE_TIMEOUT={ms}ms instead"
                );
                Duration::from_millis(ms)
            }
            (None, None) => defaults.cache,
        };
        Deadlines {
            connect: self.backend_connect_timeout,
            convex: self.convex_timeout,
            jwks: self.jwks_timeout,
            cache,
            jwks_refetch_cooldown: self.jwks_refetch_cooldown,
            jwks_max_age: self.jwks_max_age,
            cache_check_interval: self.cache_check_interval,
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_lookup;

    fn deadlines(vars: &[(&str, &str)]) -> Deadlines {
        parse_lookup::<DeadlineArgs>(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap()
        .deadlines()
    }

    #[test]
    fn flags_default_to_the_documented_values() {
        assert_eq!(deadlines(&[]), Deadlines::default());
    }

    #[test]
    fn cache_timeout_takes_a_unit_and_the_old_name_still_counts() {
        assert_eq!(
            deadlines(&[("KEYBUST_CACHE_TIMEOUT", "250ms")]).cache,
            Duration::from_millis(250)
        );
        assert_eq!(
            deadlines(&[("KEYBUST_CACHE_TIMEOUT_MS", "700")]).cache,
            Duration::from_millis(700)
        );
        assert_eq!(
            deadlines(&[
                ("KEYBUST_CACHE_TIMEOUT", "2s"),
                ("KEYBUST_CACHE_TIMEOUT_MS", "700")
            ])
            .cache,
            Duration::from_secs(2)
        );
    }
}
