//! The `session` capability: Clerk session tokens, verified against the
//! issuer's JWKS (contract, "Session tokens").
//!
//! The token's signature is checked against the issuer's keys (`keys.rs`
//! explains how they are fetched and refreshed); its claims against the
//! contract's rules, by their exact JSON types.

mod host;
mod keys;

use self::keys::IssuerKeys;
use super::bindings::keybust::gateway::session as wit;
use crate::config::{ConfigError, PlainHttp, http_url, non_empty, split_list};
use crate::deadlines::Deadlines;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::Value;

/// Clock skew tolerated on `exp` and `nbf` (contract rule S6).
pub const CLOCK_TOLERANCE_SECS: u64 = 5;

/// The `aud` every deployment accepts, besides the configured ones.
pub const DEFAULT_AUDIENCE: &str = "convex";

/// Who issues session tokens and for whom.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// `CLERK_JWT_ISSUER_DOMAIN`, without a trailing slash; unset: every
    /// token is refused as unverifiable.
    pub issuer: Option<String>,
    /// The `aud` values accepted: always [`DEFAULT_AUDIENCE`], plus
    /// `CLERK_JWT_AUDIENCE` and `CLERK_PUBLISHABLE_KEY`. A token without
    /// `aud` is accepted.
    pub audiences: Vec<String>,
}

impl Default for SessionSettings {
    /// No issuer; the default audience only.
    fn default() -> Self {
        SessionSettings {
            issuer: None,
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        }
    }
}

/// The session-token settings, as flags with environment twins.
#[derive(Debug, Clone, clap::Args)]
pub struct SessionArgs {
    /// Token issuer, e.g. <https://clerk.example.com>; keys come from
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

impl SessionArgs {
    /// The issuer must be an https URL (plain http only to loopback,
    /// unless `plain` allows it: whoever serves the JWKS can forge
    /// sessions); the configured audiences are added to `convex`.
    pub fn settings(&self, plain: PlainHttp) -> Result<SessionSettings, ConfigError> {
        let mut settings = SessionSettings {
            issuer: non_empty(self.clerk_jwt_issuer_domain.clone())
                .map(|url| http_url("CLERK_JWT_ISSUER_DOMAIN", url, plain))
                .transpose()?,
            ..SessionSettings::default()
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

/// Verifies Clerk session tokens.
pub struct SessionVerifier {
    issuer: Option<(String, IssuerKeys)>,
    audiences: Vec<String>,
    validation: Validation,
}

/// The claims keybust checks itself, as sent: jsonwebtoken is lenient
/// about their types, the contract is not.
#[derive(Deserialize)]
struct Claims {
    sub: Option<Value>,
    exp: Option<Value>,
    nbf: Option<Value>,
    iss: Option<Value>,
    aud: Option<Value>,
}

impl SessionVerifier {
    /// Builds a verifier; no network traffic happens until the first token.
    /// `deadlines` bounds each JWKS fetch and spaces refetches.
    pub fn new(settings: &SessionSettings, deadlines: &Deadlines, http: reqwest::Client) -> Self {
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = CLOCK_TOLERANCE_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss"]);
        // `iss` and `aud` are checked below, by their exact JSON types.
        validation.validate_aud = false;
        SessionVerifier {
            issuer: settings
                .issuer
                .as_ref()
                .map(|issuer| (issuer.clone(), IssuerKeys::new(issuer, http, deadlines))),
            audiences: settings.audiences.clone(),
            validation,
        }
    }

    /// Whether an issuer is configured at all.
    pub fn is_configured(&self) -> bool {
        self.issuer.is_some()
    }

    /// Fetches the issuer's keys in the background now, and again every
    /// `jwks_retry_after_failure` until a fetch works, so the first
    /// request does not wait on the issuer and readiness can tell.
    pub fn prefetch_keys(&self) {
        if let Some((_, keys)) = &self.issuer {
            keys.prefetch();
        }
    }

    /// Whether the issuer answered the last fetch of its keys; `None`
    /// before the first, or with no issuer.
    pub fn issuer_answered(&self) -> Option<bool> {
        self.issuer
            .as_ref()
            .and_then(|(_, keys)| keys.last_fetch_worked())
    }

    /// How old the issuer's keys are; `None` before the first fetch.
    pub fn keys_age(&self) -> Option<std::time::Duration> {
        self.issuer.as_ref().and_then(|(_, keys)| keys.age())
    }

    /// The Clerk user id (`sub`) that `token` proves (contract, "Session
    /// tokens").
    pub async fn validate(&self, token: &str) -> Result<String, SessionError> {
        self.validate_noting_fetch(token, &mut false).await
    }

    /// [`SessionVerifier::validate`], setting `fetched` when the issuer's
    /// keys were fetched for this token (or a fetch under way was waited
    /// for), which its trace span reports.
    pub(crate) async fn validate_noting_fetch(
        &self,
        token: &str,
        fetched: &mut bool,
    ) -> Result<String, SessionError> {
        let Some((issuer, keys)) = &self.issuer else {
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
        let key = keys.key(&kid, fetched).await?;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation)
            .map_err(|_| SessionError::Invalid)?;
        let claims = data.claims;
        // exp and nbf must be JSON numbers: a string must never pass as "present".
        if !claims.exp.as_ref().is_some_and(Value::is_number)
            || claims.nbf.as_ref().is_some_and(|nbf| !nbf.is_number())
        {
            return Err(SessionError::Invalid);
        }
        if claims.iss.as_ref().and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(SessionError::Invalid);
        }
        if !audience_accepted(claims.aud.as_ref(), &self.audiences) {
            return Err(SessionError::Invalid);
        }
        match claims.sub {
            Some(Value::String(sub)) if !sub.is_empty() => Ok(sub),
            _ => Err(SessionError::Invalid),
        }
    }
}

/// A token without `aud` is accepted; one with `aud` must give a string, or
/// an array of strings, naming an accepted audience. Any other type fails.
fn audience_accepted(aud: Option<&Value>, accepted: &[String]) -> bool {
    let accepts = |value: &str| accepted.iter().any(|a| a == value);
    match aud {
        None => true,
        Some(Value::String(aud)) => accepts(aud),
        Some(Value::Array(items)) => {
            items.iter().all(Value::is_string)
                && items.iter().filter_map(Value::as_str).any(accepts)
        }
        Some(_) => false,
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

#[cfg(test)]
mod tests {
    use super::audience_accepted;
    use serde_json::json;

    #[test]
    fn audience_types() {
        let accepted = ["convex".to_owned(), "pk_1".to_owned()];
        assert!(audience_accepted(None, &accepted));
        assert!(audience_accepted(Some(&json!("convex")), &accepted));
        assert!(audience_accepted(
            Some(&json!(["other", "pk_1"])),
            &accepted
        ));
        assert!(!audience_accepted(Some(&json!("other")), &accepted));
        assert!(!audience_accepted(Some(&json!(["other"])), &accepted));
        assert!(!audience_accepted(Some(&json!([])), &accepted));
        assert!(!audience_accepted(Some(&json!(["convex", 7])), &accepted));
        assert!(!audience_accepted(Some(&json!(7)), &accepted));
        assert!(!audience_accepted(
            Some(&json!({ "convex": true })),
            &accepted
        ));
        assert!(!audience_accepted(Some(&json!(null)), &accepted));
    }
}
