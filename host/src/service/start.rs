//! Building a service, in the order that keeps a starting process safe:
//! SIGHUP is taken first (a reload signal sent while the component is
//! still being pulled or compiled must not end the process), then the
//! settings are checked, the first component loaded, the listeners bound,
//! and what runs beside the requests started.

use super::{Listening, Service, ServiceConfig, ServiceError};
use crate::admin::AdminPolicy;
use crate::capabilities::Capabilities;
use crate::metrics::Metrics;
use crate::rollout::reload;
use crate::rollout::source::ComponentSource;
use crate::serve::endpoint::{Configured, Endpoint};
use crate::serve::tls::{Certificates, Listener};
use crate::versions::slot::ComponentSlot;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::net::TcpListener;

pub(super) async fn build(config: ServiceConfig) -> Result<Service, ServiceError> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(ServiceError::Signals)?;
    let ServiceConfig {
        listen,
        admin,
        component,
        follow_interval,
        #[cfg(feature = "registry")]
        registry,
        tls,
        settings,
        endpoint: mut endpoint_config,
        shutdown_delay,
        shutdown_grace,
        mut listeners,
    } = config;

    // The signed high-water marks live in the state directory, beside
    // the history (and under its lock).
    #[cfg(feature = "registry")]
    let registry = match (
        registry,
        endpoint_config
            .history_dir
            .as_deref()
            .and_then(std::path::Path::parent),
    ) {
        (Some(registry), Some(state_dir)) => {
            Some(registry.keep_high_water_in(state_dir).map_err(|err| {
                ServiceError::Invalid(format!("the signed high-water marks: {err}"))
            })?)
        }
        (registry, _) => registry,
    };
    #[cfg(feature = "registry")]
    let signed_by = registry.as_ref().and_then(|r| r.verify_key_id());
    #[cfg(not(feature = "registry"))]
    let signed_by: Option<String> = None;
    if signed_by.is_some() && matches!(component, ComponentSource::File(_)) {
        return Err(ServiceError::Invalid(
            "--verify-key needs signed components: a file cannot be verified; serve an oci:// reference".into(),
        ));
    }
    #[cfg(feature = "registry")]
    let followed = match (&component, follow_interval) {
        (_, None) => None,
        (ComponentSource::Oci(reference), Some(interval)) if reference.tag().is_some() => {
            // Checked before anything is pulled: a bad interval fails fast.
            Some((
                reference.clone(),
                crate::rollout::follow::check_interval(interval)?,
            ))
        }
        (_, Some(_)) => return Err(not_a_tag()),
    };
    #[cfg(not(feature = "registry"))]
    if follow_interval.is_some() {
        return Err(not_a_tag());
    }

    // The service's one registry: the capabilities count their calls into
    // it, and the endpoint built on them its requests, swaps and polls.
    let metrics = Arc::new(Metrics::new());
    let capabilities = Arc::new(Capabilities::from_settings(&settings)?.with_metrics(metrics));
    endpoint_config.signed_by = signed_by;
    #[cfg(feature = "registry")]
    let configured = configured(&component, registry.as_ref()).await?;
    #[cfg(not(feature = "registry"))]
    let configured = configured(&component).await?;
    #[cfg(feature = "registry")]
    let manifest = configured.1.clone();
    #[cfg(feature = "registry")]
    let configured_digest = configured.0.bytes.as_deref().map(crate::digest::hex_digest);
    let endpoint =
        Arc::new(Endpoint::load_configured(capabilities, configured.0, &endpoint_config).await?);
    let serving = endpoint.slot().current();
    let in_effect = settings.in_effect();
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        git = env!("KEYBUST_GIT_SHA"),
        component = serving.source,
        digest = serving.digest(),
        wasi_http = serving.plugin.wasi_http().as_str(),
        cache = in_effect.cache,
        cache_hosts = in_effect.cache_hosts,
        key_prefix = ?in_effect.key_prefix,
        convex = in_effect.convex.as_deref().unwrap_or("none"),
        issuer = in_effect.issuer.as_deref().unwrap_or("none"),
        "in effect"
    );
    #[cfg(feature = "registry")]
    if let (Some((reference, interval)), Some(registry)) = (followed, &registry) {
        tracing::info!(%reference, ?interval, "following the tag");
        crate::rollout::follow::follow(
            endpoint.slot(),
            registry.clone(),
            reference,
            interval,
            manifest,
            configured_digest,
        )?;
    }
    for problem in endpoint.capabilities().configuration_problems() {
        tracing::warn!("{problem}: the endpoint is not ready until it is");
    }
    endpoint
        .capabilities()
        .start_background_checks(&settings.deadlines);

    let file = match &component {
        ComponentSource::File(path) => Some(path.clone()),
        _ => None,
    };
    let mut watchers = Vec::new();
    if let Some(path) = &file {
        match reload::watch(endpoint.slot().clone(), path.clone()) {
            Ok(watcher) => watchers.push(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the component file; SIGHUP still reloads it")
            }
        }
    }
    if let Some(certificates) = &tls {
        match certificates.watch() {
            Ok(watcher) => watchers.push(watcher),
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch the TLS files; SIGHUP still reloads them")
            }
        }
    }
    #[cfg(unix)]
    on_sighup(hangups, endpoint.slot().clone(), file, tls.clone());

    let acceptor = |listener| {
        tls.as_ref()
            .and_then(|certificates| certificates.acceptor(listener))
    };
    let public = Listening {
        listener: open(listeners.public.take(), listen, "--listen").await?,
        tls: acceptor(Listener::Public),
    };
    let mut planes = Vec::new();
    if let Some(admin) = admin {
        #[cfg_attr(not(feature = "registry"), allow(unused_mut))]
        let mut policy = admin.policy;
        #[cfg(feature = "registry")]
        if policy.registry.is_none() {
            policy.registry = registry.clone();
        }
        let listener = open(listeners.admin.take(), admin.listen, "--admin-listen").await?;
        let metrics = match (listeners.metrics.take(), admin.metrics_listen) {
            (Some(passed), _) => Some(passed),
            (None, Some(addr)) => Some(open(None, addr, "--metrics-listen").await?),
            (None, None) => None,
        };
        planes.push((
            Listening {
                listener,
                tls: acceptor(Listener::Admin),
            },
            policy.clone(),
        ));
        if let Some(metrics) = metrics {
            planes.push((
                Listening {
                    listener: metrics,
                    tls: acceptor(Listener::Metrics),
                },
                AdminPolicy {
                    probes_only: true,
                    ..policy
                },
            ));
        }
    }
    Ok(Service {
        endpoint,
        public,
        planes,
        shutdown_delay,
        shutdown_grace,
        _watchers: watchers,
    })
}

fn not_a_tag() -> ServiceError {
    ServiceError::Invalid(
        "--follow-interval needs --component oci://REGISTRY/REPOSITORY:TAG (a tag, not a digest or a file)".into(),
    )
}

/// The passed socket, or a new one on `addr`, which `setting` names.
async fn open(
    passed: Option<TcpListener>,
    addr: SocketAddr,
    setting: &'static str,
) -> Result<TcpListener, ServiceError> {
    match passed {
        Some(listener) => Ok(listener),
        None => TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen {
                addr,
                setting,
                source,
            }),
    }
}

/// The component as it reads at start, and the manifest digest an `oci://`
/// source was pulled through. A registry that cannot be reached is survived
/// when a version accepted under the same reference is recorded: the bytes
/// are then none, and the history decides.
async fn configured(
    component: &ComponentSource,
    #[cfg(feature = "registry")] registry: Option<&crate::rollout::registry::Registry>,
) -> Result<(Configured, Option<String>), ServiceError> {
    let source = component.label();
    let (bytes, manifest, signed) = match component {
        #[cfg(feature = "embedded-component")]
        ComponentSource::Embedded => (
            Some(crate::runtime::plugin::EMBEDDED_COMPONENT.to_vec()),
            None,
            false,
        ),
        #[cfg(not(feature = "embedded-component"))]
        ComponentSource::Embedded => {
            return Err(ServiceError::Invalid(
                "this build embeds no component (feature `embedded-component`); name one".into(),
            ));
        }
        ComponentSource::File(path) => {
            let bytes = tokio::fs::read(path).await.map_err(|source| {
                crate::serve::endpoint::EndpointError::Read {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            (Some(bytes), None, false)
        }
        ComponentSource::Bytes { bytes, .. } => (Some(bytes.clone()), None, false),
        #[cfg(feature = "registry")]
        ComponentSource::Oci(reference) => {
            let registry = registry.ok_or_else(|| {
                ServiceError::Invalid(format!("{reference}: no registry settings"))
            })?;
            match registry.pull(reference, None).await {
                Ok(pulled) => (
                    Some(pulled.bytes),
                    Some(pulled.manifest_digest),
                    registry.requires_signatures(),
                ),
                // Refused (a signature that does not verify, a digest
                // mismatch, not a component) is said as such, never as
                // "unreachable"; either way only a version recorded under
                // the same source (and, with --verify-key, checked with
                // the same key) may serve instead.
                Err(err) if err.is_transient() => {
                    tracing::warn!(error = %err, "cannot pull the configured component; looking for the last accepted version");
                    (None, None, registry.requires_signatures())
                }
                Err(err) => {
                    tracing::warn!(error = %err, "the configured component is refused; looking for the last accepted version");
                    (None, None, registry.requires_signatures())
                }
            }
        }
    };
    Ok((
        Configured {
            source,
            bytes,
            signed,
        },
        manifest,
    ))
}

/// The one SIGHUP handler: it re-reads the component file and the TLS
/// files, whichever the service has; with neither, it says there is
/// nothing to re-read. SIGHUP never ends the process.
#[cfg(unix)]
fn on_sighup(
    mut hangups: tokio::signal::unix::Signal,
    slot: Arc<ComponentSlot>,
    file: Option<PathBuf>,
    tls: Option<Arc<Certificates>>,
) {
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            if let Some(path) = &file {
                reload::reload_and_log(&slot, path, "SIGHUP").await;
            }
            if let Some(certificates) = &tls {
                certificates.reload_and_log("SIGHUP").await;
            }
            if file.is_none() && tls.is_none() {
                tracing::info!("SIGHUP: the component is not a file; nothing to re-read");
            }
        }
    });
}
