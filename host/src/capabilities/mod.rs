//! The host side of the `keybust:gateway` imports, and how to add them to a
//! wasmtime [`Linker`].
//!
//! One module per WIT interface, each with its settings, its backends and,
//! in its `host.rs`, the guest's side of it (the WIT `Host` impl, its span
//! and what it counts): [`convex`], [`session`], [`cache`] and
//! [`origins`]. [`Capabilities`] bundles them. It is built once per process
//! and shared by every request; the guest reaches it only through the four
//! imported interfaces, so no secret crosses into the guest. A store may
//! have its guest's calls written down, or answered by a stand-in instead
//! of the backends ([`stand_in`], [`Effects`]): how a new version is
//! checked without side effects.

pub mod cache;
pub mod convex;
pub mod origins;
mod outbound;
pub mod session;
mod settings;
pub mod stand_in;

pub use self::settings::{InEffect, Settings, SettingsArgs};
pub use self::stand_in::{Answer, Effect, Effects, StandIn, Tape};

use self::cache::{Cache, CacheError};
use self::convex::ConvexClient;
use self::origins::{InvalidOriginPattern, OriginPolicy};
use self::session::SessionVerifier;
use crate::config::ConfigError;
use crate::deadlines::Deadlines;
use crate::metrics::{Backend, Capability, Metrics, NotReady, Outcome};
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
    pub session: SessionVerifier,
    /// The CORS allow-list.
    pub origins: OriginPolicy,
    /// Where calls, latencies and backend-caused 503s are counted: the
    /// assembler's registry ([`Capabilities::with_metrics`]).
    metrics: Arc<Metrics>,
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
            session: SessionVerifier::new(&settings.session, deadlines, http),
            origins: OriginPolicy::new(&settings.origins)?,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Counts the capabilities' calls into `metrics`, the registry the
    /// rest of the server counts into, so that one scrape shows both.
    /// Without it they count into a registry of their own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The registry these capabilities count into: an [`Endpoint`](crate::serve::endpoint::Endpoint)
    /// built on them counts there too, and an embedder serving them with
    /// its own linker exposes it.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
        if !self.session.is_configured() {
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

    /// Why requests cannot succeed now, if they cannot, each by its kind
    /// and in words: the configuration, the issuer's keys not fetched yet,
    /// the cache backend down.
    pub fn unready_reasons(&self) -> Vec<(NotReady, String)> {
        let mut reasons: Vec<_> = self
            .configuration_problems()
            .into_iter()
            .map(|problem| (NotReady::NotConfigured, problem))
            .collect();
        if self.session.is_configured() && self.session.keys_age().is_none() {
            reasons.push((
                NotReady::KeysNotFetched,
                "the token issuer's keys (JWKS) have not been fetched yet".to_owned(),
            ));
        }
        if let Some(problem) = self.cache.health().problem() {
            reasons.push((NotReady::CacheDown, problem));
        }
        reasons
    }

    /// Whether each backend answered when last asked: the cache's
    /// background check (and deletes), Convex's last call, the issuer's
    /// last key fetch. A backend not configured counts as down; one
    /// configured but not asked yet is left out.
    pub fn backends_up(&self) -> Vec<(Backend, bool)> {
        let mut up = vec![(
            Backend::Cache,
            self.cache.is_configured() && self.cache.health().problem().is_none(),
        )];
        match self.convex.is_configured() {
            false => up.push((Backend::Convex, false)),
            true => up.extend(self.convex.answered().map(|ok| (Backend::Convex, ok))),
        }
        match self.session.is_configured() {
            false => up.push((Backend::Issuer, false)),
            true => up.extend(
                self.session
                    .issuer_answered()
                    .map(|ok| (Backend::Issuer, ok)),
            ),
        }
        up
    }

    /// Starts what readiness needs to know in the background, for as long
    /// as these capabilities live: the issuer's keys are fetched now (and
    /// again until that works), and the cache backend is checked every
    /// `deadlines.cache_check_interval`. Needs a tokio runtime.
    pub fn start_background_checks(&self, deadlines: &Deadlines) {
        self.cache.watch_health(deadlines.cache_check_interval);
        self.session.prefetch_keys();
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

    /// How this store's guest reaches the backends: through the
    /// capabilities (as for every request a client sent), through them
    /// with each call written down (a request a candidate shadows), or
    /// not at all (the contract gate's runs, a shadow's replay).
    fn effects(&self) -> Effects {
        Effects::Live
    }
}

struct HasCapabilities;

impl HasData for HasCapabilities {
    type Data<'a> = CapabilityCall<'a>;
}

/// One guest call into the capabilities, with the span it belongs under,
/// or into the stand-in that answers in their place.
struct CapabilityCall<'a> {
    capabilities: &'a Arc<Capabilities>,
    span: Option<tracing::Span>,
    stand_in: Option<Arc<dyn StandIn>>,
    tape: Option<Arc<Tape>>,
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
        capability: Capability,
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
                let name = capability.as_str();
                if err.is_panic() {
                    tracing::error!(capability = name, error = %err, "a capability call panicked in the host");
                } else {
                    tracing::debug!(capability = name, error = %err, "a capability call was cancelled");
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
    bindings::Capabilities::add_to_linker::<T, HasCapabilities>(linker, |state| {
        let (stand_in, tape) = match state.effects() {
            Effects::Live => (None, None),
            Effects::Recorded(tape) => (None, Some(tape)),
            Effects::StandIn(stand_in) => (Some(stand_in), None),
        };
        CapabilityCall {
            capabilities: state.capabilities(),
            span: state.call_span(),
            stand_in,
            tape,
        }
    })
}
