//! What the integration tests stand on: a real `redis-server`, test-owned
//! HTTP servers playing Convex, the Clerk issuer and the Upstash REST API,
//! and the real `keybust` binary, all on loopback.

#![allow(
    dead_code,
    unused_macros,
    reason = "each test binary uses a different part"
)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use std::convert::Infallible;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;

pub mod variant;

pub const ENDPOINT: &str = "/api/invalidate-user-api-key-cache";
pub const SECRET: &str = "test-convex-shared-secret-4f9a";
pub const UPSTASH_TOKEN: &str = "test-upstash-token-77c1";
pub const USER: &str = "user_owner";

/// Key hashes that make the fake Convex behave a certain way.
pub mod hashes {
    pub const OWNED: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    pub const OTHER_OWNER: &str =
        "2222222222222222222222222222222222222222222222222222222222222222";
    pub const UNKNOWN: &str = "3333333333333333333333333333333333333333333333333333333333333333";
    pub const EMPTY_OBJECT: &str =
        "4444444444444444444444444444444444444444444444444444444444444444";
    pub const ARRAY: &str = "5555555555555555555555555555555555555555555555555555555555555555";
    pub const STATUS_500: &str = "6666666666666666666666666666666666666666666666666666666666666666";
    pub const SLOW: &str = "7777777777777777777777777777777777777777777777777777777777777777";
    pub const GARBAGE: &str = "8888888888888888888888888888888888888888888888888888888888888888";
    pub const OWNED_2: &str = "9999999999999999999999999999999999999999999999999999999999999999";
    /// Owned by the caller, answered after one second.
    pub const OWNED_DELAYED: &str =
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

// ---------------------------------------------------------------------------
// Small HTTP servers

type Reply = Pin<Box<dyn Future<Output = hyper::Response<Full<Bytes>>> + Send>>;
type Handler = Arc<dyn Fn(hyper::Request<Incoming>) -> Reply + Send + Sync>;

/// Serves `handler` on a fresh loopback port until the test's runtime ends.
pub async fn spawn_http(handler: Handler) -> SocketAddr {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let reply = handler(request);
                    async move { Ok::<_, Infallible>(reply.await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

pub fn respond(status: u16, body: impl Into<Bytes>) -> hyper::Response<Full<Bytes>> {
    let mut response = hyper::Response::new(Full::new(body.into()));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

// ---------------------------------------------------------------------------
// Convex

/// One call the fake Convex received.
#[derive(Debug, Clone)]
pub struct ConvexCall {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub secret: Option<String>,
    pub body: String,
}

/// Plays Convex's `/api/internal-get-key-owner`; the key hash picks the answer.
pub struct FakeConvex {
    pub addr: SocketAddr,
    pub calls: Arc<Mutex<Vec<ConvexCall>>>,
}

impl FakeConvex {
    pub async fn start() -> Self {
        let calls: Arc<Mutex<Vec<ConvexCall>>> = Arc::default();
        let log = calls.clone();
        let handler: Handler = Arc::new(move |request| {
            let log = log.clone();
            Box::pin(async move {
                let header = |name: &str| {
                    request
                        .headers()
                        .get(name)
                        .map(|v| v.to_str().unwrap_or_default().to_owned())
                };
                let mut call = ConvexCall {
                    method: request.method().to_string(),
                    path: request.uri().path().to_owned(),
                    content_type: header("content-type"),
                    secret: header("x-convex-shared-secret"),
                    body: String::new(),
                };
                let body = request.into_body().collect().await.unwrap().to_bytes();
                call.body = String::from_utf8_lossy(&body).into_owned();
                log.lock().unwrap().push(call.clone());
                if call.secret.as_deref() != Some(SECRET) {
                    return respond(401, r#"{"error":"bad secret"}"#);
                }
                if call.path != "/api/internal-get-key-owner" || call.method != "POST" {
                    return respond(404, r#"{"error":"no such action"}"#);
                }
                let hash = serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("keyHash")?.as_str().map(str::to_owned))
                    .unwrap_or_default();
                match hash.as_str() {
                    hashes::OWNED | hashes::OWNED_2 => {
                        respond(200, json!({ "userId": USER, "keyId": "k1" }).to_string())
                    }
                    hashes::OTHER_OWNER => respond(200, r#"{"userId":"user_someone_else"}"#),
                    hashes::EMPTY_OBJECT => respond(200, "{}"),
                    hashes::ARRAY => respond(200, "[]"),
                    hashes::STATUS_500 => respond(500, r#"{"error":"boom"}"#),
                    hashes::SLOW => {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                        respond(200, json!({ "userId": USER }).to_string())
                    }
                    hashes::GARBAGE => respond(200, "<html>not json</html>"),
                    hashes::OWNED_DELAYED => {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        respond(200, json!({ "userId": USER }).to_string())
                    }
                    _ => respond(200, "null"),
                }
            })
        });
        FakeConvex {
            addr: spawn_http(handler).await,
            calls,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<ConvexCall> {
        self.calls.lock().unwrap().clone()
    }
}

// ---------------------------------------------------------------------------
// The token issuer

/// An RSA key the tests sign with; generated once per test binary.
pub struct SigningKey {
    pub kid: String,
    pub private: rsa::RsaPrivateKey,
}

impl SigningKey {
    fn generate(kid: &str) -> Self {
        SigningKey {
            kid: kid.to_owned(),
            private: rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).unwrap(),
        }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA",
            "use": "sig",
            "alg": "RS256",
            "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(self.private.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(self.private.e().to_bytes_be()),
        })
    }

    pub fn encoding_key(&self) -> jsonwebtoken::EncodingKey {
        let der = self.private.to_pkcs1_der().unwrap();
        jsonwebtoken::EncodingKey::from_rsa_der(der.as_bytes())
    }

    pub fn public_pem(&self) -> String {
        self.private
            .to_public_key()
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap()
    }
}

pub fn primary_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate("test-key-1"))
}

/// A key the issuer does not publish.
pub fn stranger_key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate("test-key-stranger"))
}

/// Serves a JWKS with [`primary_key`], counts fetches, and can go down.
pub struct Issuer {
    pub addr: SocketAddr,
    pub fetches: Arc<AtomicUsize>,
    pub down: Arc<AtomicBool>,
}

impl Issuer {
    pub async fn start() -> Self {
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let jwks = json!({ "keys": [primary_key().jwk()] }).to_string();
        let (count, is_down) = (fetches.clone(), down.clone());
        let handler: Handler = Arc::new(move |request| {
            let jwks = jwks.clone();
            let (count, is_down) = (count.clone(), is_down.clone());
            Box::pin(async move {
                if request.uri().path() != "/.well-known/jwks.json" {
                    return respond(404, "{}");
                }
                count.fetch_add(1, Ordering::SeqCst);
                if is_down.load(Ordering::SeqCst) {
                    return respond(503, r#"{"error":"down"}"#);
                }
                respond(200, jwks)
            })
        });
        Issuer {
            addr: spawn_http(handler).await,
            fetches,
            down,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Claims of a valid session for [`USER`].
    pub fn claims(&self) -> Value {
        let now = now();
        json!({ "sub": USER, "iss": self.url(), "iat": now, "nbf": now - 1, "exp": now + 600 })
    }

    /// A valid token for [`USER`].
    pub fn token(&self) -> String {
        sign(&self.claims(), primary_key())
    }
}

pub fn sign(claims: &Value, key: &SigningKey) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &key.encoding_key()).unwrap()
}

// ---------------------------------------------------------------------------
// Redis and the Upstash REST front

fn free_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `redis-server` on a free loopback port, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        let mut redis = Redis { port, child: None };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed: run scripts/test.sh, which installs it");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.client().get_connection().is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).unwrap()
    }

    pub fn set(&self, key: &str, value: &str) {
        let mut conn = self.client().get_connection().unwrap();
        redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query::<()>(&mut conn)
            .unwrap();
    }

    pub fn exists(&self, key: &str) -> bool {
        let mut conn = self.client().get_connection().unwrap();
        redis::cmd("EXISTS")
            .arg(key)
            .query::<i64>(&mut conn)
            .unwrap()
            == 1
    }

    /// Stops the server, as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A small Upstash-compatible REST front over a real Redis:
/// `POST /del/{key}` with `Authorization: Bearer <token>`.
pub struct UpstashFront {
    pub addr: SocketAddr,
    pub failing: Arc<AtomicBool>,
    pub calls: Arc<AtomicUsize>,
}

impl UpstashFront {
    pub async fn start(redis_url: String) -> Self {
        let failing = Arc::new(AtomicBool::new(false));
        let calls = Arc::new(AtomicUsize::new(0));
        let client = redis::Client::open(redis_url).unwrap();
        let (fail, count) = (failing.clone(), calls.clone());
        let handler: Handler = Arc::new(move |request| {
            let client = client.clone();
            let (fail, count) = (fail.clone(), count.clone());
            Box::pin(async move {
                count.fetch_add(1, Ordering::SeqCst);
                let authorized = request
                    .headers()
                    .get("authorization")
                    .is_some_and(|v| v.as_bytes() == format!("Bearer {UPSTASH_TOKEN}").as_bytes());
                if !authorized {
                    return respond(401, r#"{"error":"Unauthorized"}"#);
                }
                if fail.load(Ordering::SeqCst) {
                    return respond(500, r#"{"error":"ERR internal"}"#);
                }
                let Some(encoded) = request.uri().path().strip_prefix("/del/") else {
                    return respond(400, r#"{"error":"ERR unknown command"}"#);
                };
                let key = percent_encoding::percent_decode_str(encoded)
                    .decode_utf8()
                    .unwrap()
                    .into_owned();
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return respond(500, r#"{"error":"ERR redis unreachable"}"#);
                };
                match redis::cmd("DEL")
                    .arg(&key)
                    .query_async::<i64>(&mut conn)
                    .await
                {
                    Ok(n) => respond(200, json!({ "result": n }).to_string()),
                    Err(_) => respond(500, r#"{"error":"ERR redis failed"}"#),
                }
            })
        });
        UpstashFront {
            addr: spawn_http(handler).await,
            failing,
            calls,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

// ---------------------------------------------------------------------------
// Misbehaving components

/// The component built from `tests/programs`, compiled once per test binary
/// (into the same target directory the host's build script uses for the guest).
pub fn test_programs() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let target_dir = root.join("target").join("guest");
        let status = Command::new(env!("CARGO"))
            .current_dir(root)
            .args([
                "build",
                "--release",
                "--locked",
                "-p",
                "keybust-test-programs",
            ])
            .args(["--target", "wasm32-wasip2", "--target-dir"])
            .arg(&target_dir)
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .status()
            .expect("cannot run cargo to build tests/programs");
        assert!(status.success(), "building tests/programs failed");
        std::fs::read(target_dir.join("wasm32-wasip2/release/keybust_test_programs.wasm")).unwrap()
    })
}

// ---------------------------------------------------------------------------
// keybust itself

/// The `keybust` binary, started with an explicit environment and killed on drop.
pub struct Keybust {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    /// What keybust printed to stdout up to its listening line.
    pub printed: Vec<String>,
    child: Child,
    logs: Arc<Mutex<String>>,
    _cache_dir: tempfile::TempDir,
}

impl Keybust {
    /// Starts `keybust <args>` with exactly `env` (plus listen addresses on free ports).
    pub fn start(args: &[&str], env: &[(&str, String)]) -> Self {
        let cache_dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_keybust"));
        command
            .args(args)
            .env_clear()
            .env("KEYBUST_CACHE_DIR", cache_dir.path())
            .env("RUST_LOG", "info")
            .env("KEYBUST_LISTEN", "127.0.0.1:0")
            .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("cannot start keybust");
        let logs: Arc<Mutex<String>> = Arc::default();
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
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
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while addr.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => panic!(
                    "keybust did not start; stdout: {printed:?}; stderr:\n{}",
                    logs.lock().unwrap()
                ),
            };
            if let Some(rest) = line.strip_prefix("admin listening on http://") {
                admin = Some(rest.parse().unwrap());
            } else if let Some(rest) = line.strip_prefix("listening on http://") {
                addr = Some(rest.parse().unwrap());
            }
            printed.push(line);
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        Keybust {
            addr: addr.unwrap(),
            admin,
            printed,
            child,
            logs,
            _cache_dir: cache_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
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

    /// Everything keybust logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Waits until the logs mention `needle` (they arrive through a pipe),
    /// and fails with the logs after five seconds.
    pub async fn assert_logged(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.logs().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "logs never said {needle:?}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that nothing secret reached the logs.
    pub fn assert_logs_clean(&self, extra: &[&str]) {
        let logs = self.logs();
        for needle in [SECRET, UPSTASH_TOKEN].iter().chain(extra) {
            assert!(!logs.contains(needle), "logs leak {needle:?}:\n{logs}");
        }
        for hash in [
            hashes::OWNED,
            hashes::OTHER_OWNER,
            hashes::UNKNOWN,
            hashes::STATUS_500,
            hashes::SLOW,
            hashes::GARBAGE,
        ] {
            assert!(!logs.contains(hash), "logs leak a key hash:\n{logs}");
        }
    }
}

impl Drop for Keybust {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// A whole deployment

/// Which cache backend a stack uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    Redis,
    Upstash,
}

/// keybust with every backend it talks to.
pub struct Stack {
    pub backend: Backend,
    pub convex: FakeConvex,
    pub issuer: Issuer,
    pub redis: Option<Redis>,
    pub upstash: Option<UpstashFront>,
    pub keybust: Keybust,
    pub http: reqwest::Client,
    pub prefix: String,
}

/// Options for a stack beyond the defaults.
#[derive(Default, Clone)]
pub struct Options {
    /// Extra or overriding environment variables.
    pub env: Vec<(&'static str, String)>,
    /// Variables to leave out of the defaults.
    pub without: Vec<&'static str>,
    /// The key prefix these settings produce, for assertions.
    pub prefix: String,
    /// Extra arguments after `serve`.
    pub args: Vec<String>,
}

impl Stack {
    pub async fn start(backend: Backend) -> Self {
        Self::with(backend, Options::default()).await
    }

    pub async fn with(backend: Backend, options: Options) -> Self {
        let convex = FakeConvex::start().await;
        let issuer = Issuer::start().await;
        let mut env: Vec<(&str, String)> = vec![
            ("CONVEX_SITE_URL", convex.url()),
            ("CONVEX_SERVER_SHARED_SECRET", SECRET.to_owned()),
            ("CLERK_JWT_ISSUER_DOMAIN", issuer.url()),
        ];
        let (redis, upstash) = match backend {
            Backend::Embedded => (None, None),
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
        let args = options.args.clone();
        let keybust = tokio::task::spawn_blocking(move || {
            let mut all = vec!["serve"];
            all.extend(args.iter().map(String::as_str));
            Keybust::start(&all, &env)
        })
        .await
        .unwrap();
        Stack {
            backend,
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

    /// A POST to the endpoint with a valid token and `body`.
    pub async fn post(&self, body: impl Into<reqwest::Body>) -> reqwest::Response {
        self.post_with(&self.issuer.token(), body).await
    }

    pub async fn post_with(
        &self,
        token: &str,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::Response {
        self.request(reqwest::Method::POST, ENDPOINT)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }

    /// A POST for `hash` with a valid token.
    pub async fn invalidate(&self, hash: &str) -> reqwest::Response {
        self.post(json!({ "keyHash": hash }).to_string()).await
    }

    /// A POST for an owned hash with `token`; the status says whether the token passed.
    pub async fn status_with_token(&self, token: &str) -> u16 {
        let body = json!({ "keyHash": hashes::OWNED }).to_string();
        self.post_with(token, body).await.status().as_u16()
    }
}

/// Status, headers and body of a response, for assertions.
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Answer {
    pub async fn of(response: reqwest::Response) -> Self {
        Answer {
            status: response.status().as_u16(),
            headers: response.headers().clone(),
            body: response.text().await.unwrap(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts status and exact JSON body, and that it is labelled JSON and
    /// sent with its length rather than chunked.
    pub fn assert_json(&self, status: u16, body: &str) {
        assert_eq!(self.status, status, "body: {}", self.body);
        assert_eq!(self.body, body);
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(
            self.header("content-length"),
            Some(body.len().to_string().as_str())
        );
        assert_eq!(self.header("transfer-encoding"), None);
    }

    /// Asserts the CORS headers for an allowed request.
    pub fn assert_cors(&self, allow_origin: &str) {
        assert_eq!(
            self.header("access-control-allow-origin"),
            Some(allow_origin)
        );
        assert_eq!(
            self.header("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(
            self.header("access-control-allow-methods"),
            Some("POST, OPTIONS")
        );
        let allow_headers = self.header("access-control-allow-headers").unwrap();
        assert!(
            allow_headers.starts_with("Content-Type, Authorization"),
            "{allow_headers}"
        );
        assert!(
            allow_headers.contains("X-WorldMonitor-Key"),
            "{allow_headers}"
        );
        let expose = self.header("access-control-expose-headers").unwrap();
        assert!(expose.contains("Retry-After"), "{expose}");
        assert_eq!(self.header("access-control-max-age"), Some("3600"));
        assert_eq!(self.header("vary"), Some("Origin"));
    }
}

/// Generates one test per cache backend for each listed `async fn(Backend)`.
macro_rules! each_backend {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Embedded).await
                }
            )*
        }
        mod redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Redis).await
                }
            )*
        }
        mod upstash {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::support::Backend::Upstash).await
                }
            )*
        }
    };
}
