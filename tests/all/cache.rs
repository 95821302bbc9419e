//! docs/contract.md, The cache key: the key, its deploy prefix, and the
//! backends, against a real `redis-server` (directly over RESP, and behind
//! an Upstash-style REST front), with keybust served in process; and the
//! settings' failures at startup, which only the `keybust` binary shows.

use crate::support::redis::SilentFirstConnection;
use crate::support::{self, Backend, Options, Redis, Stack, hashes};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// keybust in process, with the settings `options` adds.
async fn in_process(backend: Backend, options: Options) -> Stack {
    let options = Options {
        in_process: true,
        ..options
    };
    Stack::with(backend, options).await
}

async fn prefix_case(backend: Backend, env: Vec<(&'static str, String)>, prefix: &str) {
    let options = Options {
        in_process: true,
        env,
        prefix: prefix.to_owned(),
        ..Options::default()
    };
    prefix_deletes_only_the_prefixed_key(backend, options).await;
}

/// Deletes the prefixed key for an owned hash, and leaves the bare one.
async fn prefix_deletes_only_the_prefixed_key(backend: Backend, options: Options) {
    let prefix = options.prefix.clone();
    let stack = Stack::with(backend, options).await;
    let redis = stack.redis.as_ref().unwrap();
    // The same hash without the prefix must survive: only the prefixed key goes.
    let bare = format!("user-api-key:{}", hashes::OWNED);
    redis.set(&bare, "bare");
    stack.seed(hashes::OWNED);
    assert!(redis.exists(&stack.cache_key(hashes::OWNED)));
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(200, r#"{"ok":true}"#);
    assert!(
        !redis.exists(&stack.cache_key(hashes::OWNED)),
        "prefix {prefix:?}"
    );
    if !prefix.is_empty() {
        assert!(redis.exists(&bare), "the unprefixed key must stay");
    }
    stack.keybust.assert_logs_clean(&[]);
}

async fn prefix_rules(backend: Backend) {
    let sha = "abcdef0123456789".to_owned();
    prefix_case(backend, vec![], "").await;
    prefix_case(
        backend,
        vec![
            ("VERCEL_ENV", "production".into()),
            ("VERCEL_GIT_COMMIT_SHA", sha.clone()),
        ],
        "",
    )
    .await;
    prefix_case(
        backend,
        vec![
            ("VERCEL_ENV", "preview".into()),
            ("VERCEL_GIT_COMMIT_SHA", sha.clone()),
        ],
        "preview:abcdef01:",
    )
    .await;
    prefix_case(
        backend,
        vec![("VERCEL_ENV", "development".into())],
        "development:dev:",
    )
    .await;
    prefix_case(
        backend,
        vec![
            ("VERCEL_ENV", "preview".into()),
            ("VERCEL_GIT_COMMIT_SHA", sha),
            ("KEYBUST_CACHE_PREFIX", "tenant-a:".into()),
        ],
        "tenant-a:",
    )
    .await;
}

#[tokio::test]
async fn redis_prefix_rules() {
    prefix_rules(Backend::Redis).await
}

#[tokio::test]
async fn upstash_prefix_rules() {
    prefix_rules(Backend::Upstash).await
}

/// The binary takes the cache's settings (backend and prefix) from its
/// environment, and its logs, from startup on, keep the Upstash token, the
/// Convex secret and the key hash to themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reads_the_cache_settings_from_its_environment() {
    let options = Options {
        env: vec![
            ("VERCEL_ENV", "preview".into()),
            ("VERCEL_GIT_COMMIT_SHA", "abcdef0123456789".into()),
        ],
        prefix: "preview:abcdef01:".to_owned(),
        ..Options::default()
    };
    prefix_deletes_only_the_prefixed_key(Backend::Upstash, options).await;
}

#[tokio::test]
async fn redis_recovers_after_a_restart_without_restarting_keybust() {
    let mut stack = Stack::in_process(Backend::Redis).await;
    stack.seed(hashes::OWNED);
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    stack.redis.as_mut().unwrap().stop();
    for _ in 0..3 {
        let started = Instant::now();
        let answer = stack.invalidate(hashes::OWNED).await;
        answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    stack.redis.as_mut().unwrap().restart();
    stack.seed(hashes::OWNED);
    Stack::wait_for_ok(|| async { stack.invalidate(hashes::OWNED).await }).await;
    assert_eq!(stack.cached(hashes::OWNED), Some(false));
}

#[tokio::test]
async fn redis_down_at_start_then_up() {
    let mut redis = support::Redis::start();
    redis.stop();
    let options = Options {
        env: vec![("REDIS_URL", redis.url())],
        ..Options::default()
    };
    // keybust starts although Redis is down, and fails closed.
    let stack = in_process(Backend::Embedded, options).await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    redis.restart();
    redis.set(&format!("user-api-key:{}", hashes::OWNED), "x");
    Stack::wait_for_ok(|| async { stack.invalidate(hashes::OWNED).await }).await;
    assert!(!redis.exists(&format!("user-api-key:{}", hashes::OWNED)));
}

#[tokio::test]
async fn upstash_wrong_token_is_503() {
    let options = Options {
        env: vec![("UPSTASH_REDIS_REST_TOKEN", "not-the-token".to_owned())],
        ..Options::default()
    };
    let stack = in_process(Backend::Upstash, options).await;
    stack.seed(hashes::OWNED);
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert_eq!(stack.cached(hashes::OWNED), Some(true));
    stack.keybust.assert_logs_clean(&["not-the-token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_settings_stop_startup_with_a_clear_error() {
    let cases: [(&[(&str, &str)], &str); 4] = [
        (
            &[("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9")],
            "UPSTASH_REDIS_REST_TOKEN must be set together",
        ),
        (
            &[("REDIS_URL", "http://127.0.0.1:6379")],
            "REDIS_URL: must start with redis://",
        ),
        (
            &[("CONVEX_SITE_URL", "example.convex.site")],
            "CONVEX_SITE_URL: must start with http:// or https://",
        ),
        (
            &[("CONVEX_SERVER_SHARED_SECRET", "line\nbreak")],
            "CONVEX_SERVER_SHARED_SECRET: must be printable ASCII",
        ),
    ];
    for (vars, message) in cases {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keybust"))
            .arg("serve")
            .env_clear()
            .env("KEYBUST_LISTEN", "127.0.0.1:0")
            .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(vars.iter().copied())
            .output()
            .unwrap();
        assert!(!output.status.success(), "{vars:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{vars:?}: {stderr}");
        assert!(
            !stderr.contains("line\nbreak") && !stderr.contains("break"),
            "{stderr}"
        );
    }
}

/// Eight clients keep sending on two threads, which they share with keybust
/// (nothing here reads its logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_under_load_fails_fast_and_recovers() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stack = Arc::new(tokio::sync::Mutex::new(
        Stack::in_process(Backend::Redis).await,
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (http, url, token) = {
        let s = stack.lock().await;
        (
            s.http.clone(),
            s.keybust.url(support::ENDPOINT),
            s.issuer.token(),
        )
    };
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (http, url, token, stop) = (http.clone(), url.clone(), token.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .body(format!(r#"{{"keyHash":"{}"}}"#, hashes::OWNED))
                    .send()
                    .await
                    .unwrap();
                seen.push((response.status().as_u16(), started.elapsed()));
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stack.lock().await.redis.as_mut().unwrap().stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack.lock().await.redis.as_mut().unwrap().restart();
    // Back to 200s without restarting keybust.
    Stack::wait_for_ok(|| async { stack.lock().await.invalidate(hashes::OWNED).await }).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for client in clients {
        for (status, took) in client.await.unwrap() {
            *statuses.entry(status).or_default() += 1;
            assert!(matches!(status, 200 | 503), "unexpected {status}");
            assert!(
                took < Duration::from_secs(2),
                "a request hung for {took:?} ({status})"
            );
        }
    }
    assert!(statuses.get(&503).is_some_and(|n| *n > 0), "{statuses:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n > 0), "{statuses:?}");
}

/// An Upstash answer is read with a size bound: a backend (or whoever
/// stands in its place) cannot make keybust buffer without end.
#[tokio::test]
async fn an_oversized_upstash_answer_is_refused() {
    let handler: support::http::Handler = std::sync::Arc::new(|_request| {
        Box::pin(async {
            let padded = serde_json::json!({ "result": 1, "padding": "x".repeat(1 << 20) });
            support::http::respond(200, padded.to_string())
        })
    });
    let front = support::http::spawn_http(handler).await;
    let options = Options {
        env: vec![
            ("UPSTASH_REDIS_REST_URL", format!("http://{front}")),
            ("UPSTASH_REDIS_REST_TOKEN", "t".to_owned()),
        ],
        ..Options::default()
    };
    let stack = in_process(Backend::Embedded, options).await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    stack.keybust.assert_logged("longer than").await;
}

/// The old millisecond cache deadline still works, with a warning that
/// names its replacement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_old_cache_timeout_setting_still_counts_and_warns() {
    let options = Options {
        env: vec![("KEYBUST_CACHE_TIMEOUT_MS", "700".to_owned())],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Redis, options).await;
    stack
        .keybust
        .assert_logged("KEYBUST_CACHE_TIMEOUT_MS is deprecated: set KEYBUST_CACHE_TIMEOUT=700ms")
        .await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(200, r#"{"ok":true}"#);
}

/// With the cache on a real three-node Redis Cluster (and a deploy
/// prefix), the owner's key goes from the node that holds its slot, and
/// every other key, on every node, stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_loses_the_owners_key_on_the_node_that_holds_it() {
    let cluster = tokio::task::spawn_blocking(support::RedisCluster::start)
        .await
        .unwrap();
    let options = Options {
        env: vec![
            ("REDIS_CLUSTER_NODES", cluster.nodes_setting()),
            ("VERCEL_ENV", "preview".into()),
            ("VERCEL_GIT_COMMIT_SHA", "abcdef0123456789".into()),
        ],
        prefix: "preview:abcdef01:".to_owned(),
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let owners = stack.cache_key(hashes::OWNED);
    let others = [
        format!("user-api-key:{}", hashes::OWNED),
        stack.cache_key(hashes::OWNED_2),
        stack.cache_key(hashes::OTHER_OWNER),
        stack.cache_key(hashes::UNKNOWN),
        stack.cache_key(hashes::EMPTY_OBJECT),
        stack.cache_key(hashes::ARRAY),
    ];
    cluster.set(&owners, r#"{"userId":"user_owner"}"#);
    for key in &others {
        cluster.set(key, "kept");
    }
    let owner_node = cluster.owner(&owners);
    assert!(
        others.iter().any(|key| cluster.owner(key) != owner_node),
        "the keys must span more than one node for this test to mean anything"
    );
    let before = cluster.keys_by_node();
    assert!(before[owner_node].contains(&owners));

    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(200, r#"{"ok":true}"#);

    let mut expected = before;
    expected[owner_node].retain(|key| *key != owners);
    assert_eq!(cluster.keys_by_node(), expected);
    // The background check reaches the cluster: ready.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready = reqwest::get(stack.keybust.admin_url("/readyz"))
            .await
            .unwrap();
        if ready.status() == 200 {
            break;
        }
        let reasons = ready.text().await.unwrap();
        assert!(Instant::now() < deadline, "not ready: {reasons}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.keybust.assert_logs_clean(&[]);
}

/// A Redis connection that stops answering without closing is replaced:
/// the first delete on it times out, and deletes recover within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_connection_gone_silent_is_replaced() {
    let redis = Redis::start();
    let front = SilentFirstConnection::start(redis.port).await;
    let options = Options::with_env(&[
        ("REDIS_URL", &front.url()),
        ("KEYBUST_CACHE_TIMEOUT", "300ms"),
        ("KEYBUST_CACHE_TIMEOUT_MS", "300"),
    ]);
    let stack = Stack::with(Backend::Embedded, options).await;
    let key = format!("user-api-key:{}", hashes::OWNED);
    // The connection works, then goes silent.
    let working = stack.invalidate(hashes::OWNED).await;
    working.assert_json(200, r#"{"ok":true}"#);
    front.silence();
    redis.set(&key, "cached");
    let first = stack.invalidate(hashes::OWNED).await;
    first.assert_json(503, r#"{"error":"Service unavailable"}"#);
    Stack::wait_for_ok(|| async { stack.invalidate(hashes::OWNED).await }).await;
    assert!(!redis.exists(&key));
    assert!(front.accepted.load(Ordering::SeqCst) >= 2);
}

/// With no cache backend chosen (no Redis, no Upstash, no
/// `KEYBUST_CACHE=embedded`), there is no cache to forget the key in: a
/// revocation is 503, never a 200 that deleted nothing, and the 503 is
/// counted as `not_configured`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_cache_backend_a_revocation_is_503_not_200() {
    let options = Options {
        without: vec!["KEYBUST_CACHE"],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    stack
        .invalidate(hashes::OWNED)
        .await
        .assert_json(503, r#"{"error":"Service unavailable"}"#);
    stack
        .wait_for_metric(r#"keybust_unavailable_total{cause="not_configured"} 1"#)
        .await;
    stack
        .keybust
        .assert_logged("refused a cache delete: no cache backend is configured")
        .await;
}

/// Plain `redis://` beyond loopback stops keybust at start, as a plain
/// `http://` backend does: a man in the middle of plain RESP could answer
/// `DEL` with `:1`, and a revocation would be reported done. The refusal
/// does not echo the URL's password. (`0.0.0.0` is no loopback address,
/// though Linux routes it to this machine: even a build without the check
/// sends nothing beyond it.)
#[test]
fn plain_redis_beyond_loopback_stops_startup() {
    for (name, value) in [
        ("REDIS_URL", "redis://:hunter2@0.0.0.0:1"),
        (
            "REDIS_CLUSTER_NODES",
            "redis://127.0.0.1:1,redis://:hunter2@0.0.0.0:2",
        ),
    ] {
        let command = support::process::serve_command(&[(name, value)]);
        let said = support::process::refused(command);
        assert!(
            said.contains(&format!(
                "{name}: plain redis:// to a host beyond this machine"
            )),
            "{said}"
        );
        assert!(!said.contains("hunter2"), "{said}");
    }
}
