//! Which cache backend holds the gateway's key validations, and the key
//! prefix (contract, "The cache key").

use crate::config::{ConfigError, Secret, header_safe, non_empty};

/// Which cache backend holds the gateway's key validations.
#[derive(Debug, Clone, Default)]
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
    #[default]
    Embedded,
}

/// The cache backend and its key prefix; the deadline is
/// [`crate::deadlines::Deadlines::cache`].
#[derive(Debug, Clone, Default)]
pub struct CacheSettings {
    /// The backend to talk to.
    pub backend: CacheBackendSettings,
    /// Prepended to every key the guest names.
    pub prefix: String,
}

/// The cache settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// Redis over RESP: redis:// or rediss:// (may carry a password; prefer
    /// the environment variable). Wins over Upstash.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Upstash REST endpoint; used with --upstash-redis-rest-token when REDIS_URL is unset.
    #[arg(long, env = "UPSTASH_REDIS_REST_URL")]
    pub upstash_redis_rest_url: Option<String>,

    /// Upstash bearer token (prefer the environment variable).
    #[arg(long, env = "UPSTASH_REDIS_REST_TOKEN", hide_env_values = true)]
    pub upstash_redis_rest_token: Option<String>,

    /// Replaces the deploy-prefix rule; may be empty.
    #[arg(long, env = "KEYBUST_CACHE_PREFIX")]
    pub cache_prefix: Option<String>,

    /// Deployment environment for the key prefix: unset or `production`
    /// gives none, anything else `<env>:<sha8>:`.
    #[arg(long, env = "VERCEL_ENV")]
    pub vercel_env: Option<String>,

    /// Commit whose first 8 characters go into the key prefix [default: dev].
    #[arg(long, env = "VERCEL_GIT_COMMIT_SHA")]
    pub vercel_git_commit_sha: Option<String>,
}

impl CacheArgs {
    /// The backend (Redis, else Upstash, else in-process) and the prefix.
    pub fn settings(&self) -> Result<CacheSettings, ConfigError> {
        let backend = if let Some(url) = non_empty(self.redis_url.clone()) {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError::invalid(
                    "REDIS_URL",
                    "must start with redis:// or rediss://",
                ));
            }
            CacheBackendSettings::Redis {
                url: Secret::new(url),
            }
        } else {
            match (
                non_empty(self.upstash_redis_rest_url.clone()),
                non_empty(self.upstash_redis_rest_token.clone()),
            ) {
                (Some(url), Some(token)) => CacheBackendSettings::Upstash {
                    url: url.trim_end_matches('/').to_owned(),
                    token: header_safe("UPSTASH_REDIS_REST_TOKEN", token)?,
                },
                (Some(_), None) | (None, Some(_)) => {
                    return Err(ConfigError::invalid(
                        "UPSTASH_REDIS_REST_URL",
                        "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must be set together",
                    ));
                }
                (None, None) => CacheBackendSettings::Embedded,
            }
        };
        let prefix = match &self.cache_prefix {
            Some(prefix) => prefix.clone(),
            None => deploy_prefix(
                non_empty(self.vercel_env.clone()).as_deref(),
                non_empty(self.vercel_git_commit_sha.clone()).as_deref(),
            ),
        };
        Ok(CacheSettings { backend, prefix })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_lookup;

    fn settings(vars: &[(&str, &str)]) -> Result<CacheSettings, ConfigError> {
        parse_lookup::<CacheArgs>(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })?
        .settings()
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
        assert_eq!(s.prefix, "x:");
        let s = settings(&[("VERCEL_ENV", "preview"), ("KEYBUST_CACHE_PREFIX", "")]).unwrap();
        assert_eq!(s.prefix, "");
        let s = settings(&[("VERCEL_ENV", "preview")]).unwrap();
        assert_eq!(s.prefix, "preview:dev:");
    }

    #[test]
    fn backend_choice() {
        let s = settings(&[
            ("REDIS_URL", "redis://127.0.0.1:1"),
            ("UPSTASH_REDIS_REST_URL", "http://x"),
        ])
        .unwrap();
        assert!(matches!(s.backend, CacheBackendSettings::Redis { .. }));
        let s = settings(&[
            ("UPSTASH_REDIS_REST_URL", "http://x/"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ])
        .unwrap();
        assert!(
            matches!(s.backend, CacheBackendSettings::Upstash { ref url, .. } if url == "http://x")
        );
        assert!(matches!(
            settings(&[]).unwrap().backend,
            CacheBackendSettings::Embedded
        ));
        assert!(settings(&[("UPSTASH_REDIS_REST_URL", "http://x")]).is_err());
        assert!(settings(&[("REDIS_URL", "http://x")]).is_err());
    }
}
