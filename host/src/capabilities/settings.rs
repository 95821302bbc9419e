//! Everything the capabilities need, read once at start: each capability's
//! own settings, gathered, plus the backend [`Deadlines`].

use super::cache::{CacheArgs, CacheSettings};
use super::convex::{ConvexArgs, ConvexSettings};
use super::origins::{OriginArgs, OriginSettings};
use super::session::{SessionArgs, SessionSettings};
use crate::config::{ConfigError, PlainHttp, parse_env, parse_lookup};
use crate::deadlines::{DeadlineArgs, Deadlines};

/// Everything the capabilities need. `Default` is what an empty
/// environment gives: nothing configured, the in-process cache, the
/// default origins and deadlines.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// The owner lookup.
    pub convex: ConvexSettings,
    /// Session tokens.
    pub session: SessionSettings,
    /// The cache.
    pub cache: CacheSettings,
    /// CORS.
    pub origins: OriginSettings,
    /// How long each backend may take.
    pub deadlines: Deadlines,
}

/// Every capability setting, as flags with environment twins, grouped
/// by capability in `--help`.
#[derive(Debug, Clone, clap::Args)]
pub struct SettingsArgs {
    #[command(flatten, next_help_heading = "Convex owner lookup")]
    convex: ConvexArgs,
    #[command(flatten, next_help_heading = "Session tokens")]
    session: SessionArgs,
    #[command(flatten, next_help_heading = "Cache")]
    cache: CacheArgs,
    #[command(flatten, next_help_heading = "CORS")]
    origins: OriginArgs,
    #[command(flatten, next_help_heading = "Backend deadlines")]
    deadlines: DeadlineArgs,

    /// Allow plain http:// to Convex, the token issuer and Upstash, and plain redis:// to Redis,
    /// beyond loopback (a man in the middle could read the shared secret, forge sessions, or
    /// answer a cache delete it never passed on); without it such a URL stops keybust at start.
    #[arg(long, env = "KEYBUST_ALLOW_INSECURE_BACKENDS", value_parser = crate::config::parse_switch, help_heading = "Backend deadlines")]
    allow_insecure_backends: bool,
}

impl SettingsArgs {
    /// Checks every value; the first unusable one stops keybust at start.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        let plain = if self.allow_insecure_backends {
            PlainHttp::Allowed
        } else {
            PlainHttp::LoopbackOnly
        };
        Ok(Settings {
            convex: self.convex.settings(plain)?,
            session: self.session.settings(plain)?,
            cache: self.cache.settings(plain)?,
            origins: self.origins.settings()?,
            deadlines: self.deadlines.deadlines(),
        })
    }
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        parse_env::<SettingsArgs>()?.settings()
    }

    /// Reads the settings through `lookup`, which answers a variable's
    /// value by its environment name (`CONVEX_SITE_URL`, ...); empty
    /// values count as unset, except `KEYBUST_CACHE_PREFIX`'s.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        parse_lookup::<SettingsArgs>(lookup)?.settings()
    }
}

/// Where the settings point, as the start line shows it: a key prefix
/// that does not match what the gateway writes, or a cache other than the
/// gateway's, keeps an instance Ready while it invalidates nothing, and
/// this is the one place an operator sees them. Hosts only: never a
/// password, token or shared secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InEffect {
    /// `redis`, `redis-cluster`, `upstash`, `embedded` or `none`.
    pub cache: &'static str,
    /// The cache backend's `host:port`s, comma-separated; empty for the
    /// in-process store and for none.
    pub cache_hosts: String,
    /// Prepended to every key deleted.
    pub key_prefix: String,
    /// Convex's `host:port`, if configured.
    pub convex: Option<String>,
    /// The token issuer's URL, if configured.
    pub issuer: Option<String>,
}

impl Settings {
    /// What these settings put in effect; see [`InEffect`].
    pub fn in_effect(&self) -> InEffect {
        use super::cache::CacheBackendSettings as Backend;
        let (cache, cache_hosts) = match &self.cache.backend {
            Backend::Redis { url } => ("redis", host_port(url.expose(), 6379)),
            Backend::RedisCluster { nodes } => (
                "redis-cluster",
                nodes
                    .expose()
                    .split(',')
                    .map(|node| host_port(node.trim(), 6379))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            Backend::Upstash { url, .. } => ("upstash", host_port(url, 443)),
            Backend::Embedded => ("embedded", String::new()),
            Backend::Unset => ("none", String::new()),
        };
        InEffect {
            cache,
            cache_hosts,
            key_prefix: self.cache.prefix.clone(),
            convex: self
                .convex
                .site_url
                .as_deref()
                .map(|url| host_port(url, 443)),
            issuer: self.session.issuer.as_deref().map(without_credentials),
        }
    }
}

/// `host:port` of `url` (`default_port` when it names none); `?` when it
/// does not parse, which the settings' own checks have already refused.
fn host_port(url: &str, default_port: u16) -> String {
    match reqwest::Url::parse(url) {
        Ok(url) => {
            let port = url.port_or_known_default().unwrap_or(default_port);
            format!("{}:{port}", url.host_str().unwrap_or("?"))
        }
        Err(_) => "?".to_owned(),
    }
}

/// `url` without a user name or password.
fn without_credentials(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.as_str().trim_end_matches('/').to_owned()
        }
        Err(_) => "?".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capabilities::origins::{DEFAULT_ORIGIN_PATTERNS, DEVELOPMENT_ORIGIN_PATTERNS};

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_lookup(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn nothing_set_is_the_default() {
        let read = settings(&[]).unwrap();
        let default = Settings::default();
        assert_eq!(read.deadlines, default.deadlines);
        assert_eq!(read.session.audiences, default.session.audiences);
        assert_eq!(read.origins.patterns, default.origins.patterns);
        assert_eq!(read.origins.default_origin, default.origins.default_origin);
        assert_eq!(read.cache.prefix, default.cache.prefix);
        assert!(read.convex.site_url.is_none() && read.convex.shared_secret.is_none());
    }

    #[test]
    fn audiences_and_origins() {
        let s = settings(&[
            ("CLERK_JWT_AUDIENCE", "a, b"),
            ("CLERK_PUBLISHABLE_KEY", "pk_1"),
            ("NODE_ENV", "production"),
        ])
        .unwrap();
        assert_eq!(s.session.audiences, ["convex", "a", "b", "pk_1"]);
        assert_eq!(s.origins.patterns.len(), DEFAULT_ORIGIN_PATTERNS.len());
        let s = settings(&[]).unwrap();
        assert_eq!(
            s.origins.patterns.len(),
            DEFAULT_ORIGIN_PATTERNS.len() + DEVELOPMENT_ORIGIN_PATTERNS.len()
        );
    }

    #[test]
    fn unusable_convex_settings_are_refused() {
        assert!(settings(&[("CONVEX_SITE_URL", "example.convex.site")]).is_err());
        let err = settings(&[("CONVEX_SERVER_SHARED_SECRET", "s\u{7f}cret")]).unwrap_err();
        assert!(!err.to_string().contains("cret"), "{err}");
        let s = settings(&[
            ("CONVEX_SITE_URL", "https://x.convex.site/"),
            ("CONVEX_SERVER_SHARED_SECRET", "ok-secret"),
        ])
        .unwrap();
        assert_eq!(s.convex.site_url.as_deref(), Some("https://x.convex.site"));
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = settings(&[("CONVEX_SITE_URL", ""), ("REDIS_URL", " ")]).unwrap();
        assert!(s.convex.site_url.is_none());
        assert!(matches!(
            s.cache.backend,
            crate::capabilities::cache::CacheBackendSettings::Unset
        ));
    }

    #[test]
    fn plain_http_backends_need_loopback_or_leave() {
        for name in [
            "CONVEX_SITE_URL",
            "CLERK_JWT_ISSUER_DOMAIN",
            "UPSTASH_REDIS_REST_URL",
        ] {
            let mut vars = vec![
                (name, "http://backend.example.com"),
                ("UPSTASH_REDIS_REST_TOKEN", "t"),
            ];
            if name != "UPSTASH_REDIS_REST_URL" {
                vars.pop();
            }
            let err = settings(&vars).unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
            vars.push(("KEYBUST_ALLOW_INSECURE_BACKENDS", "1"));
            assert!(settings(&vars).is_ok(), "{name}");
            vars.pop();
            vars.push(("KEYBUST_ALLOW_INSECURE_BACKENDS", "false"));
            assert!(settings(&vars).is_err(), "{name}");
        }
    }

    #[test]
    fn what_is_in_effect_names_hosts_and_no_secret() {
        let s = settings(&[
            (
                "REDIS_CLUSTER_NODES",
                "rediss://:pw@10.0.0.1:7000, redis://127.0.0.1",
            ),
            ("KEYBUST_ALLOW_INSECURE_BACKENDS", "on"),
            ("CONVEX_SITE_URL", "https://x.convex.site/"),
            ("CONVEX_SERVER_SHARED_SECRET", "hunter2"),
            (
                "CLERK_JWT_ISSUER_DOMAIN",
                "https://user:pw@clerk.example.com/",
            ),
            ("KEYBUST_CACHE_PREFIX", "p:"),
        ])
        .unwrap();
        let shown = s.in_effect();
        assert_eq!(
            shown,
            InEffect {
                cache: "redis-cluster",
                cache_hosts: "10.0.0.1:7000,127.0.0.1:6379".into(),
                key_prefix: "p:".into(),
                convex: Some("x.convex.site:443".into()),
                issuer: Some("https://clerk.example.com".into()),
            }
        );
        assert!(!format!("{shown:?}").contains("pw"));
        let none = settings(&[]).unwrap().in_effect();
        assert_eq!((none.cache, none.convex, none.issuer), ("none", None, None));
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = settings(&[
            ("CONVEX_SERVER_SHARED_SECRET", "hunter2"),
            ("REDIS_URL", "rediss://:pw@h"),
        ])
        .unwrap();
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw@"),
            "{printed}"
        );
    }

    #[test]
    fn a_bad_duration_names_the_setting_not_the_value() {
        let err = settings(&[("KEYBUST_CACHE_TIMEOUT", "soon-ish")]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("cache-timeout"), "{text}");
        assert!(!text.contains("soon-ish"), "{text}");
    }
}
