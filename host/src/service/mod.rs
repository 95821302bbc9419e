//! The whole server as one value: the endpoint on its public listener, the
//! admin and metrics planes, TLS kept current, the component followed,
//! watched and re-read on SIGHUP, and the drain on shutdown.
//!
//! `keybust serve` and `keybust dev` are a [`ServiceConfig`] and two calls,
//! [`Service::build`] and [`Service::run`]; the tests' in-process stacks
//! start the same value. Building does everything that can fail (settings,
//! the first component, binding the listeners), so a service that was
//! built serves; running takes the future that says when to stop:
//!
//! 1. the shutdown future resolves (SIGTERM, say): `/readyz` turns 503 at
//!    once, and the public listener keeps accepting for `shutdown_delay`,
//!    the time a load balancer needs to notice;
//! 2. the public listener closes, and requests in flight get
//!    `shutdown_grace` to finish;
//! 3. `run` returns. The admin planes answer until then.

mod start;

use crate::admin::{self, AdminPolicy};
use crate::capabilities::Settings;
use crate::metrics::ListenerName;
use crate::rollout::source::ComponentSource;
use crate::serve::endpoint::Endpoint;
use crate::serve::endpoint::{EndpointConfig, EndpointError};
use crate::serve::server;
use crate::serve::tls::{Acceptor, Certificates};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

#[cfg(feature = "registry")]
use crate::rollout::registry::Registry;

/// What a service is built from: plain values, so that a caller builds one
/// from its own settings (the binary from its flags, a test by hand).
pub struct ServiceConfig {
    /// The public listener's address; unused when `listeners.public` is given.
    pub listen: SocketAddr,
    /// The admin planes; none: only the public listener.
    pub admin: Option<AdminConfig>,
    /// The component served first.
    pub component: ComponentSource,
    /// With a registry tag as the component, how often to look where it
    /// points ([`crate::rollout::follow`]); none: it is pulled once.
    pub follow_interval: Option<Duration>,
    /// Where `oci://` components are pulled from, and whether they must
    /// be signed.
    #[cfg(feature = "registry")]
    pub registry: Option<Registry>,
    /// The certificate pair, for the listeners it names.
    pub tls: Option<Arc<Certificates>>,
    /// The capabilities' settings.
    pub settings: Settings,
    /// Precompiled code, history and limits.
    pub endpoint: EndpointConfig,
    /// After the shutdown future resolves, how long the public listener
    /// keeps accepting while `/readyz` answers 503.
    pub shutdown_delay: Duration,
    /// Time requests in flight get once the public listener has closed.
    pub shutdown_grace: Duration,
    /// Sockets opened already (passed by a service manager); a listener
    /// given here is used instead of binding its address.
    pub listeners: Listeners,
}

/// The admin listener, and the probes-only one.
pub struct AdminConfig {
    /// The admin listener's address.
    pub listen: SocketAddr,
    /// Who may change what serves.
    pub policy: AdminPolicy,
    /// A listener that answers only `/healthz`, `/readyz` and `/metrics`;
    /// none: no such listener, unless `listeners.metrics` is given.
    pub metrics_listen: Option<SocketAddr>,
}

/// Listeners opened before the service is built.
#[derive(Default)]
pub struct Listeners {
    /// The public one.
    pub public: Option<TcpListener>,
    /// The admin one.
    pub admin: Option<TcpListener>,
    /// The probes-only one; given without `metrics_listen`, it is served.
    pub metrics: Option<TcpListener>,
}

/// Why a service could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The settings contradict each other or cannot be used.
    #[error("{0}")]
    Invalid(String),
    /// The follow interval is outside the bounds a follower takes.
    #[cfg(feature = "registry")]
    #[error(transparent)]
    Follow(#[from] crate::rollout::follow::IntervalError),
    /// The capabilities could not be set up.
    #[error("invalid configuration: {0}")]
    Capabilities(#[from] crate::capabilities::SetupError),
    /// The first component could not be had or does not serve.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// A listener could not be opened.
    #[error(
        "cannot listen on {addr} ({setting}): {source}{}",
        busy_hint(source, setting)
    )]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The setting that names it.
        setting: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A signal handler could not be installed.
    #[error("cannot handle signals: {0}")]
    Signals(#[source] std::io::Error),
}

/// What to do about an address another process holds: most often a second
/// keybust (or `keybust dev`) on the same machine.
fn busy_hint(source: &std::io::Error, setting: &str) -> String {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            "; another process (a second keybust?) holds it: stop it, or choose another address with {setting}"
        )
    } else {
        String::new()
    }
}

/// A listener and, when it speaks TLS, how it accepts.
struct Listening {
    listener: TcpListener,
    tls: Option<Acceptor>,
}

impl Listening {
    /// `https://ADDR` or `http://ADDR`.
    fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        match self.listener.local_addr() {
            Ok(addr) => format!("{scheme}://{addr}"),
            Err(_) => format!("{scheme}://?"),
        }
    }
}

/// A built service: the endpoint loaded, its listeners bound, its
/// follower, watchers and SIGHUP handler running. Nothing is served until
/// [`Service::run`].
pub struct Service {
    endpoint: Arc<Endpoint>,
    public: Listening,
    /// The admin listener and the probes-only one, each with its policy.
    planes: Vec<(Listening, AdminPolicy)>,
    shutdown_delay: Duration,
    shutdown_grace: Duration,
    /// File watchers (component, TLS): dropping one ends its watch, so
    /// they live as long as the service.
    _watchers: Vec<notify::RecommendedWatcher>,
}

impl Service {
    /// Loads the first component, binds every listener and starts what
    /// runs beside the requests (follower, watchers, background checks,
    /// the SIGHUP handler). Needs a tokio runtime.
    pub async fn build(config: ServiceConfig) -> Result<Service, ServiceError> {
        start::build(config).await
    }

    /// The endpoint, for what the listeners do not do (a swap from the
    /// embedder's own code, a look at readiness).
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// The public listener's address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.public.listener.local_addr()
    }

    /// One `"<listener> listening on <url>"` line per listener, the public
    /// one last, as `keybust serve` prints them.
    pub fn listening_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .planes
            .iter()
            .map(|(plane, policy)| {
                let what = if policy.probes_only {
                    "metrics"
                } else {
                    "admin"
                };
                format!("{what} listening on {}", plane.url())
            })
            .collect();
        lines.push(format!("listening on {}", self.public.url()));
        lines
    }

    /// Serves until `shutdown` resolves, then drains (see the module docs).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let grace = self.shutdown_grace;
        let limits = (**self.endpoint.slot().limits()).clone();
        for (plane, policy) in self.planes {
            let endpoint = self.endpoint.clone();
            let open = endpoint.metrics().open_connections(if policy.probes_only {
                ListenerName::Metrics
            } else {
                ListenerName::Admin
            });
            let policy = Arc::new(policy);
            tokio::spawn(server::serve(
                plane.listener,
                plane.tls,
                move |request| {
                    let endpoint = endpoint.clone();
                    let policy = policy.clone();
                    async move { admin::handle(&endpoint, &policy, request).await }
                },
                std::future::pending(),
                grace,
                limits.for_plane(),
                open,
            ));
        }
        let draining = self.endpoint.clone();
        let delay = self.shutdown_delay;
        let stop = async move {
            shutdown.await;
            draining.start_draining();
            tracing::info!(
                ?delay,
                "shutting down: not ready; closing the listener after the shutdown delay"
            );
            tokio::time::sleep(delay).await;
            tracing::info!("listener closed: draining in-flight requests");
        };
        let endpoint = self.endpoint;
        let open = endpoint.metrics().open_connections(ListenerName::Public);
        let handler = move |request| {
            let endpoint = endpoint.clone();
            async move { endpoint.route(request).await }
        };
        server::serve(
            self.public.listener,
            self.public.tls,
            handler,
            stop,
            grace,
            limits,
            open,
        )
        .await;
        tracing::info!("stopped");
    }
}
