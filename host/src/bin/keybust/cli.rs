//! The command line: `keybust serve`, `keybust dev` and `keybust component
//! push|check|sign`, every setting with its environment twin. What the
//! settings mean lives with the library part each configures; this file
//! only gathers them into commands.

use crate::component::ComponentCommand;
use crate::logging::LogFormat;
use clap::{Parser, Subcommand};
use keybust::admin::AdminArgs;
use keybust::canary::CanaryArgs;
use keybust::capabilities::SettingsArgs;
use keybust::config::parse_duration;
use keybust::contract::ContractGate;
use keybust::limits::LimitArgs;
use keybust::rollout::registry::RegistryArgs;
use keybust::runtime::artifacts;
use keybust::serve::endpoint::EndpointConfig;
use keybust::serve::tls::TlsArgs;
use keybust::shadow::ShadowArgs;
use keybust::telemetry::IncomingTrace;
use keybust::telemetry::export::TelemetryArgs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The version, the commit, the wasmtime it runs on, and the component it
/// embeds, as `keybust --version` prints them.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("KEYBUST_GIT_SHA"),
    ", wasmtime ",
    env!("KEYBUST_WASMTIME_VERSION"),
    ", embedded component sha256:",
    env!("KEYBUST_GUEST_DIGEST"),
    ")"
);

/// Serve the invalidate-user-api-key-cache endpoint from a WASI component.
#[derive(Parser)]
#[command(name = "keybust", version = VERSION, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, env = "KEYBUST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Threads that serve requests. With one, a single thread runs
    /// everything, without hand-offs between threads; with more, a
    /// work-stealing pool. Default: the CPUs this process may run on.
    #[arg(long, env = "KEYBUST_WORKER_THREADS", global = true, value_parser = clap::value_parser!(u16).range(1..))]
    pub worker_threads: Option<u16>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The command line and environment, as [`Parser::parse`] reads them,
    /// except that a refused value which came from an environment variable
    /// names that variable: clap names only the flag, and an operator who
    /// set `KEYBUST_SHADOW=maybe` in a manifest has no `--shadow` to find.
    pub fn parse_naming_variables() -> Cli {
        use clap::CommandFactory;
        use clap::error::{ContextKind, ContextValue};
        let err = match Cli::try_parse() {
            Ok(cli) => return cli,
            Err(err) => err,
        };
        let long = match err.get(ContextKind::InvalidArg) {
            Some(ContextValue::String(arg)) => arg
                .strip_prefix("--")
                .and_then(|arg| arg.split([' ', '=']).next())
                .map(str::to_owned),
            _ => None,
        };
        let from_env = long.as_deref().and_then(|long| {
            let given = std::env::args().any(|arg| {
                arg.strip_prefix("--")
                    .and_then(|arg| arg.strip_prefix(long))
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('='))
            });
            let env = env_of(&Cli::command(), long)?;
            (!given && std::env::var_os(&env).is_some()).then_some(env)
        });
        let Some(env) = from_env else { err.exit() };
        let rendered = err.render().to_string();
        let rendered = match rendered.strip_prefix("error: ") {
            Some(rest) => format!("error: {env}: {rest}"),
            None => format!("{env}: {rendered}"),
        };
        eprint!("{rendered}");
        std::process::exit(err.exit_code());
    }
}

/// The environment twin of `--long` in `command` or any of its subcommands.
fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|command| env_of(command, long))
        })
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve the endpoint; every setting below also reads its environment twin.
    Serve(Box<ServeArgs>),
    /// Run the whole flow locally: embedded cache, stand-ins for Convex and the
    /// token issuer, and a ready-to-paste curl that gets a 200.
    Dev(Box<DevArgs>),
    /// Publish a component to a registry, or check one before a rollout.
    #[command(subcommand)]
    Component(ComponentCommand),
}

#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address for the public listener.
    #[arg(long, env = "KEYBUST_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Component to serve: a file (watched, and re-read on SIGHUP), or
    /// oci://REGISTRY/REPOSITORY:TAG or @sha256:DIGEST, pulled at start
    /// [default: the component built from guest/, embedded in this binary].
    #[arg(long, env = "KEYBUST_COMPONENT")]
    pub component: Option<String>,

    /// With an oci:// tag, how often to check where the tag points (each
    /// check waits this give or take a fifth); when it moves, the new
    /// version is pulled, checked and swapped in [default: off].
    #[arg(long, env = "KEYBUST_FOLLOW_INTERVAL", value_parser = parse_follow_interval)]
    pub follow_interval: Option<Duration>,

    #[command(flatten, next_help_heading = "Registry")]
    pub registry: RegistryArgs,

    #[command(flatten, next_help_heading = "Admin plane")]
    pub admin: AdminArgs,

    #[command(flatten, next_help_heading = "TLS")]
    pub tls: TlsArgs,

    #[command(flatten)]
    pub common: CommonArgs,

    #[command(flatten)]
    pub settings: SettingsArgs,
}

#[derive(clap::Args)]
pub struct DevArgs {
    /// Address for the public listener.
    #[arg(long, env = "KEYBUST_LISTEN", default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,

    /// Your own build of the component, a file: served, and swapped in as
    /// soon as the file changes (a rebuild), as `spin watch` does. A new
    /// build must still pass the contract gate (--contract-gate off to
    /// skip it); there is no shadow stage or canary to wait through
    /// [default: the component built from guest/, embedded in this binary].
    #[arg(long, env = "KEYBUST_COMPONENT")]
    pub component: Option<PathBuf>,

    #[command(flatten, next_help_heading = "Admin plane")]
    pub admin: AdminArgs,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(clap::Args)]
pub struct CommonArgs {
    /// Directory for precompiled components, keyed by digest
    /// [default: the user's cache directory, e.g. ~/.cache/keybust].
    #[arg(long, env = "KEYBUST_COMPONENT_CACHE_DIR")]
    pub component_cache_dir: Option<PathBuf>,

    /// Largest size of the precompiled component cache, in bytes; the
    /// least recently used entries go first [default: 268435456].
    #[arg(long, env = "KEYBUST_COMPONENT_CACHE_MAX_BYTES")]
    pub component_cache_max_bytes: Option<u64>,

    /// The old name of --component-cache-dir, from before the cache
    /// backend's settings (--cache, --cache-timeout) took the prefix.
    #[arg(long, env = "KEYBUST_CACHE_DIR", hide = true)]
    pub cache_dir: Option<PathBuf>,

    /// The old name of --component-cache-max-bytes.
    #[arg(long, env = "KEYBUST_CACHE_MAX_BYTES", hide = true)]
    pub cache_max_bytes: Option<u64>,

    /// Directory for keybust's state, outside the cache directory: the key
    /// that authenticates precompiled components
    /// [default: the user's state directory, e.g. ~/.local/state/keybust].
    #[arg(long, env = "KEYBUST_STATE_DIR")]
    pub state_dir: Option<PathBuf>,

    /// After SIGTERM or ctrl-c, how long the listener keeps accepting while
    /// /readyz already answers 503: the time a load balancer needs to stop
    /// sending traffic. Then it closes, and new connections are refused.
    #[arg(long, env = "KEYBUST_SHUTDOWN_DELAY", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Time in-flight requests get to finish after the listener closes (e.g. 30s).
    #[arg(long, env = "KEYBUST_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,

    /// Whether a new version must pass the contract gate before it
    /// serves: docs/contract.md's rows, answered with stand-ins for the
    /// backends (its status, CORS, error and exact backend calls). `off`
    /// is for an operator who changes the contract on purpose; /readyz
    /// then warns.
    #[arg(long, env = "KEYBUST_CONTRACT_GATE", value_enum, default_value_t = ContractGate::On)]
    pub contract_gate: ContractGate,

    #[command(flatten, next_help_heading = "Rollout: the shadow stage")]
    pub shadow: ShadowArgs,

    #[command(flatten, next_help_heading = "Rollout: the weighted canary")]
    pub canary: CanaryArgs,

    #[command(flatten, next_help_heading = "Limits")]
    pub limits: LimitArgs,

    #[command(flatten, next_help_heading = "Tracing (OpenTelemetry)")]
    pub telemetry: TelemetryArgs,

    /// Whether accepted versions are recorded in the state directory.
    #[arg(skip = true)]
    pub keep_history: bool,
}

impl CommonArgs {
    pub fn endpoint_config(&self) -> anyhow::Result<EndpointConfig> {
        let mut limits = self.limits.limits()?;
        limits.fit_to_fd_limit();
        let state_dir = self.state_dir.clone().or_else(default_state_dir);
        let cache_dir = renamed(
            self.component_cache_dir.clone(),
            self.cache_dir.clone(),
            ("--component-cache-dir", "KEYBUST_COMPONENT_CACHE_DIR"),
            ("--cache-dir", "KEYBUST_CACHE_DIR"),
        )?;
        let cache_max_bytes = renamed(
            self.component_cache_max_bytes,
            self.cache_max_bytes,
            (
                "--component-cache-max-bytes",
                "KEYBUST_COMPONENT_CACHE_MAX_BYTES",
            ),
            ("--cache-max-bytes", "KEYBUST_CACHE_MAX_BYTES"),
        )?;
        Ok(EndpointConfig {
            cache_dir: cache_dir.or_else(artifacts::default_dir),
            artifact_key: state_dir.as_ref().map(|dir| dir.join("artifact.key")),
            history_dir: state_dir
                .filter(|_| self.keep_history)
                .map(|dir| dir.join("components")),
            // Set by the caller that knows whether signatures are required.
            signed_by: None,
            cache_max_bytes: cache_max_bytes.unwrap_or(artifacts::DEFAULT_MAX_BYTES),
            limits,
            incoming_trace: if self.telemetry.trust_trace_context {
                IncomingTrace::Continue
            } else {
                IncomingTrace::Link
            },
            contract_gate: self.contract_gate,
            shadow: self.shadow.settings(),
            canary: self.canary.settings(),
        })
    }
}

/// `$XDG_STATE_HOME/keybust`, else the local data directory's `keybust`.
/// A setting under its new name, or its old one with a deprecation
/// warning; both at once is refused rather than one silently winning.
fn renamed<T>(
    new: Option<T>,
    old: Option<T>,
    (new_flag, new_env): (&str, &str),
    (old_flag, old_env): (&str, &str),
) -> anyhow::Result<Option<T>> {
    match (new, old) {
        (Some(_), Some(_)) => anyhow::bail!(
            "{new_flag} ({new_env}) and its old name {old_flag} ({old_env}) are both set: keep {new_flag}"
        ),
        (None, Some(old)) => {
            tracing::warn!(
                "{old_flag} ({old_env}) is deprecated: it is now {new_flag} ({new_env}), \
                 beside the cache backend's settings"
            );
            Ok(Some(old))
        }
        (new, None) => Ok(new),
    }
}

fn default_state_dir() -> Option<PathBuf> {
    artifacts::default_key_path().and_then(|key| key.parent().map(ToOwned::to_owned))
}

/// A follow interval within the library's bounds
/// ([`keybust::rollout::follow::check_interval`]).
fn parse_follow_interval(value: &str) -> Result<Duration, String> {
    let interval = parse_duration(value).map_err(|err| err.to_string())?;
    keybust::rollout::follow::check_interval(interval).map_err(|err| err.to_string())
}
