//! A real `redis-server`, and an Upstash-style REST front over it.

use super::UPSTASH_TOKEN;
use super::http::{Handler, respond, spawn_http};
use serde_json::json;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    /// Arguments beyond the defaults.
    extra: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(Vec::new())
    }

    /// A server started with `extra` arguments.
    fn start_with(extra: Vec<String>) -> Self {
        let port = free_port();
        let mut redis = Redis {
            port,
            extra,
            child: None,
        };
        redis.spawn();
        redis
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(&self.extra)
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

/// A real three-node Redis Cluster (three masters, no replicas), made the
/// way an operator makes one: three `redis-server --cluster-enabled yes`
/// and `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Redis>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let nodes: Vec<Redis> = (0..3)
            .map(|i| {
                let config = dir.path().join(format!("nodes-{i}.conf"));
                Redis::start_with(vec![
                    "--cluster-enabled".into(),
                    "yes".into(),
                    "--cluster-config-file".into(),
                    config.display().to_string(),
                    "--cluster-port".into(),
                    free_port().to_string(),
                    "--cluster-node-timeout".into(),
                    "2000".into(),
                    "--dir".into(),
                    dir.path().display().to_string(),
                ])
            })
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|node| format!("127.0.0.1:{}", node.port)))
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("redis-cli must be installed: run scripts/test.sh, which installs it");
        assert!(
            created.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        for node in &nodes {
            loop {
                let mut conn = node.client().get_connection().unwrap();
                let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn).unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the cluster never became ok: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        RedisCluster { nodes, _dir: dir }
    }

    /// The seed nodes, as `REDIS_CLUSTER_NODES` takes them.
    pub fn nodes_setting(&self) -> String {
        self.nodes
            .iter()
            .map(Redis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sets `key` on the node that holds its slot.
    pub fn set(&self, key: &str, value: &str) {
        let node = self.owner(key);
        self.nodes[node].set(key, value);
    }

    /// The index of the node whose slots include `key`'s.
    pub fn owner(&self, key: &str) -> usize {
        let mut conn = self.nodes[0].client().get_connection().unwrap();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut conn)
            .unwrap();
        let shards: Vec<redis::Value> =
            redis::cmd("CLUSTER").arg("SLOTS").query(&mut conn).unwrap();
        for shard in shards {
            let redis::Value::Array(fields) = shard else {
                continue;
            };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            if !(*start..=*end).contains(&slot) {
                continue;
            }
            let Some(redis::Value::Array(master)) = fields.get(2) else {
                continue;
            };
            if let Some(redis::Value::Int(port)) = master.get(1) {
                return self
                    .nodes
                    .iter()
                    .position(|node| i64::from(node.port) == *port)
                    .expect("the slot's owner is one of the nodes");
            }
        }
        panic!("no node holds slot {slot}");
    }

    /// The keys each node holds.
    pub fn keys_by_node(&self) -> Vec<Vec<String>> {
        self.nodes
            .iter()
            .map(|node| {
                let mut conn = node.client().get_connection().unwrap();
                let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
                keys.sort();
                keys
            })
            .collect()
    }
}

/// A small Upstash-compatible REST front over a real Redis:
/// `POST /del/{key}` and `POST /ping` with `Authorization: Bearer <token>`.
pub struct UpstashFront {
    pub addr: SocketAddr,
    pub failing: Arc<AtomicBool>,
    /// The `traceparent` of each command that carried one.
    pub traceparents: Arc<Mutex<Vec<String>>>,
}

impl UpstashFront {
    pub async fn start(redis_url: String) -> Self {
        let failing = Arc::new(AtomicBool::new(false));
        let client = redis::Client::open(redis_url).unwrap();
        let fail = failing.clone();
        let traceparents: Arc<Mutex<Vec<String>>> = Arc::default();
        let seen = traceparents.clone();
        let handler: Handler = Arc::new(move |request| {
            let client = client.clone();
            let fail = fail.clone();
            if let Some(value) = request.headers().get("traceparent") {
                seen.lock()
                    .unwrap()
                    .push(value.to_str().unwrap_or_default().to_owned());
            }
            Box::pin(async move {
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
                if request.uri().path() == "/ping" {
                    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                        return respond(500, r#"{"error":"ERR redis unreachable"}"#);
                    };
                    return match redis::cmd("PING").query_async::<String>(&mut conn).await {
                        Ok(pong) => respond(200, json!({ "result": pong }).to_string()),
                        Err(_) => respond(500, r#"{"error":"ERR redis failed"}"#),
                    };
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
            traceparents,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// A RESP front to a real Redis whose first connection can be made to go
/// silent: from [`SilentFirstConnection::silence`] on, it reads what it is
/// sent and passes nothing on, either way, without closing, as a hung peer
/// or a blackholed address does. Every later connection is passed through.
pub struct SilentFirstConnection {
    pub addr: SocketAddr,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
    silent: Arc<AtomicBool>,
}

impl SilentFirstConnection {
    pub async fn start(redis_port: u16) -> Self {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let silent = Arc::new(AtomicBool::new(false));
        let (count, flag) = (accepted.clone(), silent.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let first = count.fetch_add(1, Ordering::SeqCst) == 0;
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", redis_port)).await
                else {
                    continue;
                };
                let silent = if first {
                    flag.clone()
                } else {
                    Arc::new(AtomicBool::new(false))
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, silent.clone()));
                tokio::spawn(forward(server_read, client_write, silent));
            }
        });
        SilentFirstConnection {
            addr,
            accepted,
            silent,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// From now on the first connection passes nothing on.
    pub fn silence(&self) {
        self.silent.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes, dropping what it reads
/// while `silent` is set.
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    silent: Arc<AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if silent.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
