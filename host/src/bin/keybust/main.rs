//! The `keybust` binary: `keybust serve`, `keybust dev` and `keybust
//! component push|check|sign`.

mod cli;
mod component;
mod logging;
mod systemd;

use anyhow::Context;
use clap::Parser;
use cli::{Cli, Command, CommonArgs, DevArgs, ServeArgs};
use keybust::admin::AdminPolicy;
use keybust::capabilities::Capabilities;
use keybust::limits::Limits;
use keybust::rollout::registry::{ComponentSource, OciReference, Registry};
use keybust::runtime::plugin;
use keybust::serve::endpoint::{Configured, ENDPOINT_PATH, Endpoint};
use keybust::serve::server;
use keybust::serve::tls::{Acceptor, Listener};
use logging::init_logging;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

fn main() -> anyhow::Result<ExitCode> {
    // Errors on the request path (a closed stream, a refused call) must not
    // each capture a stack trace because the caller's environment happens to
    // set RUST_BACKTRACE: that costs a fifth of the throughput. Panics still
    // follow RUST_BACKTRACE; RUST_LIB_BACKTRACE=1 turns error traces back on.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Also while there is one thread: taking the passed sockets unsets
    // LISTEN_FDS, so that nothing keybust starts inherits them.
    let inherited = systemd::Inherited::from_env();
    let cli = Cli::parse();
    let traces = match &cli.command {
        Command::Serve(args) => args.common.telemetry.pipeline(),
        Command::Dev(args) => args.common.telemetry.pipeline(),
        Command::Component(_) => Ok(None),
    }
    .context("invalid tracing configuration")?;
    init_logging(cli.log_format, traces.as_ref());
    let runtime = new_runtime(cli.worker_threads).context("cannot start the async runtime")?;
    let served = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(*args, inherited).await.map(|()| ExitCode::SUCCESS),
            Command::Dev(args) => dev(*args).await.map(|()| ExitCode::SUCCESS),
            Command::Component(command) => component::run(command).await,
        }
    });
    drop(runtime);
    logging::flush();
    systemd::flush();
    // The last batch of spans leaves after the last request is answered.
    if let Some(traces) = traces {
        traces.shutdown();
    }
    served
}

/// One thread when there is one core to run on (or the operator asks for
/// it), a work-stealing pool otherwise.
fn new_runtime(worker_threads: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = worker_threads.map(usize::from).unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(usize::from)
            .unwrap_or(1)
    });
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().build()
}

/// Loads the first component; keybust does not start without one. A
/// registry that cannot be reached at start is survived when a version
/// accepted under the same reference is recorded. Returns the manifest
/// digest an `oci://` source was pulled through.
async fn new_endpoint(
    capabilities: Arc<Capabilities>,
    source: &ComponentSource,
    registry: Option<&Registry>,
    common: &CommonArgs,
) -> anyhow::Result<(Endpoint, Option<String>)> {
    let mut config = common.endpoint_config()?;
    let signed = registry.is_some_and(Registry::requires_signatures);
    config.signed_only = signed;
    let (bytes, manifest) = match source {
        ComponentSource::Embedded => (Some(plugin::EMBEDDED_COMPONENT.to_vec()), None),
        ComponentSource::File(path) => (
            Some(
                std::fs::read(path)
                    .with_context(|| format!("cannot read component {}", path.display()))?,
            ),
            None,
        ),
        ComponentSource::Oci(reference) => {
            let registry = registry.context("no registry settings")?;
            match registry.pull(reference, None).await {
                Ok(pulled) => (Some(pulled.bytes), Some(pulled.manifest_digest)),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot pull the configured component; looking for the last accepted version");
                    (None, None)
                }
            }
        }
    };
    let configured = Configured {
        source: source.label(),
        bytes,
        signed: signed && matches!(source, ComponentSource::Oci(_)),
    };
    let endpoint = Endpoint::load_configured(capabilities, configured, &config).await?;
    let serving = endpoint.slot().current();
    tracing::info!(
        source = serving.source,
        digest = serving.digest(),
        wasi_http = serving.plugin.wasi_http().as_str(),
        "component loaded"
    );
    Ok((endpoint, manifest))
}

async fn serve(args: ServeArgs, mut inherited: systemd::Inherited) -> anyhow::Result<()> {
    // From here on SIGHUP no longer ends the process: a reload signal sent
    // while the component is still being pulled or compiled (a certificate
    // renewal hook, `systemctl reload`) must not kill a starting instance.
    // It is ignored until the handlers below are in place.
    #[cfg(unix)]
    let _hangups_while_starting =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let settings = args.settings.settings().context("invalid configuration")?;
    let certificates = args.tls.load().context("invalid TLS configuration")?;
    let source = ComponentSource::parse(args.component.as_deref())?;
    let followed = followed_tag(&source, args.follow_interval)?;
    let mut registry = args.registry.registry().context("invalid configuration")?;
    if let ComponentSource::Oci(reference) = &source {
        registry = registry.with_login_for(reference);
    }
    if registry.requires_signatures() && matches!(source, ComponentSource::File(_)) {
        anyhow::bail!(
            "--verify-key needs signed components: a file cannot be verified; serve an oci:// reference"
        );
    }
    let capabilities = Arc::new(Capabilities::from_settings(&settings)?);
    let (endpoint, manifest) =
        new_endpoint(capabilities, &source, Some(&registry), &args.common).await?;
    let endpoint = Arc::new(endpoint);
    if let (Some(reference), Some(interval)) = (followed, args.follow_interval) {
        tracing::info!(%reference, ?interval, "following the tag");
        keybust::rollout::follow::follow(
            endpoint.slot(),
            registry.clone(),
            reference,
            interval,
            manifest,
        )?;
    }
    for problem in endpoint.capabilities().configuration_problems() {
        tracing::warn!("{problem}: the endpoint is not ready until it is");
    }
    endpoint
        .capabilities()
        .start_background_checks(&settings.deadlines);
    let policy = AdminPolicy {
        registry: Some(registry),
        ..args.admin.policy()?
    };
    if policy.token.is_none() {
        tracing::info!("no admin token is set: admin mutations are refused");
    } else if token_on_command_line() {
        tracing::warn!(
            "--admin-token on the command line shows in `ps`; prefer KEYBUST_ADMIN_TOKEN or --admin-token-file"
        );
    }
    let _watcher = match &source {
        ComponentSource::File(path) => {
            #[cfg(unix)]
            keybust::rollout::reload::reload_on_sighup(endpoint.slot().clone(), path.clone())?;
            match keybust::rollout::reload::watch(endpoint.slot().clone(), path.clone()) {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch the component file; SIGHUP still reloads it");
                    None
                }
            }
        }
        ComponentSource::Embedded | ComponentSource::Oci(_) => {
            if certificates.is_none() {
                ignore_sighup()?;
            }
            None
        }
    };
    let _tls_watcher = match &certificates {
        Some(certificates) => {
            #[cfg(unix)]
            certificates.reload_on_sighup()?;
            match certificates.watch() {
                Ok(watcher) => Some(watcher),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot watch the TLS files; SIGHUP still reloads them");
                    None
                }
            }
        }
        None => None,
    };
    let acceptor = |listener| {
        certificates
            .as_ref()
            .and_then(|certificates| certificates.acceptor(listener))
    };
    let passed = inherited.count()?;
    if passed > 0 {
        tracing::info!(
            sockets = passed,
            "serving sockets passed by the service manager"
        );
    }
    let public = Listening {
        listener: listen(&mut inherited, systemd::PUBLIC, "public", args.listen).await?,
        tls: acceptor(Listener::Public),
    };
    let admin = Listening {
        listener: listen(
            &mut inherited,
            systemd::ADMIN,
            "admin",
            args.admin.admin_listen,
        )
        .await?,
        tls: acceptor(Listener::Admin),
    };
    let mut planes = vec![(admin, policy.clone())];
    let metrics = match args.admin.metrics_listen {
        Some(addr) => Some(listen(&mut inherited, systemd::METRICS, "metrics", addr).await?),
        None => inherited.take(systemd::METRICS, "metrics")?,
    };
    if let Some(metrics) = metrics {
        let probes = AdminPolicy {
            probes_only: true,
            ..policy
        };
        let metrics = Listening {
            listener: metrics,
            tls: acceptor(Listener::Metrics),
        };
        planes.push((metrics, probes));
    }
    run(endpoint, public, planes, &args.common).await
}

/// A listener and, when it speaks TLS, how it accepts.
struct Listening {
    listener: tokio::net::TcpListener,
    tls: Option<Acceptor>,
}

impl Listening {
    fn plain(listener: tokio::net::TcpListener) -> Self {
        Listening {
            listener,
            tls: None,
        }
    }

    /// `https://ADDR` or `http://ADDR`, as the listening lines print it.
    fn url(&self) -> std::io::Result<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        Ok(format!("{scheme}://{}", self.listener.local_addr()?))
    }
}

/// The socket the service manager passed at `index`, or a new one on `addr`.
async fn listen(
    inherited: &mut systemd::Inherited,
    index: usize,
    what: &str,
    addr: SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    match inherited.take(index, what)? {
        Some(listener) => Ok(listener),
        None => Ok(server::bind(addr).await?),
    }
}

/// The tag to follow: `--follow-interval` needs an `oci://` reference with
/// a tag, not a pinned digest (which never moves).
fn followed_tag(
    source: &ComponentSource,
    interval: Option<Duration>,
) -> anyhow::Result<Option<OciReference>> {
    match (source, interval) {
        (_, None) => Ok(None),
        (ComponentSource::Oci(reference), Some(_)) if reference.tag().is_some() => {
            Ok(Some(reference.clone()))
        }
        (_, Some(_)) => anyhow::bail!(
            "--follow-interval needs --component oci://REGISTRY/REPOSITORY:TAG (a tag, not a digest or a file)"
        ),
    }
}

/// Whether the admin token was given as a flag rather than from the
/// environment or a file.
fn token_on_command_line() -> bool {
    std::env::args().any(|arg| arg == "--admin-token" || arg.starts_with("--admin-token="))
}

/// Without a component file, SIGHUP has nothing to re-read; it must not kill the process.
fn ignore_sighup() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                tracing::info!("SIGHUP: the component is not a file; nothing to re-read");
            }
        });
    }
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let env = keybust::dev::start()
        .await
        .context("cannot start the dev stand-ins")?;
    let capabilities = Arc::new(Capabilities::from_settings(&env.settings)?);
    // No history: `dev` must not rewrite the record a `serve` keeps in the
    // same state directory.
    let mut common = args.common;
    common.keep_history = false;
    let (endpoint, _) =
        new_endpoint(capabilities, &ComponentSource::Embedded, None, &common).await?;
    let endpoint = Arc::new(endpoint);
    let listener = Listening::plain(server::bind(args.listen).await?);
    let addr = listener.listener.local_addr()?;
    println!(
        "keybust dev: Convex and the token issuer are stand-ins on loopback; the cache is in-process."
    );
    println!("Try it:\n");
    println!(
        "curl -i -X POST http://{addr}{ENDPOINT_PATH} \\\n  -H 'Authorization: Bearer {}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"keyHash\":\"{}\"}}'\n",
        env.token, env.key_hash
    );
    run(endpoint, listener, Vec::new(), &common).await
}

/// Serves the public listener and the admin planes (the admin listener,
/// and the probes-only one) until SIGTERM or ctrl-c, then drains: readiness
/// turns at once, the public listener keeps accepting for
/// `--shutdown-delay` and then closes, and in-flight requests get
/// `--shutdown-grace`. The admin planes answer until the process exits.
async fn run(
    endpoint: Arc<Endpoint>,
    public: Listening,
    planes: Vec<(Listening, AdminPolicy)>,
    common: &CommonArgs,
) -> anyhow::Result<()> {
    let grace = common.shutdown_grace;
    let limits = endpoint.slot().limits().clone();
    for (plane, policy) in planes {
        let what = if policy.probes_only {
            "metrics"
        } else {
            "admin"
        };
        println!("{what} listening on {}", plane.url()?);
        let endpoint = endpoint.clone();
        let policy = Arc::new(policy);
        tokio::spawn(server::serve_with(
            plane.listener,
            plane.tls,
            move |request| {
                let endpoint = endpoint.clone();
                let policy = policy.clone();
                async move { keybust::admin::handle(&endpoint, &policy, request).await }
            },
            std::future::pending(),
            grace,
            Limits::default(),
        ));
    }
    let draining = endpoint.clone();
    let delay = common.shutdown_delay;
    // Registered now, before the listening line: a SIGTERM that comes as
    // soon as keybust serves must start the drain, not kill the process.
    let stop_requested = shutdown_signal();
    let shutdown = async move {
        stop_requested.await;
        systemd::stopping();
        draining.start_draining();
        tracing::info!(
            ?delay,
            "shutting down: not ready; closing the listener after the shutdown delay"
        );
        tokio::time::sleep(delay).await;
        tracing::info!("listener closed: draining in-flight requests");
    };
    let handler = move |request| {
        let endpoint = endpoint.clone();
        async move { endpoint.route(request).await }
    };
    // Printed last: once it appears, every listener is accepting.
    println!("listening on {}", public.url()?);
    systemd::ready();
    systemd::start_watchdog();
    server::serve_with(
        public.listener,
        public.tls,
        handler,
        shutdown,
        grace,
        (*limits).clone(),
    )
    .await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is
/// called, not when the future is first polled.
fn shutdown_signal() -> impl Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}
