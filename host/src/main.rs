//! The `keybust` binary: `keybust serve` and `keybust dev`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use keybust::capabilities::Capabilities;
use keybust::plugin::{self, Plugin};
use keybust::server::{self, ENDPOINT_PATH, Gateway};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// Serve the invalidate-user-api-key-cache endpoint from a WASI component.
#[derive(Parser)]
#[command(name = "keybust", version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, env = "KEYBUST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the endpoint, configured from the environment (CONVEX_*, CLERK_*, REDIS_URL, ...).
    Serve(ServeArgs),
    /// Run the whole flow locally: embedded cache, stand-ins for Convex and the
    /// token issuer, and a ready-to-paste curl that gets a 200.
    Dev(DevArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address for the public listener.
    #[arg(long, env = "KEYBUST_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,

    /// Address for the admin listener (/healthz, /readyz).
    #[arg(long, env = "KEYBUST_ADMIN_LISTEN", default_value = "127.0.0.1:8788")]
    admin_listen: SocketAddr,

    /// Component file to serve [default: the component built from guest/, embedded in this binary].
    #[arg(long, env = "KEYBUST_COMPONENT")]
    component: Option<PathBuf>,

    /// Bearer token for admin mutations [default: none, admin mutations are refused].
    #[arg(long, env = "KEYBUST_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(clap::Args)]
struct DevArgs {
    /// Address for the public listener.
    #[arg(long, env = "KEYBUST_LISTEN", default_value = "127.0.0.1:8787")]
    listen: SocketAddr,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Dev(args) => dev(args).await,
        }
    })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn load_component(path: Option<&PathBuf>) -> anyhow::Result<Plugin> {
    let engine = plugin::new_engine()?;
    let linker = plugin::new_linker(&engine)?;
    let (bytes, source) = match path {
        Some(path) => (
            std::fs::read(path)
                .with_context(|| format!("cannot read component {}", path.display()))?,
            path.display().to_string(),
        ),
        None => (plugin::EMBEDDED_COMPONENT.to_vec(), "embedded".to_owned()),
    };
    let plugin =
        Plugin::load(&linker, &bytes).with_context(|| format!("cannot load component {source}"))?;
    tracing::info!(source, digest = plugin.digest(), "component loaded");
    Ok(plugin)
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let capabilities = Arc::new(Capabilities::from_env().context("invalid configuration")?);
    let plugin = load_component(args.component.as_ref())?;
    if args.admin_token.is_none() {
        tracing::info!("KEYBUST_ADMIN_TOKEN is not set: admin mutations are refused");
    }
    for reason in capabilities.unready_reasons() {
        tracing::warn!("{reason}: the endpoint answers 503/401 until it is");
    }
    run(
        Gateway::new(plugin, capabilities),
        args.listen,
        Some(args.admin_listen),
    )
    .await
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let env = keybust::dev::start()
        .await
        .context("cannot start the dev stand-ins")?;
    let capabilities = Arc::new(Capabilities::from_settings(&env.settings)?);
    let plugin = load_component(None)?;
    let listener = server::bind(args.listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "keybust dev: Convex and the token issuer are stand-ins on loopback; the cache is in-process."
    );
    println!("Try it:\n");
    println!(
        "curl -i -X POST http://{addr}{ENDPOINT_PATH} \\\n  -H 'Authorization: Bearer {}' \\\n  -H 'Content-Type: application/json' \\\n  -d '{{\"keyHash\":\"{}\"}}'\n",
        env.token, env.key_hash
    );
    let gateway = Arc::new(Gateway::new(plugin, capabilities));
    serve_listeners(gateway, listener, None).await
}

async fn run(
    gateway: Gateway,
    listen: SocketAddr,
    admin: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let listener = server::bind(listen).await?;
    let admin = match admin {
        Some(addr) => Some(server::bind(addr).await?),
        None => None,
    };
    serve_listeners(Arc::new(gateway), listener, admin).await
}

async fn serve_listeners(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
) -> anyhow::Result<()> {
    println!("listening on http://{}", listener.local_addr()?);
    if let Some(admin) = admin {
        println!("admin listening on http://{}", admin.local_addr()?);
        let gateway = gateway.clone();
        tokio::spawn(server::serve(
            admin,
            move |request| {
                let gateway = gateway.clone();
                async move { server::admin(&gateway, request).await }
            },
            std::future::pending(),
        ));
    }
    let handler = move |request| {
        let gateway = gateway.clone();
        async move { gateway.route(request).await }
    };
    server::serve(listener, handler, shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down: draining in-flight requests");
}
