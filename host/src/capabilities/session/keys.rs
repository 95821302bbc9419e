//! The issuer's signing keys: fetched, kept parsed, and fetched again when
//! a token names a key we do not have or when the set has grown old.
//!
//! * **Unknown key id.** The request takes the single-flight lock, looks
//!   again (a request ahead of it may have fetched the key meanwhile), and
//!   only then fetches, if the cooldown allows. A burst of tokens with a
//!   made-up `kid` costs at most one JWKS request per cooldown; the others
//!   wait behind it and read its result.
//! * **Old set.** Keys older than `--jwks-max-age` still verify the request
//!   that notices, which starts one refetch in the background: a key the
//!   issuer has removed stops being trusted soon after, without any request
//!   waiting on the issuer.
//! * **Issuer down.** Keys already fetched keep working; a failed fetch is
//!   retried no sooner than `jwks_retry_after_failure`.

use super::SessionError;
use crate::capabilities::outbound::{ErrorChain, read_bounded};
use crate::deadlines::Deadlines;
use crate::telemetry::TRACE_TARGET;
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::JwkSet;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tracing::Instrument;

/// The most JWKS the host reads; a real key set is a few KiB.
pub const MAX_JWKS_BYTES: usize = 256 * 1024;

/// The keys of one issuer, shared by every request.
#[derive(Clone)]
pub(super) struct IssuerKeys {
    shared: Arc<Shared>,
}

struct Shared {
    jwks_url: String,
    http: reqwest::Client,
    deadlines: Deadlines,
    /// What every request reads. A `std` read-write lock: held only for a
    /// map lookup or a swap of the whole map, never across an `.await`, so
    /// readers never wait on the network.
    cache: RwLock<KeyCache>,
    /// Single flight for fetches: whoever fetches holds it for the fetch.
    /// Requests for unknown keys wait on it; the background refresh only
    /// tries it, and stands down if a fetch is already under way.
    fetching: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, Arc<DecodingKey>>,
    /// When the keys in `keys` were fetched.
    fetched_at: Option<Instant>,
    /// When the last fetch was tried, and whether it worked.
    last_attempt: Option<(Instant, bool)>,
}

impl KeyCache {
    /// Whether the cooldowns allow another fetch now.
    fn may_fetch(&self, deadlines: &Deadlines) -> bool {
        match self.last_attempt {
            None => true,
            Some((at, true)) => at.elapsed() >= deadlines.jwks_refetch_cooldown,
            Some((at, false)) => at.elapsed() >= deadlines.jwks_retry_after_failure,
        }
    }

    fn is_old(&self, deadlines: &Deadlines) -> bool {
        self.fetched_at
            .is_some_and(|at| at.elapsed() >= deadlines.jwks_max_age)
    }
}

impl IssuerKeys {
    /// The keys `{issuer}/.well-known/jwks.json` publishes; nothing is
    /// fetched yet.
    pub(super) fn new(issuer: &str, http: reqwest::Client, deadlines: &Deadlines) -> Self {
        IssuerKeys {
            shared: Arc::new(Shared {
                jwks_url: format!("{issuer}/.well-known/jwks.json"),
                http,
                deadlines: deadlines.clone(),
                cache: RwLock::default(),
                fetching: Arc::default(),
            }),
        }
    }

    /// Whether the last fetch of the keys worked; `None` before the first.
    pub(super) fn last_fetch_worked(&self) -> Option<bool> {
        self.shared.read().last_attempt.map(|(_, worked)| worked)
    }

    /// The key `kid` names, fetching the set if it is not known yet;
    /// `fetched` is set when this call fetched, or waited for a fetch.
    pub(super) async fn key(
        &self,
        kid: &str,
        fetched: &mut bool,
    ) -> Result<Arc<DecodingKey>, SessionError> {
        if let Some(key) = self.cached(kid) {
            return Ok(key);
        }
        let _fetching = self.shared.fetching.lock().await;
        if let Some(key) = self.cached(kid) {
            // Fetched by whoever held the lock.
            *fetched = true;
            return Ok(key);
        }
        if self.shared.read().may_fetch(&self.shared.deadlines) {
            *fetched = true;
            self.shared.fetch_and_store().await;
        }
        let cache = self.shared.read();
        match cache.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if cache.keys.is_empty() => Err(SessionError::Unverifiable),
            None => Err(SessionError::Invalid),
        }
    }

    /// Fetches the set in the background until one fetch has worked; the
    /// task holds only a weak reference. Needs a tokio runtime.
    pub(super) fn prefetch(&self) {
        let shared = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            loop {
                let Some(live) = shared.upgrade() else { return };
                if live.read().fetched_at.is_some() {
                    return;
                }
                let retry = live.deadlines.jwks_retry_after_failure;
                {
                    let _fetching = live.fetching.lock().await;
                    if live.read().fetched_at.is_none() {
                        live.fetch_and_store().await;
                    }
                }
                drop(live);
                tokio::time::sleep(retry).await;
            }
        });
    }

    /// How old the keys are; `None` before the first successful fetch.
    pub(super) fn age(&self) -> Option<Duration> {
        self.shared.read().fetched_at.map(|at| at.elapsed())
    }

    /// The key, when cached; an old set also starts a background refetch.
    fn cached(&self, kid: &str) -> Option<Arc<DecodingKey>> {
        let (key, refresh) = {
            let cache = self.shared.read();
            let key = cache.keys.get(kid).cloned()?;
            let refresh =
                cache.is_old(&self.shared.deadlines) && cache.may_fetch(&self.shared.deadlines);
            (key, refresh)
        };
        if refresh {
            self.refresh_in_background();
        }
        Some(key)
    }

    fn refresh_in_background(&self) {
        let Ok(fetching) = self.shared.fetching.clone().try_lock_owned() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = self.shared.clone();
        runtime.spawn(async move {
            let _fetching = fetching;
            if shared.read().may_fetch(&shared.deadlines) {
                shared.fetch_and_store().await;
            }
        });
    }
}

impl Shared {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, KeyCache> {
        self.cache
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Fetches the set and replaces the cached one; on failure the cached
    /// keys stay. The caller holds `fetching`.
    async fn fetch_and_store(&self) {
        let fetched = self.fetch().await;
        let mut cache = self
            .cache
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let now = Instant::now();
        match fetched {
            Ok(keys) => {
                cache.keys = keys;
                cache.fetched_at = Some(now);
                cache.last_attempt = Some((now, true));
            }
            Err(reason) => {
                tracing::warn!(
                    %reason,
                    "cannot fetch the issuer's JWKS (deployment fault); keeping {} cached keys",
                    cache.keys.len()
                );
                cache.last_attempt = Some((now, false));
            }
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "jwks.fetch",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "GET",
            http.response.status_code = tracing::field::Empty,
        );
        let fetched = self.fetch_in_span().instrument(span.clone()).await;
        if fetched.is_err() {
            span.record("otel.status_code", "error");
        }
        fetched
    }

    async fn fetch_in_span(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let fetch = async {
            let response = self
                .http
                .get(&self.jwks_url)
                .headers(crate::telemetry::outgoing_headers())
                .send()
                .await
                .map_err(|err| ErrorChain(&err.without_url()).to_string())?;
            tracing::Span::current()
                .record("http.response.status_code", response.status().as_u16());
            if !response.status().is_success() {
                return Err(format!("HTTP {}", response.status().as_u16()));
            }
            let body = read_bounded(response, MAX_JWKS_BYTES)
                .await
                .map_err(|err| err.to_string())?;
            serde_json::from_slice::<JwkSet>(&body).map_err(|err| format!("not a JWKS: {err}"))
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
