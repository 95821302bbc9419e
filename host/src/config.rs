//! Deployment settings, read from the environment under the names the
//! reference platform uses (`CONVEX_*`, `CLERK_*`, `REDIS_URL`, `UPSTASH_*`,
//! `VERCEL_*`, `NODE_ENV`) plus keybust's own `KEYBUST_*` variables.

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

/// The allowed-origin patterns keybust uses when `KEYBUST_ALLOWED_ORIGINS` is unset.
pub const DEFAULT_ORIGIN_PATTERNS: &[&str] = &[
    r"^https://(.*\.)?worldmonitor\.app$",
    r"^https://worldmonitor-[a-z0-9-]+-eliewm\.vercel\.app$",
    r"(?i)^https?://tauri\.localhost(:\d+)?$",
    r"(?i)^https?://[a-z0-9-]+\.tauri\.localhost(:\d+)?$",
    r"^tauri://localhost$",
    r"^asset://localhost$",
];

/// Extra patterns allowed only when `NODE_ENV` is not `production`.
pub const DEVELOPMENT_ORIGIN_PATTERNS: &[&str] = &[
    r"^https?://localhost(:\d+)?$",
    r"^https?://127\.0\.0\.1(:\d+)?$",
];

/// The `Access-Control-Allow-Origin` value for requests without an `Origin`.
pub const DEFAULT_ALLOW_ORIGIN: &str = "https://worldmonitor.app";

/// How long a cache operation may take before it counts as failed.
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How long the Convex owner lookup may take, connection included.
pub const CONVEX_TIMEOUT: Duration = Duration::from_secs(3);

/// Where Convex lives and how to prove we are the gateway.
#[derive(Debug, Clone, Default)]
pub struct ConvexSettings {
    /// `CONVEX_SITE_URL`, without a trailing slash.
    pub site_url: Option<String>,
    /// `CONVEX_SERVER_SHARED_SECRET`.
    pub shared_secret: Option<Secret>,
    /// The deadline for one call.
    pub timeout: Duration,
}

/// Who issues session tokens and for whom.
#[derive(Debug, Clone, Default)]
pub struct ClerkSettings {
    /// `CLERK_JWT_ISSUER_DOMAIN`, without a trailing slash.
    pub issuer: Option<String>,
    /// Accepted `aud` values: `convex`, plus `CLERK_JWT_AUDIENCE` and
    /// `CLERK_PUBLISHABLE_KEY` (comma-separated lists).
    pub audiences: Vec<String>,
}

/// Which cache backend holds the gateway's key validations.
#[derive(Debug, Clone)]
pub enum CacheBackendSettings {
    /// `REDIS_URL`: Redis over RESP.
    Redis {
        /// The `redis://` or `rediss://` URL; it may carry a password.
        url: Secret,
    },
    /// `UPSTASH_REDIS_REST_URL` + `UPSTASH_REDIS_REST_TOKEN`.
    Upstash {
        /// The REST endpoint, without a trailing slash.
        url: String,
        /// The bearer token.
        token: Secret,
    },
    /// Neither: an in-process store.
    Embedded,
}

/// The cache backend, its key prefix and its deadline.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The backend to talk to.
    pub backend: CacheBackendSettings,
    /// Prepended to every key the guest names.
    pub prefix: String,
    /// The deadline for one operation.
    pub timeout: Duration,
}

/// Which browser origins may call the endpoint.
#[derive(Debug, Clone)]
pub struct OriginSettings {
    /// Regular expressions; an origin is allowed when one matches.
    pub patterns: Vec<String>,
    /// `Access-Control-Allow-Origin` for requests without an `Origin`.
    pub default_origin: String,
}

/// Everything the capabilities need, read once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The owner lookup.
    pub convex: ConvexSettings,
    /// Session tokens.
    pub clerk: ClerkSettings,
    /// The cache.
    pub cache: CacheSettings,
    /// CORS.
    pub origins: OriginSettings,
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
}

impl Settings {
    /// Reads the settings from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the settings through `lookup`, which answers a variable's value;
    /// empty values count as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| {
            lookup(name)
                .map(|value| value.trim().to_owned())
                .filter(|value| !value.is_empty())
        };

        let site_url = get("CONVEX_SITE_URL").map(|url| url.trim_end_matches('/').to_owned());
        if let Some(url) = &site_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                name: "CONVEX_SITE_URL",
                reason: "must start with http:// or https://".into(),
            });
        }
        let convex = ConvexSettings {
            site_url,
            shared_secret: get("CONVEX_SERVER_SHARED_SECRET")
                .map(|secret| header_safe("CONVEX_SERVER_SHARED_SECRET", secret))
                .transpose()?,
            timeout: CONVEX_TIMEOUT,
        };

        let mut audiences = vec!["convex".to_owned()];
        for name in ["CLERK_JWT_AUDIENCE", "CLERK_PUBLISHABLE_KEY"] {
            audiences.extend(split_list(get(name).as_deref()));
        }
        let clerk = ClerkSettings {
            issuer: get("CLERK_JWT_ISSUER_DOMAIN").map(|url| url.trim_end_matches('/').to_owned()),
            audiences,
        };

        let backend = if let Some(url) = get("REDIS_URL") {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::Invalid {
                    name: "REDIS_URL",
                    reason: "must start with redis:// or rediss://".into(),
                });
            }
            CacheBackendSettings::Redis {
                url: Secret::new(url),
            }
        } else {
            match (
                get("UPSTASH_REDIS_REST_URL"),
                get("UPSTASH_REDIS_REST_TOKEN"),
            ) {
                (Some(url), Some(token)) => CacheBackendSettings::Upstash {
                    url: url.trim_end_matches('/').to_owned(),
                    token: header_safe("UPSTASH_REDIS_REST_TOKEN", token)?,
                },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ConfigError::Invalid {
                        name: "UPSTASH_REDIS_REST_URL",
                        reason: "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must be set together".into(),
                    });
                }
                (None, None) => CacheBackendSettings::Embedded,
            }
        };
        let prefix = match lookup("KEYBUST_CACHE_PREFIX") {
            Some(prefix) => prefix,
            None => deploy_prefix(
                get("VERCEL_ENV").as_deref(),
                get("VERCEL_GIT_COMMIT_SHA").as_deref(),
            ),
        };
        let timeout = match get("KEYBUST_CACHE_TIMEOUT_MS") {
            Some(ms) => Duration::from_millis(parse_positive("KEYBUST_CACHE_TIMEOUT_MS", &ms)?),
            None => DEFAULT_CACHE_TIMEOUT,
        };
        let cache = CacheSettings {
            backend,
            prefix,
            timeout,
        };

        let patterns = match get("KEYBUST_ALLOWED_ORIGINS") {
            Some(list) => split_list(Some(&list)),
            None => {
                let production = get("NODE_ENV").as_deref() == Some("production");
                DEFAULT_ORIGIN_PATTERNS
                    .iter()
                    .chain(if production {
                        &[][..]
                    } else {
                        DEVELOPMENT_ORIGIN_PATTERNS
                    })
                    .map(|p| (*p).to_owned())
                    .collect()
            }
        };
        let origins = OriginSettings {
            patterns,
            default_origin: get("KEYBUST_DEFAULT_ORIGIN")
                .unwrap_or_else(|| DEFAULT_ALLOW_ORIGIN.to_owned()),
        };

        Ok(Settings {
            convex,
            clerk,
            cache,
            origins,
        })
    }
}

/// The reference platform's key prefix: none in production or outside
/// Vercel, else `<env>:<first 8 of the commit sha, or "dev">:`.
pub fn deploy_prefix(vercel_env: Option<&str>, commit_sha: Option<&str>) -> String {
    match vercel_env {
        None | Some("production") => String::new(),
        Some(env) => {
            let sha = commit_sha
                .map(|sha| sha.get(..8).unwrap_or(sha))
                .unwrap_or("dev");
            format!("{env}:{sha}:")
        }
    }
}

/// A secret sent in an HTTP header must be printable ASCII; saying so at
/// start beats a 503 on every request.
fn header_safe(name: &'static str, value: String) -> Result<Secret, ConfigError> {
    if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        Ok(Secret::new(value))
    } else {
        Err(ConfigError::Invalid {
            name,
            reason: "must be printable ASCII (it is sent in an HTTP header)".into(),
        })
    }
}

fn split_list(value: Option<&str>) -> Vec<String> {
    value
        .into_iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

fn parse_positive(name: &'static str, value: &str) -> Result<u64, ConfigError> {
    match value.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ConfigError::Invalid {
            name,
            reason: "must be a positive whole number".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn deploy_prefix_follows_the_reference() {
        assert_eq!(deploy_prefix(None, Some("abcdef1234")), "");
        assert_eq!(deploy_prefix(Some("production"), Some("abcdef1234")), "");
        assert_eq!(
            deploy_prefix(Some("preview"), Some("abcdef1234")),
            "preview:abcdef12:"
        );
        assert_eq!(deploy_prefix(Some("preview"), Some("abc")), "preview:abc:");
        assert_eq!(deploy_prefix(Some("development"), None), "development:dev:");
    }

    #[test]
    fn explicit_prefix_replaces_the_rule() {
        let s = settings(&[("VERCEL_ENV", "preview"), ("KEYBUST_CACHE_PREFIX", "x:")]).unwrap();
        assert_eq!(s.cache.prefix, "x:");
    }

    #[test]
    fn backend_choice() {
        let s = settings(&[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("UPSTASH_REDIS_REST_URL", "http://x"),
        ])
        .unwrap();
        assert!(matches!(
            s.cache.backend,
            CacheBackendSettings::Redis { .. }
        ));
        let s = settings(&[
            ("UPSTASH_REDIS_REST_URL", "http://x/"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ])
        .unwrap();
        assert!(
            matches!(s.cache.backend, CacheBackendSettings::Upstash { ref url, .. } if url == "http://x")
        );
        assert!(matches!(
            settings(&[]).unwrap().cache.backend,
            CacheBackendSettings::Embedded
        ));
        assert!(settings(&[("UPSTASH_REDIS_REST_URL", "http://x")]).is_err());
        assert!(settings(&[("REDIS_URL", "http://x")]).is_err());
    }

    #[test]
    fn audiences_and_origins() {
        let s = settings(&[
            ("CLERK_JWT_AUDIENCE", "a, b"),
            ("CLERK_PUBLISHABLE_KEY", "pk_1"),
            ("NODE_ENV", "production"),
        ])
        .unwrap();
        assert_eq!(s.clerk.audiences, ["convex", "a", "b", "pk_1"]);
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
        assert!(
            settings(&[
                ("CONVEX_SITE_URL", "https://x.convex.site/"),
                ("CONVEX_SERVER_SHARED_SECRET", "ok-secret")
            ])
            .is_ok()
        );
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let s = settings(&[
            ("CONVEX_SERVER_SHARED_SECRET", "hunter2"),
            ("REDIS_URL", "redis://:pw@h"),
        ])
        .unwrap();
        let printed = format!("{s:?}");
        assert!(
            !printed.contains("hunter2") && !printed.contains("pw@"),
            "{printed}"
        );
    }
}
