//! What every settings reader shares.
//!
//! Each capability declares its own settings next to its code, as a clap
//! [`clap::Args`] struct whose every field has a flag and an environment
//! twin under the names the reference platform uses (`CONVEX_*`, `CLERK_*`,
//! `REDIS_URL`, `UPSTASH_*`, `VERCEL_*`, `NODE_ENV`) or keybust's own
//! `KEYBUST_*`. That declaration is the only place a name, a default or a
//! help text is written: `keybust serve --help` lists it, the process
//! environment fills it (`Settings::from_env` in the capabilities), and
//! [`parse_lookup`] fills it from any other source of variables (tests,
//! `keybust dev`).

use clap::{Args, Command, FromArgMatches};
use std::fmt;
use std::time::Duration;

/// A value that must never reach a log line, an error message or the guest.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A setting that is present but unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable's value cannot be used.
    #[error("{name}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it (never the value itself).
        reason: String,
    },
    /// Two variables each fine alone, which cannot be used together.
    #[error("{first} and {second} are both set: {reason}")]
    Conflict {
        /// One variable.
        first: &'static str,
        /// The other.
        second: &'static str,
        /// Why not both (never a value).
        reason: String,
    },
}

impl ConfigError {
    /// `name` holds a value that cannot be used, for `reason` (which must
    /// not quote the value: it may be a secret).
    pub fn invalid(name: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            name,
            reason: reason.into(),
        }
    }

    /// `first` and `second` are both set but cannot be used together, for
    /// `reason` (which must not quote either value).
    pub fn conflict(first: &'static str, second: &'static str, reason: impl Into<String>) -> Self {
        ConfigError::Conflict {
            first,
            second,
            reason: reason.into(),
        }
    }
}

/// Parses a duration with its unit (`1500ms`, `3s`, `1m`): every duration
/// setting takes one.
pub fn parse_duration(value: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(value.trim())
}

/// Fills the settings `A` declares from `lookup`, which answers a
/// variable's value by its environment name; the process environment is
/// not read. Each value goes through the same parser, default and check as
/// on the command line.
pub fn parse_lookup<A: Args + FromArgMatches>(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<A, ConfigError> {
    let command = A::augment_args(Command::new("keybust").no_binary_name(true));
    let mut argv = Vec::new();
    for arg in command.get_arguments() {
        let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) else {
            continue;
        };
        let Some(value) = env.to_str().and_then(&lookup) else {
            continue;
        };
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={value}"));
        } else if parse_switch(&value).map_err(|why| {
            ConfigError::invalid("settings", format!("{}: {why}", env.to_string_lossy()))
        })? {
            argv.push(format!("--{long}"));
        }
    }
    // Forget the values clap captured from the process environment.
    let command = command.mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(argv)
        .map_err(|err| ConfigError::invalid("settings", clap_reason(&err)))?;
    A::from_arg_matches(&matches).map_err(|err| ConfigError::invalid("settings", clap_reason(&err)))
}

/// Fills the settings `A` declares from the process environment alone.
pub fn parse_env<A: Args + FromArgMatches>() -> Result<A, ConfigError> {
    let command = A::augment_args(Command::new("keybust").no_binary_name(true));
    let matches = command
        .try_get_matches_from(Vec::<String>::new())
        .map_err(|err| ConfigError::invalid("settings", clap_reason(&err)))?;
    A::from_arg_matches(&matches).map_err(|err| ConfigError::invalid("settings", clap_reason(&err)))
}

/// An on/off setting's value: `true`/`false`, `1`/`0`, `yes`/`no` or
/// `on`/`off` (any case; empty is off, as an unset variable). Any other
/// word is refused: read as "anything not false-like is on", a typo such
/// as `disabled` turned a setting on.
pub fn parse_switch(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "" | "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(format!(
            "{value:?} is not on or off (true/false, 1/0, yes/no, on/off)"
        )),
    }
}

/// What clap says went wrong, without the value (which may be a secret).
fn clap_reason(err: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(arg)) => arg.clone(),
        _ => "a setting".to_owned(),
    };
    format!("{arg}: {}", err.kind())
}

/// A value given as empty (or only spaces) counts as not given.
pub(crate) fn non_empty(value: Option<String>) -> Option<String> {
    value
        .map(|value| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

/// A comma-separated list, empty items dropped.
pub(crate) fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A secret sent in an HTTP header must be printable ASCII; saying so at
/// start beats a 503 on every request.
pub(crate) fn header_safe(name: &'static str, value: String) -> Result<Secret, ConfigError> {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(Secret::new(value))
    } else {
        Err(ConfigError::invalid(
            name,
            "must be printable ASCII (it is sent in an HTTP header)",
        ))
    }
}

/// Whether a backend may be reached over plain HTTP beyond this machine
/// (`--allow-insecure-backends`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlainHttp {
    /// Only to loopback addresses: elsewhere a man in the middle could
    /// read the shared secret or forge the token issuer's keys.
    LoopbackOnly,
    /// Anywhere; for networks the operator trusts.
    Allowed,
}

/// An `http://` or `https://` URL without its trailing slash; `http://`
/// only to a loopback host unless `plain` allows it.
pub(crate) fn http_url(
    name: &'static str,
    value: String,
    plain: PlainHttp,
) -> Result<String, ConfigError> {
    let url = reqwest::Url::parse(&value)
        .map_err(|_| ConfigError::invalid(name, "must start with http:// or https://"))?;
    match url.scheme() {
        "https" => {}
        "http" if plain == PlainHttp::Allowed || is_loopback(&url) => {}
        "http" => {
            return Err(ConfigError::invalid(
                name,
                "plain http:// to a host beyond this machine: use https://, or allow it with --allow-insecure-backends",
            ));
        }
        _ => {
            return Err(ConfigError::invalid(
                name,
                "must start with http:// or https://",
            ));
        }
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// A Redis URL (`REDIS_URL`, a `REDIS_CLUSTER_NODES` seed): `rediss://`
/// anywhere, plain `redis://` only to a loopback host unless `plain`
/// allows it. Plain RESP across a network lets a man in the middle answer
/// `DEL` with `:1`, and a revocation would be reported done that was not.
/// The error never holds the URL, which may carry a password.
pub(crate) fn check_redis_url(
    name: &'static str,
    value: &str,
    plain: PlainHttp,
) -> Result<(), ConfigError> {
    let scheme_error = || ConfigError::invalid(name, "must start with redis:// or rediss://");
    let url = reqwest::Url::parse(value).map_err(|_| scheme_error())?;
    match url.scheme() {
        "rediss" => Ok(()),
        "redis" if plain == PlainHttp::Allowed || is_loopback(&url) => Ok(()),
        "redis" => Err(ConfigError::invalid(
            name,
            "plain redis:// to a host beyond this machine: use rediss://, or allow it with --allow-insecure-backends",
        )),
        _ => Err(scheme_error()),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        // Schemes the URL standard does not know (redis://) keep their host
        // opaque, so an address arrives here as a domain and is parsed again.
        Some(url::Host::Domain(domain)) => {
            domain.eq_ignore_ascii_case("localhost")
                || domain
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        }
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_switch_is_one_of_eight_words_or_nothing() {
        for on in ["true", "1", "yes", "on", "ON", " Yes "] {
            assert_eq!(super::parse_switch(on), Ok(true), "{on}");
        }
        for off in ["false", "0", "no", "off", ""] {
            assert_eq!(super::parse_switch(off), Ok(false), "{off}");
        }
        for neither in ["disabled", "enabled", "n", "y", "2"] {
            assert!(super::parse_switch(neither).is_err(), "{neither}");
        }
    }

    #[test]
    fn plain_http_only_to_loopback_unless_allowed() {
        let url = |value: &str, plain| http_url("X", value.to_owned(), plain);
        assert_eq!(
            url("https://clerk.example.com/", PlainHttp::LoopbackOnly).unwrap(),
            "https://clerk.example.com"
        );
        for loopback in [
            "http://127.0.0.1:8080",
            "http://localhost",
            "http://[::1]:1",
            "http://127.1.2.3",
        ] {
            assert!(url(loopback, PlainHttp::LoopbackOnly).is_ok(), "{loopback}");
        }
        for remote in [
            "http://clerk.example.com",
            "http://10.0.0.1",
            "http://localhost.evil.example",
        ] {
            let err = url(remote, PlainHttp::LoopbackOnly).unwrap_err();
            assert!(
                err.to_string().contains("--allow-insecure-backends"),
                "{err}"
            );
            assert!(url(remote, PlainHttp::Allowed).is_ok(), "{remote}");
        }
        assert!(url("clerk.example.com", PlainHttp::Allowed).is_err());
        assert!(url("ftp://x", PlainHttp::Allowed).is_err());
    }

    #[test]
    fn plain_redis_only_to_loopback_unless_allowed() {
        let check = |value: &str, plain| check_redis_url("REDIS_URL", value, plain);
        for fine in [
            "rediss://:pw@cache.example.com:6380",
            "redis://127.0.0.1:6379",
            "redis://localhost/0",
            "redis://[::1]:6379",
        ] {
            assert!(check(fine, PlainHttp::LoopbackOnly).is_ok(), "{fine}");
        }
        for remote in ["redis://:secret@cache.example.com:6379", "redis://10.0.0.7"] {
            let err = check(remote, PlainHttp::LoopbackOnly).unwrap_err();
            let said = err.to_string();
            assert!(said.contains("--allow-insecure-backends"), "{said}");
            assert!(!said.contains("secret"), "{said}");
            assert!(check(remote, PlainHttp::Allowed).is_ok(), "{remote}");
        }
        assert!(check("http://127.0.0.1", PlainHttp::Allowed).is_err());
        assert!(check("127.0.0.1:6379", PlainHttp::Allowed).is_err());
    }
}
