//! A whole deployment: keybust (the process, or the library in the test's
//! runtime) with every backend it talks to.

use super::answer::{Answer, Answered};
use super::convex::{FakeConvex, hashes};
use super::in_process::InProcess;
use super::issuer::Issuer;
use super::logs::Logs;
use super::process::Keybust;
use super::programs::Guest;
use super::redis::{Redis, UpstashFront};
use super::{ENDPOINT, SECRET, UPSTASH_TOKEN, use_aws_lc_for_tls};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Which cache backend a stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
    Upstash,
}

/// Options for a stack beyond the defaults.
#[derive(Default, Clone)]
pub struct Options {
    /// Serve the library in the test's runtime instead of starting the
    /// binary. Its logs are captured only on a current-thread runtime.
    pub in_process: bool,
    /// Extra or overriding environment variables.
    pub env: Vec<(&'static str, String)>,
    /// Variables to leave out of the defaults.
    pub without: Vec<&'static str>,
    /// The key prefix these settings produce, for assertions.
    pub prefix: String,
    /// Extra arguments after `serve` (the process only).
    pub args: Vec<String>,
    /// Which build of the guest to serve (a process gets it as a file
    /// through `--component`).
    pub guest: Guest,
}

impl Options {
    /// The defaults with these environment variables set as well.
    pub fn with_env(pairs: &[(&'static str, &str)]) -> Self {
        Options {
            env: pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
            ..Options::default()
        }
    }
}

/// The keybust a stack serves from.
pub enum Server {
    /// `keybust serve`, a subprocess.
    Process(Keybust),
    /// The library, in the test's runtime.
    InProcess(InProcess),
}

impl Server {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Server::Process(keybust) => keybust.addr,
            Server::InProcess(server) => server.addr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        match self {
            Server::Process(keybust) => keybust.url(path),
            Server::InProcess(server) => server.url(path),
        }
    }

    /// The subprocess, for what only it has.
    pub fn process(&self) -> &Keybust {
        match self {
            Server::Process(keybust) => keybust,
            Server::InProcess(_) => panic!("this needs the keybust process, not in_process"),
        }
    }

    pub fn process_mut(&mut self) -> &mut Keybust {
        match self {
            Server::Process(keybust) => keybust,
            Server::InProcess(_) => panic!("this needs the keybust process, not in_process"),
        }
    }

    pub fn admin_url(&self, path: &str) -> String {
        self.process().admin_url(path)
    }

    pub fn signal(&self, signal: i32) {
        self.process().signal(signal)
    }

    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.process_mut().wait_exit(limit)
    }

    fn log_sink(&self) -> &Logs {
        match self {
            Server::Process(keybust) => keybust.log_sink(),
            Server::InProcess(server) => server.logs(),
        }
    }

    /// Everything keybust logged so far.
    pub fn logs(&self) -> String {
        self.log_sink().text()
    }

    /// Waits until the logs mention `needle`, failing after five seconds.
    pub async fn assert_logged(&self, needle: &str) {
        self.log_sink().assert_logged(needle).await
    }

    /// Waits until exactly `count` log lines contain every one of
    /// `needles`, failing after five seconds (access lines leave in batches).
    pub async fn wait_for_lines(&self, needles: &[&str], count: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let logs = self.logs();
            let found = logs
                .lines()
                .filter(|line| needles.iter().all(|needle| line.contains(needle)))
                .count();
            if found == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{found} lines with {needles:?}, not {count}:\n{logs}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that nothing secret reached the logs. In process, the logs
    /// must hold an access line first: a capture that saw nothing (a server
    /// running on other threads) would prove nothing.
    pub fn assert_logs_clean(&self, extra: &[&str]) {
        if let Server::InProcess(server) = self {
            let logs = server.logs().text();
            assert!(
                logs.contains("keybust::access"),
                "the log capture saw no request (is the test on a current-thread runtime?):\n{logs}"
            );
        }
        self.log_sink().assert_clean(extra)
    }
}

/// keybust with every backend it talks to.
pub struct Stack {
    pub convex: FakeConvex,
    pub issuer: Issuer,
    pub redis: Option<Redis>,
    pub upstash: Option<UpstashFront>,
    pub keybust: Server,
    pub http: reqwest::Client,
    pub prefix: String,
    /// Holds the file of `--component` while the process serves it.
    _component: Option<tempfile::TempDir>,
}

impl Stack {
    /// `keybust serve` with default settings for `backend`.
    pub async fn start(backend: Backend) -> Self {
        Self::with(backend, Options::default()).await
    }

    /// The library, in the test's runtime, with default settings for `backend`.
    pub async fn in_process(backend: Backend) -> Self {
        Self::serving(Guest::P2, backend).await
    }

    /// Like [`Stack::in_process`], serving `guest`.
    pub async fn serving(guest: Guest, backend: Backend) -> Self {
        let options = Options {
            in_process: true,
            guest,
            ..Options::default()
        };
        Self::with(backend, options).await
    }

    pub async fn with(backend: Backend, options: Options) -> Self {
        use_aws_lc_for_tls();
        let convex = FakeConvex::start().await;
        let issuer = Issuer::start().await;
        let mut env: Vec<(&str, String)> = vec![
            ("CONVEX_SITE_URL", convex.url()),
            ("CONVEX_SERVER_SHARED_SECRET", SECRET.to_owned()),
            ("CLERK_JWT_ISSUER_DOMAIN", issuer.url()),
        ];
        let (redis, upstash) = match backend {
            Backend::Embedded => {
                // The in-process store on purpose, unless the test names a
                // backend of its own.
                let own = options.env.iter().any(|(name, _)| {
                    matches!(
                        *name,
                        "REDIS_URL"
                            | "REDIS_CLUSTER_NODES"
                            | "UPSTASH_REDIS_REST_URL"
                            | "KEYBUST_CACHE"
                    )
                });
                if !own {
                    env.push(("KEYBUST_CACHE", "embedded".to_owned()));
                }
                (None, None)
            }
            Backend::Redis => {
                let redis = Redis::start();
                env.push(("REDIS_URL", redis.url()));
                (Some(redis), None)
            }
            Backend::Upstash => {
                let redis = Redis::start();
                let front = UpstashFront::start(redis.url()).await;
                env.push(("UPSTASH_REDIS_REST_URL", front.url()));
                env.push(("UPSTASH_REDIS_REST_TOKEN", UPSTASH_TOKEN.to_owned()));
                (Some(redis), Some(front))
            }
        };
        env.retain(|(name, _)| !options.without.contains(name));
        for (name, value) in options.env.clone() {
            env.retain(|(n, _)| *n != name);
            env.push((name, value));
        }
        let in_process = options.in_process && std::env::var_os("KEYBUST_TEST_BINARY").is_none();
        let guest = options.guest;
        let component = tokio::task::spawn_blocking(move || guest.bytes())
            .await
            .unwrap();
        let mut component_dir = None;
        let keybust = if in_process {
            assert!(
                options.args.is_empty(),
                "command-line arguments need the process"
            );
            Server::InProcess(InProcess::start(&env, component).await)
        } else {
            let mut args = options.args.clone();
            if guest != Guest::P2 {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("endpoint.wasm");
                std::fs::write(&path, component).unwrap();
                args.extend(["--component".to_owned(), path.display().to_string()]);
                component_dir = Some(dir);
            }
            Server::Process(
                tokio::task::spawn_blocking(move || {
                    let mut all = vec!["serve"];
                    all.extend(args.iter().map(String::as_str));
                    Keybust::start(&all, &env)
                })
                .await
                .unwrap(),
            )
        };
        Stack {
            convex,
            issuer,
            redis,
            upstash,
            keybust,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
            prefix: options.prefix,
            _component: component_dir,
        }
    }

    /// Repeats `send` until it answers 200, failing after ten seconds: for
    /// recoveries that take a reconnect or two.
    pub async fn wait_for_ok<F, Fut>(mut send: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Answer>,
    {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = send().await;
            if answer.status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "still {}: {}",
                answer.status,
                answer.body
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The admin listener's `/metrics` text (the process only).
    pub async fn metrics(&self) -> String {
        reqwest::get(self.keybust.admin_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits until the metrics hold exactly `line`, failing after 10 s.
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.metrics().await;
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(Instant::now() < deadline, "no `{line}` in:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The full cache key for a hash.
    pub fn cache_key(&self, hash: &str) -> String {
        format!("{}user-api-key:{hash}", self.prefix)
    }

    /// Seeds the cache entry for `hash`, where the backend can be observed.
    pub fn seed(&self, hash: &str) {
        if let Some(redis) = &self.redis {
            redis.set(&self.cache_key(hash), r#"{"userId":"user_owner"}"#);
        }
    }

    /// Whether the entry for `hash` is still cached (`None` for the embedded store).
    pub fn cached(&self, hash: &str) -> Option<bool> {
        self.redis
            .as_ref()
            .map(|redis| redis.exists(&self.cache_key(hash)))
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.keybust.url(path))
    }

    /// A POST to the endpoint with a valid token and `body`, answered.
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> Answer {
        self.post_with(&self.issuer.token(), body).await
    }

    /// A POST to the endpoint with `token` and `body`, answered.
    pub async fn post_with(&self, token: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.request(reqwest::Method::POST, ENDPOINT)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .answer()
            .await
    }

    /// A POST for `hash` with a valid token, answered.
    pub async fn invalidate(&self, hash: &str) -> Answer {
        self.post(json!({ "keyHash": hash }).to_string()).await
    }

    /// A request to the admin listener's `path`, for the test to finish
    /// (a token, a body) and send with [`Answered::answer`].
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.keybust.admin_url(path))
    }

    /// A POST for an owned hash with `token`; the status says whether the token passed.
    pub async fn status_with_token(&self, token: &str) -> u16 {
        let body = json!({ "keyHash": hashes::OWNED }).to_string();
        self.post_with(token, body).await.status
    }
}
