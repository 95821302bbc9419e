//! The host side of the `keybust:gateway` imports, and how to add them to a
//! wasmtime [`Linker`].
//!
//! One module per WIT interface, each with its settings and backends:
//! [`convex`], [`session`], [`cache`] and [`origins`]. [`Capabilities`]
//! bundles them. It is built once per process and shared by every request;
//! the guest reaches it only through the four imported interfaces, so no
//! secret crosses into the guest.

pub mod cache;
pub mod convex;
pub mod origins;
mod outbound;
pub mod session;
mod settings;

pub use self::settings::{Settings, SettingsArgs};

use self::cache::{Cache, CacheError};
use self::convex::{ConvexClient, ConvexError};
use self::origins::{InvalidOriginPattern, OriginPolicy};
use self::session::{SessionError, SessionVerifier};
use crate::config::ConfigError;
use crate::deadlines::Deadlines;
use crate::metrics::{Metrics, Outcome};
use crate::telemetry::TRACE_TARGET;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;
use wasmtime::component::{HasData, Linker};

/// Bindings generated from `wit/keybust.wit`'s `capabilities` world.
#[allow(missing_docs, reason = "generated; the WIT documents each item")]
pub mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "keybust:gateway/capabilities",
        imports: { default: async },
    });
}

use bindings::keybust::gateway::{
    cache as wit_cache, convex as wit_convex, origins as wit_origins, session as wit_session,
};

/// Why the capabilities could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// A setting is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An allowed-origin pattern does not compile.
    #[error(transparent)]
    Origins(#[from] InvalidOriginPattern),
    /// The cache backend cannot be set up.
    #[error("cache: {0}")]
    Cache(#[from] CacheError),
    /// The HTTP client cannot be set up.
    #[error("http client: {0}")]
    Http(#[from] reqwest::Error),
    /// The TLS of the Convex client cannot be set up (the platform's
    /// certificate verifier is unavailable).
    #[error("Convex client TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Everything the endpoint component may ask of its host.
pub struct Capabilities {
    /// Convex HTTP actions, for the owner lookup.
    pub convex: ConvexClient,
    /// The gateway's key cache.
    pub cache: Cache,
    /// Clerk session verification.
    pub sessions: SessionVerifier,
    /// The CORS allow-list.
    pub origins: OriginPolicy,
    /// Where calls, latencies and outcomes are counted.
    pub metrics: Arc<Metrics>,
}

impl Capabilities {
    /// Builds the capabilities from the process environment, under the
    /// variable names `keybust serve --help` lists.
    pub fn from_env() -> Result<Self, SetupError> {
        Self::from_settings(&Settings::from_env()?)
    }

    /// Builds the capabilities from explicit settings.
    pub fn from_settings(settings: &Settings) -> Result<Self, SetupError> {
        let deadlines = &settings.deadlines;
        let http = outbound::outbound_client(deadlines)?;
        Ok(Capabilities {
            convex: ConvexClient::new(&settings.convex, deadlines, http.clone())?,
            cache: Cache::from_settings(&settings.cache, deadlines, http.clone())?,
            sessions: SessionVerifier::new(&settings.clerk, deadlines, http),
            origins: OriginPolicy::new(&settings.origins)?,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Replaces the cache, for embedders with a backend of their own
    /// (any [`cache::CacheBackend`], wrapped with [`Cache::new`]).
    pub fn with_cache(mut self, cache: Cache) -> Self {
        self.cache = cache;
        self
    }

    /// What the settings leave out that requests need: warned about at
    /// start, and part of [`Capabilities::unready_reasons`].
    pub fn configuration_problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !self.convex.is_configured() {
            problems.push("CONVEX_SITE_URL or CONVEX_SERVER_SHARED_SECRET is not set".to_owned());
        }
        if !self.sessions.is_configured() {
            problems.push("CLERK_JWT_ISSUER_DOMAIN is not set".to_owned());
        }
        if !self.cache.is_configured() {
            problems.push(
                "no cache backend is configured (REDIS_URL or UPSTASH_*); \
                 KEYBUST_CACHE=embedded chooses the in-process store on purpose"
                    .to_owned(),
            );
        }
        problems
    }

    /// Why requests cannot succeed now, if they cannot: the configuration,
    /// the issuer's keys not fetched yet, the cache backend down.
    pub fn unready_reasons(&self) -> Vec<String> {
        let mut reasons = self.configuration_problems();
        if self.sessions.is_configured() && self.sessions.keys_age().is_none() {
            reasons.push("the token issuer's keys (JWKS) have not been fetched yet".to_owned());
        }
        if let Some(problem) = self.cache.health().problem() {
            reasons.push(problem);
        }
        reasons
    }

    /// Starts what readiness needs to know in the background, for as long
    /// as these capabilities live: the issuer's keys are fetched now (and
    /// again until that works), and the cache backend is checked every
    /// `deadlines.cache_check_interval`. Needs a tokio runtime.
    pub fn start_background_checks(&self, deadlines: &Deadlines) {
        self.cache.watch_health(deadlines.cache_check_interval);
        self.sessions.prefetch_keys();
    }
}

/// Gives the linker access to [`Capabilities`] from an embedder's store data,
/// the way `wasmtime_wasi::WasiView` does for WASI.
pub trait CapabilitiesView: Send {
    /// The capabilities this store's guest may use. Shared (`Arc`) because
    /// each backend call runs as a task of its own, which holds them.
    fn capabilities(&self) -> &Arc<Capabilities>;

    /// The span the capabilities' spans belong under, when it is not the
    /// one current where the guest runs: a reused instance runs in a task
    /// of its own, not in the request's. `None`: the current span.
    fn call_span(&self) -> Option<tracing::Span> {
        None
    }
}

struct HasCapabilities;

impl HasData for HasCapabilities {
    type Data<'a> = CapabilityCall<'a>;
}

/// One guest call into the capabilities, with the span it belongs under.
struct CapabilityCall<'a> {
    capabilities: &'a Arc<Capabilities>,
    span: Option<tracing::Span>,
}

impl CapabilityCall<'_> {
    /// Runs a backend call as a tokio task of its own, in the call's span
    /// (or the current one), and waits for it.
    ///
    /// Why a task: an async host function is polled on the instance's fiber
    /// stack, and the stack pages a call touches stay resident in its
    /// pooling slot. Polled there, the Convex and Redis clients and the
    /// token check touched about 50 KiB of each request's fiber stack, for
    /// every request in flight and every slot ever used; as a task, the
    /// fiber only waits on the task's handle. A panic in the call becomes
    /// the capability's failure instead of unwinding through the guest, and
    /// the task is aborted when the guest's call is dropped (the request's
    /// deadline, a trap): `None`, counted as the capability's error.
    /// Outside a tokio runtime the call runs in place.
    async fn in_task<F>(
        &mut self,
        capability: &'static str,
        work: impl FnOnce(Arc<Capabilities>) -> F,
    ) -> Option<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let started = Instant::now();
        let span = self.span.take().unwrap_or_else(tracing::Span::current);
        let work = work(self.capabilities.clone()).instrument(span);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Some(work.await);
        };
        let mut task = AbortOnDrop(runtime.spawn(work));
        match (&mut task.0).await {
            Ok(output) => Some(output),
            Err(err) => {
                if err.is_panic() {
                    tracing::error!(capability, error = %err, "a capability call panicked in the host");
                } else {
                    tracing::debug!(capability, error = %err, "a capability call was cancelled");
                }
                self.capabilities
                    .metrics
                    .capability(capability, Outcome::Error, started.elapsed());
                None
            }
        }
    }
}

/// A task handle that aborts its task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Adds the four `keybust:gateway` interfaces to `linker`.
///
/// The backend calls run as tasks on the current tokio runtime, so the
/// runtime must run spawned tasks while the guest waits: any multi-thread
/// runtime, or a current-thread one driven by its `Runtime::block_on`.
pub fn add_to_linker<T: CapabilitiesView + 'static>(
    linker: &mut Linker<T>,
) -> wasmtime::Result<()> {
    bindings::Capabilities::add_to_linker::<T, HasCapabilities>(linker, |state| CapabilityCall {
        capabilities: state.capabilities(),
        span: state.call_span(),
    })
}

impl wit_convex::Host for CapabilityCall<'_> {
    async fn post(
        &mut self,
        path: String,
        body: Vec<u8>,
    ) -> Result<wit_convex::ConvexResponse, wit_convex::ConvexError> {
        match self
            .in_task("convex", |capabilities| async move {
                capabilities.convex_post(path, body).await
            })
            .await
        {
            Some(result) => result,
            None => {
                // A 503 from the component, as any backend failure.
                self.capabilities.metrics.unavailable("backend");
                Err(wit_convex::ConvexError::Transport)
            }
        }
    }
}

impl wit_cache::Host for CapabilityCall<'_> {
    async fn delete(&mut self, key: String) -> Result<(), wit_cache::CacheError> {
        match self
            .in_task("cache", |capabilities| async move {
                capabilities.cache_delete(key).await
            })
            .await
        {
            Some(result) => result,
            None => {
                // A 503 from the component, as any backend failure.
                self.capabilities.metrics.unavailable("backend");
                Err(wit_cache::CacheError::Unavailable)
            }
        }
    }
}

impl wit_session::Host for CapabilityCall<'_> {
    async fn validate(&mut self, token: String) -> Result<String, wit_session::SessionError> {
        self.in_task("session", |capabilities| async move {
            capabilities.session_validate(token).await
        })
        .await
        .unwrap_or(Err(wit_session::SessionError::Unverifiable))
    }
}

impl wit_origins::Host for CapabilityCall<'_> {
    async fn is_allowed(&mut self, origin: String) -> bool {
        let _inside = self.span.as_ref().map(|span| span.enter());
        self.capabilities.origins_is_allowed(&origin)
    }

    async fn default_origin(&mut self) -> String {
        let _inside = self.span.as_ref().map(|span| span.enter());
        self.capabilities.origins_default_origin()
    }
}

/// The imports' host side, each traced and counted.
impl Capabilities {
    async fn convex_post(
        &self,
        path: String,
        body: Vec<u8>,
    ) -> Result<wit_convex::ConvexResponse, wit_convex::ConvexError> {
        let started = Instant::now();
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "convex.post",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.response.status_code = tracing::field::Empty,
        );
        let result = self.convex.post(&path, body).instrument(span.clone()).await;
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", response.status);
                if !(200..300).contains(&response.status) {
                    span.record("otel.status_code", "error");
                }
            }
            Err(_) => {
                span.record("otel.status_code", "error");
            }
        }
        let outcome = match &result {
            Ok(response) if (200..300).contains(&response.status) => Outcome::Ok,
            Err(ConvexError::ForbiddenPath) => Outcome::Forbidden,
            _ => Outcome::Error,
        };
        self.metrics
            .capability("convex", outcome, started.elapsed());
        // Each of these is a 503 from the component.
        match &result {
            Err(ConvexError::NotConfigured) => self.metrics.unavailable("not_configured"),
            Err(ConvexError::ForbiddenPath) => self.metrics.unavailable("forbidden"),
            Err(_) => self.metrics.unavailable("backend"),
            Ok(response) if !(200..300).contains(&response.status) => {
                self.metrics.unavailable("backend")
            }
            Ok(_) => {}
        }
        result.map(Into::into).map_err(Into::into)
    }

    async fn cache_delete(&self, key: String) -> Result<(), wit_cache::CacheError> {
        let started = Instant::now();
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "cache.delete",
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            cache.backend = self.cache.backend_name(),
        );
        let result = self.cache.delete(&key).instrument(span.clone()).await;
        if result.is_err() {
            span.record("otel.status_code", "error");
        }
        let outcome = match &result {
            Ok(()) => Outcome::Ok,
            Err(CacheError::Forbidden) => Outcome::Forbidden,
            Err(_) => Outcome::Error,
        };
        self.metrics.capability("cache", outcome, started.elapsed());
        match outcome {
            Outcome::Forbidden => self.metrics.unavailable("forbidden"),
            Outcome::Error => self.metrics.unavailable("backend"),
            Outcome::Ok => {}
        }
        result.map_err(Into::into)
    }

    async fn session_validate(&self, token: String) -> Result<String, wit_session::SessionError> {
        let started = Instant::now();
        let span = tracing::info_span!(
            target: TRACE_TARGET,
            "session.validate",
            otel.status_code = tracing::field::Empty,
            session.outcome = tracing::field::Empty,
            jwks.refetched = tracing::field::Empty,
        );
        let mut fetched = false;
        let result = self
            .sessions
            .validate_noting_fetch(&token, &mut fetched)
            .instrument(span.clone())
            .await;
        span.record("jwks.refetched", fetched);
        span.record(
            "session.outcome",
            match &result {
                Ok(_) => "valid",
                Err(SessionError::Invalid) => "invalid",
                Err(SessionError::Unverifiable) => "unverifiable",
            },
        );
        if result == Err(SessionError::Unverifiable) {
            span.record("otel.status_code", "error");
        }
        // An invalid token is the capability working; only "cannot verify" is a fault.
        let outcome = if result == Err(SessionError::Unverifiable) {
            Outcome::Error
        } else {
            Outcome::Ok
        };
        self.metrics
            .capability("session", outcome, started.elapsed());
        result.map_err(Into::into)
    }

    fn origins_is_allowed(&self, origin: &str) -> bool {
        let started = Instant::now();
        let _span = tracing::info_span!(target: TRACE_TARGET, "origins.is_allowed").entered();
        let allowed = self.origins.is_allowed(origin);
        self.metrics
            .capability("origins", Outcome::Ok, started.elapsed());
        allowed
    }

    fn origins_default_origin(&self) -> String {
        let started = Instant::now();
        let _span = tracing::info_span!(target: TRACE_TARGET, "origins.default_origin").entered();
        let origin = self.origins.default_origin().to_owned();
        self.metrics
            .capability("origins", Outcome::Ok, started.elapsed());
        origin
    }
}
