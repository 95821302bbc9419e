//! The `keybust` binary as a subprocess: for what only a process shows (its
//! command line and environment, signals, startup failures, its stderr).

use super::logs::Logs;
use super::use_aws_lc_for_tls;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `keybust` binary, started with an explicit environment and killed on drop.
pub struct Keybust {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// The probes-only listener, when `--metrics-listen` opened one.
    pub metrics: Option<SocketAddr>,
    /// What keybust printed to stdout up to its listening line.
    pub printed: Vec<String>,
    child: Child,
    logs: Logs,
    _dirs: tempfile::TempDir,
}

/// The binary the tests start: the one this build made, or the one
/// `KEYBUST_TEST_BINARY` names (to run the suite against another build,
/// for instance to see a new test fail on code from before a fix). With
/// it set, every stack runs that binary, in-process ones included.
pub fn binary() -> std::path::PathBuf {
    std::env::var_os("KEYBUST_TEST_BINARY")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_keybust").into())
}

/// `keybust serve ARGS` with a fresh state directory, which must refuse to
/// start; its stderr.
pub fn refused_start(args: &[&str]) -> String {
    let state = tempfile::tempdir().unwrap();
    let mut command = serve_command(&[]);
    command
        .args(args)
        .env("KEYBUST_STATE_DIR", state.path())
        .env("DOCKER_CONFIG", "/nonexistent");
    refused(command)
}

/// `keybust serve` with nothing in its environment but loopback
/// listeners on free ports and `env`.
pub fn serve_command(env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .env_clear()
        .env("KEYBUST_LISTEN", "127.0.0.1:0")
        .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
        .envs(env.iter().copied());
    command
}

/// Runs `command`, which must exit with a failure within a minute (a
/// keybust that serves instead is killed, and the test fails); its stderr.
pub fn refused(mut command: Command) -> String {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = reader.join().unwrap();
    assert!(!status.success(), "{command:?} exited 0: {stderr}");
    stderr
}

impl Keybust {
    /// Starts `keybust <args>` with exactly `env` (plus listen addresses on free ports).
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let mut command = Command::new(binary());
        command.args(args);
        Self::start_command(command, env)
    }

    /// [`Keybust::start`] for a command of the test's own: keybust behind
    /// a wrapper, or with file descriptors passed. It must run keybust with
    /// its arguments; the environment and listen addresses are added here.
    pub fn start_command(mut command: Command, env: &[(&str, String)]) -> Self {
        use_aws_lc_for_tls();
        let dirs = tempfile::tempdir().unwrap();
        command.env_clear();
        // Unless the test gives the directory under its old name.
        if !env.iter().any(|(name, _)| *name == "KEYBUST_CACHE_DIR") {
            command.env("KEYBUST_COMPONENT_CACHE_DIR", dirs.path().join("cache"));
        }
        command
            .env("KEYBUST_STATE_DIR", dirs.path().join("state"))
            .env("RUST_LOG", "info")
            // A swap serves at once, as most tests expect; the shadow
            // stage's own tests turn it back on.
            .env("KEYBUST_SHADOW", "off")
            .env("KEYBUST_LISTEN", "127.0.0.1:0")
            .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start keybust");
        let logs = Logs::default();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.push_line(&line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut addr = None;
        let mut admin = None;
        let mut metrics = None;
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "keybust did not start; stdout: {printed:?}; stderr:\n{}",
                    logs.text()
                ),
            };
            if let Some(rest) = line.strip_prefix("admin listening on ") {
                admin = Some(listening_addr(rest));
            } else if let Some(rest) = line.strip_prefix("metrics listening on ") {
                metrics = Some(listening_addr(rest));
            } else if let Some(rest) = line.strip_prefix("listening on ") {
                addr = Some(listening_addr(rest));
            }
            printed.push(line);
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Keybust {
            addr: addr.unwrap(),
            admin,
            metrics,
            printed,
            child,
            logs,
            _dirs: dirs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn metrics_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.metrics
                .expect("keybust serve --metrics-listen has a metrics listener")
        )
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin.expect("keybust serve has an admin listener")
        )
    }

    /// Sends a Unix signal to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits for the process to exit, failing after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keybust did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything keybust wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.logs.text()
    }

    /// Its stderr, as it arrives.
    pub fn log_sink(&self) -> &Logs {
        &self.logs
    }
}

/// The address in a listening line's `http://ADDR` or `https://ADDR`.
fn listening_addr(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("not a listening address: {url}"))
}

impl Drop for Keybust {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
