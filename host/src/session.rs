//! The `session` capability: Clerk session tokens, verified against the
//! issuer's JWKS.
//!
//! Keys are fetched once, kept parsed, and fetched again only when a token
//! names a key id we do not have, at most once per cooldown: a flood of
//! tokens with made-up key ids costs one JWKS request, not one per token.
//! When the issuer is unreachable, keys already fetched keep working.

use crate::config::ClerkSettings;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

/// Clock skew tolerated on `exp` and `nbf`.
pub const CLOCK_TOLERANCE_SECS: u64 = 5;

/// The least time between two JWKS fetches caused by unknown key ids.
pub const REFETCH_COOLDOWN: Duration = Duration::from_secs(30);

/// The least time between two JWKS fetches after one failed.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// How long one JWKS fetch may take.
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(3);

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
    cache: RwLock<KeyCache>,
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
    pub fn new(settings: &ClerkSettings, http: reqwest::Client) -> Self {
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
            Some((at, true)) => at.elapsed() >= REFETCH_COOLDOWN,
            Some((at, false)) => at.elapsed() >= RETRY_AFTER_FAILURE,
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
        let set = tokio::time::timeout(JWKS_TIMEOUT, fetch)
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
