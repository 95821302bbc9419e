//! What keybust will not do on a component's or a configuration's behalf:
//! call Convex paths or cache keys outside the allow-lists, reach a plain
//! HTTP backend beyond loopback, or run precompiled code it did not write.

use crate::support::{self, Backend, Keybust, Options, Stack, hashes};
use reqwest::Method;
use std::time::{Duration, Instant};

/// Calls outside the host's allow-lists fail as forbidden, whatever the
/// component asks, and are counted: here the real component, with lists
/// that leave out what it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_outside_the_allow_lists_are_refused_and_counted() {
    let stack = Stack::with(
        Backend::Redis,
        Options::with_env(&[("KEYBUST_ALLOWED_CACHE_KEYS", "^nothing-at-all$")]),
    )
    .await;
    stack.seed(hashes::OWNED);
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert_eq!(stack.cached(hashes::OWNED), Some(true));
    stack
        .wait_for_metric(
            r#"keybust_capability_calls_total{capability="cache",outcome="forbidden"} 1"#,
        )
        .await;

    let stack = Stack::with(
        Backend::Embedded,
        Options::with_env(&[(
            "KEYBUST_ALLOWED_CONVEX_PATHS",
            "/api/internal-something-else",
        )]),
    )
    .await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert!(stack.convex.calls().is_empty());
    stack
        .wait_for_metric(
            r#"keybust_capability_calls_total{capability="convex",outcome="forbidden"} 1"#,
        )
        .await;
}

/// Plain http:// to a backend beyond loopback could hand the shared secret
/// to, or take session keys from, whoever sits in between: keybust refuses
/// to start with one unless told to allow it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_backends_beyond_loopback_are_refused_at_start() {
    let cases: [&[(&str, &str)]; 3] = [
        &[("CLERK_JWT_ISSUER_DOMAIN", "http://clerk.example.com")],
        &[
            ("UPSTASH_REDIS_REST_URL", "http://upstash.example.com"),
            ("UPSTASH_REDIS_REST_TOKEN", "t"),
        ],
        &[
            ("CONVEX_SITE_URL", "http://convex.example.com"),
            ("CONVEX_SERVER_SHARED_SECRET", "s"),
        ],
    ];
    for vars in cases {
        let mut child = std::process::Command::new(support::process::binary())
            .arg("serve")
            .env_clear()
            .env("KEYBUST_LISTEN", "127.0.0.1:0")
            .env("KEYBUST_ADMIN_LISTEN", "127.0.0.1:0")
            .envs(vars.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                child.kill().unwrap();
                panic!("{vars:?}: keybust started instead of refusing");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(!status.success(), "{vars:?}");
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(stderr.contains(vars[0].0), "{stderr}");
        assert!(stderr.contains("--allow-insecure-backends"), "{stderr}");
        // Allowed explicitly, keybust starts (and contacts nobody yet).
        let mut env: Vec<(&str, String)> =
            vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        env.push(("KEYBUST_ALLOW_INSECURE_BACKENDS", "1".into()));
        let started = tokio::task::spawn_blocking(move || Keybust::start(&["serve"], &env))
            .await
            .unwrap();
        drop(started);
    }
}

/// Whoever can write the cache directory can recompute a checksum: a
/// planted entry (real code, for this engine, under the embedded
/// component's name) is not run; the component that serves is the one
/// configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planted_precompiled_component_is_not_run() {
    let dirs = tempfile::tempdir().unwrap();
    let cache = dirs.path().join("cache");
    let options = Options::with_env(&[
        ("KEYBUST_COMPONENT_CACHE_DIR", &cache.display().to_string()),
        (
            "KEYBUST_STATE_DIR",
            &dirs.path().join("state").display().to_string(),
        ),
    ]);
    let first = Stack::with(Backend::Embedded, options.clone()).await;
    drop(first);
    let entries: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "cwasm"))
        .collect();
    assert_eq!(entries.len(), 1, "{entries:?}");
    let engine = keybust::runtime::engine::new_engine(&keybust::limits::Limits::default()).unwrap();
    let planted = engine
        .precompile_component(support::test_programs())
        .unwrap();
    std::fs::write(&entries[0], &planted).unwrap();
    std::fs::write(
        entries[0].with_extension("sha256"),
        keybust::digest::hex_digest(&planted),
    )
    .unwrap();
    let stack = Stack::with(Backend::Embedded, options).await;
    // The embedded component answers a preflight 204; the planted program 200.
    let preflight = stack
        .request(Method::OPTIONS, support::ENDPOINT)
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    stack.keybust.assert_logged("fails its MAC").await;
}
