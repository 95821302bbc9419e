//! keybust's library served in the test's own runtime, as `keybust serve`
//! serves its public listener (host/src/bin/keybust/main.rs, `run`): for the contract's
//! rules, where a process would prove nothing more and only cost a start.

use super::logs::Logs;
use keybust::capabilities::{Capabilities, Settings};
use keybust::serve::endpoint::{Endpoint, EndpointConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
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
        let capabilities = Arc::new(Capabilities::from_settings(&settings).expect("capabilities"));
        let config = EndpointConfig {
            cache_dir: Some(artifact_dir().join("cache")),
            artifact_key: Some(artifact_dir().join("state").join("artifact.key")),
            ..EndpointConfig::default()
        };
        let endpoint = {
            // Loads take turns: in a fresh target directory the first one
            // compiles and stores the component, and the others load it
            // (milliseconds) instead of compiling it again side by side.
            static LOADS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
            let _turn = LOADS.lock().await;
            Endpoint::load(capabilities, component.to_vec(), "embedded".into(), &config)
                .await
                .expect("the component loads")
        };
        let endpoint = Arc::new(endpoint);
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler = move |request| {
            let endpoint = endpoint.clone();
            async move { endpoint.route(request).await }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(keybust::serve::server::serve(
            listener,
            handler,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
            config.limits,
        ));
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
/// `--cache-dir`, still compile it). Entries are checked before use, with
/// a key kept beside the cache directory, as `--state-dir` keeps it.
fn artifact_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keybust-artifacts")
}
