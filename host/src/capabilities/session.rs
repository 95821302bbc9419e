//! The `session` capability: Clerk session tokens, verified against the
//! issuer's JWKS (contract, "Session tokens").
//!
//! Keys are fetched once, kept parsed, and fetched again only when a token
//! names a key id we do not have, at most once per cooldown: a flood of
//! tokens with made-up key ids costs one JWKS request, not one per token.
//! When the issuer is unreachable, keys already fetched keep working.

use super::bindings::keybust::gateway::session as wit;
use crate::config::{ConfigError, non_empty, split_list};
use crate::deadlines::Deadlines;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

/// Clock skew tolerated on `exp` and `nbf` (contract rule S6).
pub const CLOCK_TOLERANCE_SECS: u64 = 5;

/// The `aud` every deployment accepts, besides the configured ones.
pub const DEFAULT_AUDIENCE: &str = "convex";

/// Who issues session tokens and for whom.
#[derive(Debug, Clone)]
pub struct ClerkSettings {
    /// `CLERK_JWT_ISSUER_DOMAIN`, without a trailing slash; unset: every
    /// token is refused as unverifiable.
    pub issuer: Option<String>,
    /// The `aud` values accepted: always [`DEFAULT_AUDIENCE`], plus
    /// `CLERK_JWT_AUDIENCE` and `CLERK_PUBLISHABLE_KEY`. A token without
    /// `aud` is accepted.
    pub audiences: Vec<String>,
}

impl Default for ClerkSettings {
    /// No issuer; the default audience only.
    fn default() -> Self {
        ClerkSettings {
            issuer: None,
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        }
    }
}

/// The session-token settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct ClerkArgs {
    /// Token issuer, e.g. https://clerk.example.com; keys come from
    /// {issuer}/.well-known/jwks.json. Unset: every token is refused (401).
    #[arg(long, env = "CLERK_JWT_ISSUER_DOMAIN")]
    pub clerk_jwt_issuer_domain: Option<String>,

    /// Comma-separated `aud` values accepted besides `convex`.
    #[arg(long, env = "CLERK_JWT_AUDIENCE")]
    pub clerk_jwt_audience: Option<String>,

    /// Comma-separated `aud` values accepted besides `convex` (Clerk's publishable keys).
    #[arg(long, env = "CLERK_PUBLISHABLE_KEY")]
    pub clerk_publishable_key: Option<String>,
}

impl ClerkArgs {
    /// The configured audiences are added to `convex`.
    pub fn settings(&self) -> Result<ClerkSettings, ConfigError> {
        let mut settings = ClerkSettings {
            issuer: non_empty(self.clerk_jwt_issuer_domain.clone())
                .map(|url| url.trim_end_matches('/').to_owned()),
            ..ClerkSettings::default()
        };
        for list in [&self.clerk_jwt_audience, &self.clerk_publishable_key] {
            settings.audiences.extend(split_list(list.as_deref()));
        }
        Ok(settings)
    }
}

/// Why a token yielded no user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// The token is not a valid session token for this deployment.
    #[error("invalid session token")]
    Invalid,
    /// Tokens cannot be verified right now: no issuer configured, or no keys.
    #[error("session tokens cannot be verified")]
    Unverifiable,
}

/// The issuer's keys, parsed, and when they were last fetched (and
/// whether that fetch worked).
#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    last_fetch: Option<(Instant, bool)>,
}

/// Verifies Clerk session tokens.
pub struct SessionVerifier {
    issuer: Option<String>,
    validation: Validation,
    http: reqwest::Client,
    deadlines: Deadlines,
    /// The keys every request reads. A `std` read-write lock: it is only
    /// ever held for a map lookup or a swap of the whole map, never across
    /// an `.await`, so readers never wait on the network.
    cache: RwLock<KeyCache>,
    /// Single flight for refetches. A request whose `kid` is not in
    /// `cache` takes this lock, looks again (a request ahead of it may
    /// have fetched the key meanwhile), and only then fetches, if the
    /// cooldown allows. So a burst of tokens with an unknown `kid` causes
    /// at most one JWKS request per cooldown, the rest wait behind it and
    /// read its result; requests with known keys never touch this lock.
    refetch: tokio::sync::Mutex<()>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
}

impl SessionVerifier {
    /// Builds a verifier; no network traffic happens until the first token.
    /// `deadlines` bounds each JWKS fetch and spaces refetches.
    pub fn new(settings: &ClerkSettings, deadlines: &Deadlines, http: reqwest::Client) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_TOLERANCE_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss"]);
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer]);
        }
        validation.set_audience(&settings.audiences);
        SessionVerifier {
            issuer: settings.issuer.clone(),
            validation,
            http,
            deadlines: deadlines.clone(),
            cache: RwLock::default(),
            refetch: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether an issuer is configured at all.
    pub fn is_configured(&self) -> bool {
        self.issuer.is_some()
    }

    /// The Clerk user id (`sub`) that `token` proves.
    pub async fn validate(&self, token: &str) -> Result<String, SessionError> {
        let Some(issuer) = self.issuer.as_deref() else {
            tracing::warn!(
                "CLERK_JWT_ISSUER_DOMAIN is not set: session tokens cannot be verified (deployment fault)"
            );
            return Err(SessionError::Unverifiable);
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| SessionError::Invalid)?;
        if header.alg != Algorithm::RS256 {
            return Err(SessionError::Invalid);
        }
        let kid = header.kid.ok_or(SessionError::Invalid)?;
        let key = self.key(issuer, &kid).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|_| SessionError::Invalid)?;
        let claims = data.claims;
        // exp and nbf must be JSON numbers: a string must never pass as "present".
        if !claims.exp.as_ref().is_some_and(Value::is_number)
            || claims.nbf.as_ref().is_some_and(|nbf| !nbf.is_number())
        {
            return Err(SessionError::Invalid);
        }
        match claims.sub {
            Some(Value::String(sub)) if !sub.is_empty() => Ok(sub),
            _ => Err(SessionError::Invalid),
        }
    }

    fn cached_key(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        cache.keys.get(kid).cloned()
    }

    async fn key(&self, issuer: &str, kid: &str) -> Result<Arc<DecodingKey>, SessionError> {
        if let Some(key) = self.cached_key(kid) {
            return Ok(key);
        }
        let _refetching = self.refetch.lock().await;
        if let Some(key) = self.cached_key(kid) {
            return Ok(key);
        }
        let last_fetch = self
            .cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .last_fetch;
        let may_fetch = match last_fetch {
            None => true,
            Some((at, true)) => at.elapsed() >= self.deadlines.jwks_refetch_cooldown,
            Some((at, false)) => at.elapsed() >= self.deadlines.jwks_retry_after_failure,
        };
        if may_fetch {
            let fetched = self.fetch_keys(issuer).await;
            let mut cache = self
                .cache
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            match fetched {
                Ok(keys) => {
                    cache.keys = keys;
                    cache.last_fetch = Some((Instant::now(), true));
                }
                Err(reason) => {
                    tracing::warn!(
                        %reason,
                        "cannot fetch the issuer's JWKS (deployment fault); keeping {} cached keys",
                        cache.keys.len()
                    );
                    cache.last_fetch = Some((Instant::now(), false));
                }
            }
        }
        let cache = self
            .cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        match cache.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if cache.keys.is_empty() => Err(SessionError::Unverifiable),
            None => Err(SessionError::Invalid),
        }
    }

    async fn fetch_keys(&self, issuer: &str) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let url = format!("{issuer}/.well-known/jwks.json");
        let fetch = async {
            let response = self
                .http
                .get(&url)
                .send()
                .await
                .map_err(|err| err.without_url().to_string())?;
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            response
                .json::<JwkSet>()
                .await
                .map_err(|err| format!("not a JWKS: {}", err.without_url()))
        };
        let set = tokio::time::timeout(self.deadlines.jwks, fetch)
            .await
            .map_err(|_| "timed out".to_owned())??;
        let keys: HashMap<_, _> = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let kid = jwk.common.key_id.clone()?;
                let key = DecodingKey::from_jwk(jwk).ok()?;
                Some((kid, Arc::new(key)))
            })
            .collect();
        if keys.is_empty() {
            return Err("the JWKS holds no usable key".into());
        }
        Ok(keys)
    }
}

impl From<SessionError> for wit::SessionError {
    fn from(err: SessionError) -> Self {
        match err {
            SessionError::Invalid => wit::SessionError::Invalid,
            SessionError::Unverifiable => wit::SessionError::Unverifiable,
        }
    }
}

#[cfg(feature = "native-policy")]
impl From<SessionError> for keybust_guest::policy::SessionError {
    fn from(err: SessionError) -> Self {
        use keybust_guest::policy::SessionError as Policy;
        match err {
            SessionError::Invalid => Policy::Invalid,
            SessionError::Unverifiable => Policy::Unverifiable,
        }
    }
}
