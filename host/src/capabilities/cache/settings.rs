//! Which cache backend holds the gateway's key validations, and the key
//! prefix (contract, "The cache key"). One concept: the cache's settings,
//! their checks (one backend at most) and their tests.

use crate::config::{
    ConfigError, PlainHttp, Secret, check_redis_url, header_safe, http_url, non_empty,
};
use regex::Regex;

/// The keys a component may delete by default: one API key's validation.
pub const DEFAULT_ALLOWED_KEYS: &str = "^user-api-key:[a-f0-9]{64}$";

/// Which cache backend holds the gateway's key validations.
#[derive(Debug, Clone, Default)]
pub enum CacheBackendSettings {
    /// `REDIS_URL`: Redis over RESP.
    Redis {
        /// The `redis://` or `rediss://` URL; it may carry a password.
        url: Secret,
    },
    /// `REDIS_CLUSTER_NODES`: a Redis Cluster over RESP.
    RedisCluster {
        /// The seed nodes' `redis://` or `rediss://` URLs, comma-separated;
        /// they may carry a password.
        nodes: Secret,
    },
    /// `UPSTASH_REDIS_REST_URL` + `UPSTASH_REDIS_REST_TOKEN`.
    Upstash {
        /// The REST endpoint, without a trailing slash.
        url: String,
        /// The bearer token.
        token: Secret,
    },
    /// The in-process store, chosen on purpose (`KEYBUST_CACHE=embedded`):
    /// for `keybust dev`, tests, and gateways that embed keybust.
    Embedded,
    /// Nothing configured: there is no cache to forget a key in, so every
    /// delete is refused (503) and readiness reports the endpoint unready.
    #[default]
    Unset,
}

/// Which cache backend to use, when chosen explicitly (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheChoice {
    /// Redis over RESP (`REDIS_URL` or `REDIS_CLUSTER_NODES` must be set).
    Redis,
    /// Upstash's REST API (`UPSTASH_*` must be set).
    Upstash,
    /// The in-process store: deletes reach no other process.
    Embedded,
}

/// The cache backend, its key prefix, and the keys a component may touch;
/// the deadline is [`crate::deadlines::Deadlines::cache`].
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// The backend to talk to.
    pub backend: CacheBackendSettings,
    /// Prepended to every key the guest names.
    pub prefix: String,
    /// The keys (as the guest names them, before the prefix) a component
    /// may delete; any other is refused as forbidden.
    pub allowed_keys: Regex,
}

impl Default for CacheSettings {
    /// The in-process store, no prefix, the default allowed keys.
    fn default() -> Self {
        CacheSettings {
            backend: CacheBackendSettings::default(),
            prefix: String::new(),
            allowed_keys: default_allowed_keys(),
        }
    }
}

fn default_allowed_keys() -> Regex {
    Regex::new(DEFAULT_ALLOWED_KEYS).expect("the default key pattern is a valid regex")
}

/// The cache settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct CacheArgs {
    /// The cache backend [default: the one the settings below name, else
    /// none: the endpoint is unready]; `embedded` chooses the in-process
    /// store on purpose, and then no backend may be named.
    #[arg(long, env = "KEYBUST_CACHE", value_enum)]
    pub cache: Option<CacheChoice>,

    /// Redis over RESP: redis:// or rediss:// (may carry a password; prefer
    /// the environment variable). Not with Upstash.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// A Redis Cluster: comma-separated redis:// or rediss:// URLs of seed
    /// nodes (any few of its masters; the rest are discovered). Not with
    /// REDIS_URL or Upstash.
    #[arg(long, env = "REDIS_CLUSTER_NODES", hide_env_values = true)]
    pub redis_cluster_nodes: Option<String>,

    /// Upstash REST endpoint, with --upstash-redis-rest-token; not with a
    /// Redis setting.
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

    /// Regular expression for the keys (before the prefix) a component may
    /// delete; others are refused and counted [default: ^user-api-key:[a-f0-9]{64}$].
    #[arg(long, env = "KEYBUST_ALLOWED_CACHE_KEYS")]
    pub allowed_cache_keys: Option<String>,
}

impl CacheArgs {
    /// The variables that name a backend's connection and are set, in a
    /// fixed order: one backend's settings at most may be given.
    fn connections_set(&self) -> Vec<&'static str> {
        [
            ("REDIS_URL", &self.redis_url),
            ("REDIS_CLUSTER_NODES", &self.redis_cluster_nodes),
            ("UPSTASH_REDIS_REST_URL", &self.upstash_redis_rest_url),
            ("UPSTASH_REDIS_REST_TOKEN", &self.upstash_redis_rest_token),
        ]
        .into_iter()
        .filter(|(_, value)| non_empty((*value).clone()).is_some())
        .map(|(name, _)| name)
        .collect()
    }

    /// Refuses settings for two backends at once. Picking one silently
    /// (Redis over Upstash, or the in-process store over a configured
    /// Redis) gave a Ready instance that invalidated nothing the gateway
    /// reads, so both are named and keybust does not start.
    fn check_one_backend(&self) -> Result<(), ConfigError> {
        let set = self.connections_set();
        let backend = |name: &str| match name {
            "REDIS_URL" => "redis",
            "REDIS_CLUSTER_NODES" => "redis-cluster",
            _ => "upstash",
        };
        if let Some(pair) = set
            .iter()
            .flat_map(|a| set.iter().map(move |b| (*a, *b)))
            .find(|(a, b)| backend(a) != backend(b))
        {
            return Err(ConfigError::conflict(
                pair.0,
                pair.1,
                "they configure two cache backends; set one",
            ));
        }
        if self.cache == Some(CacheChoice::Embedded)
            && let Some(name) = set.first()
        {
            return Err(ConfigError::conflict(
                "KEYBUST_CACHE",
                name,
                "KEYBUST_CACHE=embedded keeps keys in this process only, which the \
                 configured backend's readers never see; unset one",
            ));
        }
        Ok(())
    }

    /// The backend the connection settings name: Redis, else Upstash, else
    /// none.
    fn backend(&self, plain: PlainHttp) -> Result<CacheBackendSettings, ConfigError> {
        self.check_one_backend()?;
        let is_redis_url = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        match (
            non_empty(self.redis_url.clone()),
            non_empty(self.redis_cluster_nodes.clone()),
        ) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::conflict(
                    "REDIS_URL",
                    "REDIS_CLUSTER_NODES",
                    "set REDIS_URL for one Redis or REDIS_CLUSTER_NODES for a cluster, not both",
                ));
            }
            (Some(url), None) => {
                if !is_redis_url(&url) {
                    return Err(ConfigError::invalid(
                        "REDIS_URL",
                        "must start with redis:// or rediss://",
                    ));
                }
                check_redis_url("REDIS_URL", &url, plain)?;
                return Ok(CacheBackendSettings::Redis {
                    url: Secret::new(url),
                });
            }
            (None, Some(nodes)) => {
                if !nodes.split(',').all(|node| is_redis_url(node.trim())) {
                    return Err(ConfigError::invalid(
                        "REDIS_CLUSTER_NODES",
                        "must be comma-separated redis:// or rediss:// URLs",
                    ));
                }
                for node in nodes.split(',') {
                    check_redis_url("REDIS_CLUSTER_NODES", node.trim(), plain)?;
                }
                return Ok(CacheBackendSettings::RedisCluster {
                    nodes: Secret::new(nodes),
                });
            }
            (None, None) => {}
        }
        Ok(self.upstash(plain)?.unwrap_or(CacheBackendSettings::Unset))
    }

    /// Upstash, when both of its settings are given; one alone is an error.
    fn upstash(&self, plain: PlainHttp) -> Result<Option<CacheBackendSettings>, ConfigError> {
        match (
            non_empty(self.upstash_redis_rest_url.clone()),
            non_empty(self.upstash_redis_rest_token.clone()),
        ) {
            (Some(url), Some(token)) => Ok(Some(CacheBackendSettings::Upstash {
                url: http_url("UPSTASH_REDIS_REST_URL", url, plain)?,
                token: header_safe("UPSTASH_REDIS_REST_TOKEN", token)?,
            })),
            (Some(_), None) | (None, Some(_)) => Err(ConfigError::invalid(
                "UPSTASH_REDIS_REST_URL",
                "UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN must be set together",
            )),
            (None, None) => Ok(None),
        }
    }

    /// The backend (Redis, else Upstash, else in-process), the prefix and
    /// the allowed keys. Upstash over plain http only to loopback, unless
    /// `plain` allows it.
    pub fn settings(&self, plain: PlainHttp) -> Result<CacheSettings, ConfigError> {
        let backend = self.backend(plain)?;
        let backend = match (self.cache, backend) {
            (None, backend) => backend,
            (Some(CacheChoice::Embedded), _) => CacheBackendSettings::Embedded,
            (
                Some(CacheChoice::Redis),
                backend @ (CacheBackendSettings::Redis { .. }
                | CacheBackendSettings::RedisCluster { .. }),
            ) => backend,
            (Some(CacheChoice::Upstash), _) => self.upstash(plain)?.ok_or_else(|| {
                ConfigError::invalid(
                    "KEYBUST_CACHE",
                    "upstash needs UPSTASH_REDIS_REST_URL and UPSTASH_REDIS_REST_TOKEN",
                )
            })?,
            (Some(CacheChoice::Redis), _) => {
                return Err(ConfigError::invalid(
                    "KEYBUST_CACHE",
                    "redis needs REDIS_URL or REDIS_CLUSTER_NODES",
                ));
            }
        };
        let prefix = match &self.cache_prefix {
            Some(prefix) => prefix.clone(),
            None => deploy_prefix(
                non_empty(self.vercel_env.clone()).as_deref(),
                non_empty(self.vercel_git_commit_sha.clone()).as_deref(),
            ),
        };
        let allowed_keys = match non_empty(self.allowed_cache_keys.clone()) {
            Some(pattern) => Regex::new(&pattern).map_err(|err| {
                ConfigError::invalid("KEYBUST_ALLOWED_CACHE_KEYS", format!("not a regex: {err}"))
            })?,
            None => default_allowed_keys(),
        };
        Ok(CacheSettings {
            backend,
            prefix,
            allowed_keys,
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
        .settings(PlainHttp::LoopbackOnly)
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
        let s = settings(&[("REDIS_URL", "redis://127.0.0.1:1")]).unwrap();
        assert!(matches!(s.backend, CacheBackendSettings::Redis { .. }));
        let s = settings(&[
            ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9/"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ])
        .unwrap();
        assert!(
            matches!(s.backend, CacheBackendSettings::Upstash { ref url, .. } if url == "http://127.0.0.1:9")
        );
        assert!(matches!(
            settings(&[]).unwrap().backend,
            CacheBackendSettings::Unset
        ));
        assert!(matches!(
            settings(&[("KEYBUST_CACHE", "embedded")]).unwrap().backend,
            CacheBackendSettings::Embedded
        ));
        assert!(settings(&[("KEYBUST_CACHE", "redis")]).is_err());
        assert!(settings(&[("KEYBUST_CACHE", "upstash"), ("REDIS_URL", "rediss://h")]).is_err());
        assert!(settings(&[("UPSTASH_REDIS_REST_URL", "http://x")]).is_err());
        assert!(settings(&[("REDIS_URL", "http://x")]).is_err());
    }

    #[test]
    fn two_backends_at_once_are_refused_naming_both() {
        let upstash = [
            ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ];
        for (vars, first, second) in [
            (
                vec![("REDIS_URL", "redis://127.0.0.1:1"), upstash[0]],
                "REDIS_URL",
                "UPSTASH_REDIS_REST_URL",
            ),
            (
                vec![("REDIS_CLUSTER_NODES", "redis://127.0.0.1:1"), upstash[1]],
                "REDIS_CLUSTER_NODES",
                "UPSTASH_REDIS_REST_TOKEN",
            ),
            (
                vec![("KEYBUST_CACHE", "embedded"), upstash[0], upstash[1]],
                "KEYBUST_CACHE",
                "UPSTASH_REDIS_REST_URL",
            ),
            (
                vec![("KEYBUST_CACHE", "embedded"), ("REDIS_URL", "redis://h:1")],
                "KEYBUST_CACHE",
                "REDIS_URL",
            ),
        ] {
            match settings(&vars) {
                Err(ConfigError::Conflict {
                    first: a,
                    second: b,
                    ..
                }) => assert_eq!((a, b), (first, second), "{vars:?}"),
                other => panic!("{vars:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_cluster_is_named_by_its_seed_nodes() {
        let s = settings(&[(
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:6379, rediss://u:p@10.0.0.2:6379",
        )])
        .unwrap();
        assert!(matches!(
            s.backend,
            CacheBackendSettings::RedisCluster { .. }
        ));
        let s = settings(&[
            ("KEYBUST_CACHE", "redis"),
            ("REDIS_CLUSTER_NODES", "rediss://10.0.0.1:6379"),
        ])
        .unwrap();
        assert!(matches!(
            s.backend,
            CacheBackendSettings::RedisCluster { .. }
        ));
        // Not both, and every entry a Redis URL (the error does not quote it).
        assert!(
            settings(&[
                ("REDIS_URL", "rediss://h"),
                ("REDIS_CLUSTER_NODES", "rediss://10.0.0.1:6379")
            ])
            .is_err()
        );
        // A plain seed beyond loopback is refused like a plain REDIS_URL.
        assert!(settings(&[("REDIS_CLUSTER_NODES", "rediss://h:1,redis://10.0.0.1:2")]).is_err());
        let err = settings(&[("REDIS_CLUSTER_NODES", "rediss://h:1,secret-host:2")])
            .unwrap_err()
            .to_string();
        assert!(!err.contains("secret-host"), "{err}");
    }
}
