//! keybust's library served in the test's own runtime: the same
//! [`keybust::service::Service`] `keybust serve` runs, with its public
//! listener only. For the contract's rules, where a process would prove
//! nothing more and only cost a start.

use super::logs::Logs;
use keybust::capabilities::Settings;
use keybust::rollout::source::ComponentSource;
use keybust::serve::endpoint::EndpointConfig;
use keybust::service::{Listeners, Service, ServiceConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::oneshot;

/// The endpoint on a loopback port, stopped on drop. What it logs on the
/// test's thread is captured (see [`Logs::capture_this_thread`]).
pub struct InProcess {
    pub addr: SocketAddr,
    logs: Logs,
    stop: Option<oneshot::Sender<()>>,
}

impl InProcess {
    /// Serves `component` with the settings `env` names, read the way the
    /// binary reads its environment.
    pub async fn start(env: &[(&str, String)], component: &[u8]) -> Self {
        let logs = Logs::capture_this_thread();
        let settings = Settings::from_lookup(|name| {
            env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
        })
        .expect("valid settings");
        let config = ServiceConfig {
            listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
            admin: None,
            component: ComponentSource::Bytes {
                bytes: component.to_vec(),
                label: "embedded".into(),
            },
            follow_interval: None,
            registry: None,
            tls: None,
            settings,
            endpoint: EndpointConfig {
                cache_dir: Some(artifact_dir().join("cache")),
                artifact_key: Some(artifact_dir().join("state").join("artifact.key")),
                ..EndpointConfig::default()
            },
            shutdown_delay: Duration::ZERO,
            shutdown_grace: Duration::from_secs(1),
            listeners: Listeners::default(),
        };
        let service = {
            // Loads take turns: in a fresh target directory the first one
            // compiles and stores the component, and the others load it
            // (milliseconds) instead of compiling it again side by side.
            static LOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let _turn = LOADS.lock().await;
            Service::build(config).await.expect("the service starts")
        };
        let addr = service.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(service.run(async move {
            let _ = stopped.await;
        }));
        InProcess {
            addr,
            logs,
            stop: Some(stop),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What the library logged on the test's thread since this start.
    pub fn logs(&self) -> &Logs {
        &self.logs
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.logs.stop_capture();
    }
}

/// Precompiled components for every in-process endpoint of every run, kept
/// in the target directory: the in-process tests load the component
/// instead of compiling it each time (the processes, each with a fresh
/// `--component-cache-dir`, still compile it). Entries are checked before use, with
/// a key kept beside the cache directory, as `--state-dir` keeps it.
fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keybust-artifacts")
}
