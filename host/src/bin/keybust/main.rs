//! The `keybust` binary: `keybust serve`, `keybust dev` and `keybust
//! component push|check|sign`.

mod cli;
mod component;
mod logging;
mod systemd;

use anyhow::Context;
use cli::{Cli, Command, DevArgs, ServeArgs};
use keybust::rollout::source::ComponentSource;
use keybust::serve::endpoint::ENDPOINT_PATH;
use keybust::service::{AdminConfig, Listeners, Service, ServiceConfig};
use logging::init_logging;
use std::process::ExitCode;

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
    let cli = Cli::parse_naming_variables();
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

async fn serve(args: ServeArgs, mut inherited: systemd::Inherited) -> anyhow::Result<()> {
    let settings = args.settings.settings().context("invalid configuration")?;
    let tls = args.tls.load().context("invalid TLS configuration")?;
    let component = ComponentSource::parse(args.component.as_deref())?;
    let mut registry = args.registry.registry().context("invalid configuration")?;
    if let ComponentSource::Oci(reference) = &component {
        registry = registry.with_login_for(reference);
    }
    let policy = args.admin.policy()?;
    if policy.token.is_none() {
        tracing::info!("no admin token is set: admin mutations are refused");
    } else if token_on_command_line() {
        tracing::warn!(
            "--admin-token on the command line shows in `ps`; prefer KEYBUST_ADMIN_TOKEN or --admin-token-file"
        );
    }
    let passed = inherited.count()?;
    if passed > 0 {
        tracing::info!(
            sockets = passed,
            "serving sockets passed by the service manager"
        );
    }
    let listeners = Listeners {
        public: inherited.take("public")?,
        admin: inherited.take("admin")?,
        metrics: inherited.take("metrics")?,
    };
    let config = ServiceConfig {
        listen: args.listen,
        admin: Some(AdminConfig {
            listen: args.admin.admin_listen,
            policy,
            metrics_listen: args.admin.metrics_listen,
        }),
        component,
        follow_interval: args.follow_interval,
        registry: Some(registry),
        tls,
        settings,
        endpoint: args.common.endpoint_config()?,
        shutdown_delay: args.common.shutdown_delay,
        shutdown_grace: args.common.shutdown_grace,
        listeners,
    };
    run(Service::build(config).await?).await;
    Ok(())
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let env = keybust::dev::start()
        .await
        .context("cannot start the dev stand-ins")?;
    // No history: `dev` must not rewrite the record a `serve` keeps in the
    // same state directory.
    let mut common = args.common;
    common.keep_history = false;
    let component = match args.component {
        Some(path) if path.to_string_lossy().starts_with("oci://") => anyhow::bail!(
            "keybust dev serves a file you build; serve an oci:// reference with keybust serve"
        ),
        Some(path) => ComponentSource::File(path),
        None => ComponentSource::Embedded,
    };
    // A rebuild serves at once: a developer waits for no shadow or canary.
    let mut endpoint = common.endpoint_config()?;
    endpoint.shadow = keybust::shadow::ShadowSettings::default();
    endpoint.canary = keybust::canary::CanarySettings::default();
    let config = ServiceConfig {
        listen: args.listen,
        admin: Some(AdminConfig {
            listen: args.admin.admin_listen,
            policy: args.admin.policy()?,
            metrics_listen: args.admin.metrics_listen,
        }),
        component,
        follow_interval: None,
        registry: None,
        tls: None,
        settings: env.settings,
        endpoint,
        shutdown_delay: common.shutdown_delay,
        shutdown_grace: common.shutdown_grace,
        listeners: Listeners::default(),
    };
    let watched = match &config.component {
        ComponentSource::File(path) => Some(path.display().to_string()),
        _ => None,
    };
    let service = Service::build(config).await?;
    let addr = service.local_addr()?;
    println!(
        "keybust dev: Convex and the token issuer are stand-ins on loopback; the cache is in-process."
    );
    println!("Try it:\n");
    println!(
        "curl -i -X POST http://{addr}{ENDPOINT_PATH} \\\n  -H 'Authorization: Bearer {}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"keyHash\":\"{}\"}}'\n",
        env.token, env.key_hash
    );
    if let Some(path) = watched {
        println!("Serving {path}: rebuild it, and the new build is checked and swapped in.");
    }
    println!("The admin listener below answers /admin/component, /readyz and /metrics.\n");
    run(service).await;
    Ok(())
}

/// Serves until SIGTERM or ctrl-c, telling the service manager when
/// keybust is ready and when it stops.
async fn run(service: Service) {
    // Registered now, before the listening lines: a SIGTERM that comes as
    // soon as keybust serves must start the drain, not kill the process.
    let stop_requested = shutdown_signal();
    // Printed last: once the public line appears, every listener accepts
    // (its socket is bound; connections wait in its backlog).
    let lines = service.listening_lines();
    for line in &lines {
        println!("{line}");
    }
    systemd::ready(format!("serving: {}", lines.join("; ")));
    systemd::start_watchdog();
    service
        .run(async move {
            stop_requested.await;
            systemd::stopping();
        })
        .await;
}

/// Whether the admin token was given as a flag rather than from the
/// environment or a file.
fn token_on_command_line() -> bool {
    std::env::args().any(|arg| arg == "--admin-token" || arg.starts_with("--admin-token="))
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
