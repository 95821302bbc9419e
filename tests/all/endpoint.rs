//! docs/contract.md, Endpoint rules, rule by rule, over real HTTP against
//! keybust served in process. Rules whose answer involves the cache (the
//! ones that must delete, or must not) run once per cache backend; the
//! others never reach the cache and run on the embedded one. Every rule
//! runs against both builds of the guest: wasi:http 0.2 (the embedded
//! component) and 0.3.

use crate::support::{self, Answer, Answered, Backend, Guest, Options, Stack, hashes};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};

const ALLOWED: &str = "https://app.worldmonitor.app";
const DEFAULT_ORIGIN: &str = "https://worldmonitor.app";

/// One test per build of the guest for each listed `async fn(Guest)`.
macro_rules! each_guest {
    ($($name:ident),* $(,)?) => {
        mod p2 {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::endpoint::$name(crate::support::Guest::P2).await
                }
            )*
        }
        mod p3 {
            $(
                #[tokio::test]
                async fn $name() {
                    crate::endpoint::$name(crate::support::Guest::P3).await
                }
            )*
        }
    };
}

/// One test per cache backend and build of the guest for each listed
/// `async fn(Backend, Guest)`. Each runs on a current-thread runtime with
/// keybust in process (the function starts its stack with `Stack::serving`
/// or `in_process: true`), so what keybust logs is captured for the test.
macro_rules! each_backend_and_guest {
    ($($name:ident),* $(,)?) => {
        each_backend_and_guest!(@backend embedded Embedded $($name),*);
        each_backend_and_guest!(@backend redis Redis $($name),*);
        each_backend_and_guest!(@backend upstash Upstash $($name),*);
    };
    (@backend $module:ident $backend:ident $($name:ident),*) => {
        mod $module {
            mod p2 {
                $(
                    #[tokio::test]
                    async fn $name() {
                        use crate::support::{Backend, Guest};
                        crate::endpoint::$name(Backend::$backend, Guest::P2).await
                    }
                )*
            }
            mod p3 {
                $(
                    #[tokio::test]
                    async fn $name() {
                        use crate::support::{Backend, Guest};
                        crate::endpoint::$name(Backend::$backend, Guest::P3).await
                    }
                )*
            }
        }
    };
}

// Rule E1
async fn disallowed_origin_is_403_without_cors(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    for origin in [
        "https://evil.example",
        "https://worldmonitor.app.evil.example",
        "null",
    ] {
        let answer = stack
            .request(Method::POST, support::ENDPOINT)
            .header("origin", origin)
            .bearer_auth(stack.issuer.token())
            .body(json!({ "keyHash": hashes::OWNED }).to_string())
            .answer()
            .await;
        answer.assert_json(403, r#"{"error":"Origin not allowed"}"#);
        assert!(
            answer.header("access-control-allow-origin").is_none(),
            "{origin}"
        );
        assert!(answer.header("vary").is_none());
    }
    // Even a preflight from a disallowed origin is refused.
    let answer = stack
        .request(Method::OPTIONS, support::ENDPOINT)
        .header("origin", "https://evil.example")
        .answer()
        .await;
    assert_eq!(answer.status, 403);
    assert!(stack.convex.calls().is_empty());
}

// Rule E2
async fn preflight_is_204_with_cors(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let answer = stack
        .request(Method::OPTIONS, support::ENDPOINT)
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .answer()
        .await;
    assert_eq!(answer.status, 204);
    assert_eq!(answer.body, "");
    answer.assert_cors(ALLOWED);
    // Localhost is allowed outside production.
    let answer = stack
        .request(Method::OPTIONS, support::ENDPOINT)
        .header("origin", "http://localhost:5173")
        .answer()
        .await;
    assert_eq!(answer.status, 204);
    answer.assert_cors("http://localhost:5173");
}

// Rule E3
async fn other_methods_are_405(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::PATCH] {
        let answer = stack
            .request(method.clone(), support::ENDPOINT)
            .bearer_auth(stack.issuer.token())
            .answer()
            .await;
        answer.assert_json(405, r#"{"error":"Method not allowed"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
    }
}

// Rule E4
async fn missing_or_malformed_bearer_is_401(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let token = stack.issuer.token();
    let body = json!({ "keyHash": hashes::OWNED }).to_string();
    let headers: [Option<String>; 5] = [
        None,
        Some(format!("bearer {token}")),
        Some(format!("Token {token}")),
        Some("Bearer ".to_owned()),
        Some(token.clone()),
    ];
    for header in headers {
        let mut request = stack
            .request(Method::POST, support::ENDPOINT)
            .header("origin", ALLOWED)
            .body(body.clone());
        if let Some(value) = &header {
            request = request.header("authorization", value);
        }
        let answer = request.answer().await;
        answer.assert_json(401, r#"{"error":"UNAUTHENTICATED"}"#);
        answer.assert_cors(ALLOWED);
    }
    assert!(stack.convex.calls().is_empty());
}

// Rule E5 (the token rules themselves are in session.rs)
async fn invalid_token_is_401(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let answer = stack
        .post_with("not.a.jwt", json!({ "keyHash": hashes::OWNED }).to_string())
        .await;
    answer.assert_json(401, r#"{"error":"UNAUTHENTICATED"}"#);
    answer.assert_cors(DEFAULT_ORIGIN);
    assert!(stack.convex.calls().is_empty());
}

// Rule E6
async fn body_that_is_not_json_is_422(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    // Nested deeper than the parser goes (128), within the body bound: the
    // guest refuses it, not traps for want of stack.
    let deep = "[".repeat(60 * 1024);
    for body in ["", "{", "keyHash=abc", "{\"keyHash\":", &deep] {
        let answer = stack.post(body.to_owned()).await;
        answer.assert_json(422, r#"{"error":"Invalid JSON body"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
    }
    // Nested as deep as the parser goes: read and judged.
    let nested = format!(
        r#"{{"keyHash":"{}","pad":{}{}}}"#,
        hashes::UNKNOWN,
        "[".repeat(126),
        "]".repeat(126)
    );
    let answer = stack.post(nested).await;
    answer.assert_json(200, r#"{"ok":true}"#);
}

// Rule E7
async fn invalid_key_hash_is_422(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let upper = json!({ "keyHash": hashes::OWNED.replace('1', "A") }).to_string();
    let short = json!({ "keyHash": &hashes::OWNED[1..] }).to_string();
    let long = json!({ "keyHash": format!("{}0", hashes::OWNED) }).to_string();
    for body in [
        "null",
        "[]",
        "\"a string\"",
        "42",
        "true",
        "{}",
        r#"{"keyHash":null}"#,
        r#"{"keyHash":123}"#,
        r#"{"keyHash":["1111"]}"#,
        &upper,
        &short,
        &long,
    ] {
        let answer = stack.post(body.to_owned()).await;
        answer.assert_json(422, r#"{"error":"Invalid keyHash"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
    }
    assert!(stack.convex.calls().is_empty());
}

// Rule E8
async fn convex_not_configured_is_503(backend: Backend, guest: Guest) {
    for missing in ["CONVEX_SITE_URL", "CONVEX_SERVER_SHARED_SECRET"] {
        let options = Options {
            in_process: true,
            guest,
            without: vec![missing],
            ..Options::default()
        };
        let stack = Stack::with(backend, options).await;
        stack.seed(hashes::OWNED);
        let answer = stack.invalidate(hashes::OWNED).await;
        answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
        assert_ne!(stack.cached(hashes::OWNED), Some(false));
        stack
            .keybust
            .assert_logged("CONVEX_SITE_URL or CONVEX_SERVER_SHARED_SECRET")
            .await;
        stack.keybust.assert_logs_clean(&[]);
    }
}

// Rule E9
async fn owner_lookup_request_has_the_contract_shape(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let answer = stack.invalidate(hashes::UNKNOWN).await;
    assert_eq!(answer.status, 200);
    let calls = stack.convex.calls();
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    assert_eq!(call.method, "POST");
    assert_eq!(call.path, "/api/internal-get-key-owner");
    assert_eq!(call.content_type.as_deref(), Some("application/json"));
    assert_eq!(call.secret.as_deref(), Some(support::SECRET));
    assert_eq!(call.body, format!(r#"{{"keyHash":"{}"}}"#, hashes::UNKNOWN));
}

// Rule E10
async fn lookup_failures_fail_closed(backend: Backend, guest: Guest) {
    let stack = Stack::serving(guest, backend).await;
    for hash in [hashes::STATUS_500, hashes::GARBAGE] {
        stack.seed(hash);
        let answer = stack.invalidate(hash).await;
        answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
        assert_ne!(stack.cached(hash), Some(false));
    }
    stack.keybust.assert_logged("HTTP 500").await;
    stack.keybust.assert_logged("not JSON").await;
    stack.keybust.assert_logs_clean(&[]);
}

// Rule E10: the lookup's 3 s deadline
async fn slow_lookup_times_out_at_three_seconds(backend: Backend, guest: Guest) {
    let stack = Stack::serving(guest, backend).await;
    stack.seed(hashes::SLOW);
    let started = Instant::now();
    let answer = stack.invalidate(hashes::SLOW).await;
    let took = started.elapsed();
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert!(
        took >= Duration::from_millis(2900),
        "answered after {took:?}"
    );
    assert!(
        took < Duration::from_millis(3900),
        "answered after {took:?}"
    );
    assert_ne!(stack.cached(hashes::SLOW), Some(false));
    stack.keybust.assert_logged("timed out").await;
    stack.keybust.assert_logs_clean(&[]);
}

// Rule E10: no answer, or a refusal
async fn unreachable_or_refusing_convex_fails_closed(guest: Guest) {
    // Nothing listens on the URL.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let options = Options {
        in_process: true,
        guest,
        env: vec![("CONVEX_SITE_URL", dead_url)],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    // A wrong secret: Convex answers 401, which is a failed lookup.
    let options = Options {
        in_process: true,
        guest,
        env: vec![("CONVEX_SERVER_SHARED_SECRET", "wrong-secret".to_owned())],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    stack.keybust.assert_logs_clean(&["wrong-secret"]);
}

// Rule E11
async fn unknown_hash_is_ok_and_deletes_nothing(backend: Backend, guest: Guest) {
    let stack = Stack::serving(guest, backend).await;
    stack.seed(hashes::UNKNOWN);
    let answer = stack.invalidate(hashes::UNKNOWN).await;
    answer.assert_json(200, r#"{"ok":true}"#);
    answer.assert_cors(DEFAULT_ORIGIN);
    assert_ne!(stack.cached(hashes::UNKNOWN), Some(false));
}

// Rule E12
async fn anyone_but_the_caller_as_owner_is_403(backend: Backend, guest: Guest) {
    let stack = Stack::serving(guest, backend).await;
    for hash in [hashes::OTHER_OWNER, hashes::EMPTY_OBJECT, hashes::ARRAY] {
        stack.seed(hash);
        let answer = stack.invalidate(hash).await;
        answer.assert_json(403, r#"{"error":"FORBIDDEN"}"#);
        answer.assert_cors(DEFAULT_ORIGIN);
        assert_ne!(stack.cached(hash), Some(false), "{hash}");
    }
}

// Rule E13
async fn owner_match_deletes_the_cache_entry(backend: Backend, guest: Guest) {
    let stack = Stack::serving(guest, backend).await;
    stack.seed(hashes::OWNED);
    stack.seed(hashes::OWNED_2);
    assert_ne!(stack.cached(hashes::OWNED), Some(false));
    let answer = stack
        .request(Method::POST, support::ENDPOINT)
        .header("origin", ALLOWED)
        .bearer_auth(stack.issuer.token())
        .body(json!({ "keyHash": hashes::OWNED, "extra": [1, 2] }).to_string())
        .answer()
        .await;
    answer.assert_json(200, r#"{"ok":true}"#);
    answer.assert_cors(ALLOWED);
    assert_ne!(stack.cached(hashes::OWNED), Some(true));
    // Only that key.
    assert_ne!(stack.cached(hashes::OWNED_2), Some(false));
    // Deleting again (already gone) still succeeds.
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(200, r#"{"ok":true}"#);
    stack.keybust.assert_logs_clean(&[]);
}

// Rule E14
async fn cache_failure_is_503(backend: Backend, guest: Guest) {
    let mut stack = Stack::serving(guest, backend).await;
    match backend {
        Backend::Embedded => unreachable!("an in-process map cannot fail"),
        Backend::Redis => stack.redis.as_mut().unwrap().stop(),
        Backend::Upstash => stack
            .upstash
            .as_ref()
            .unwrap()
            .failing
            .store(true, std::sync::atomic::Ordering::SeqCst),
    }
    let started = Instant::now();
    let answer = stack.invalidate(hashes::OWNED).await;
    answer.assert_json(503, r#"{"error":"Service unavailable"}"#);
    answer.assert_cors(DEFAULT_ORIGIN);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    stack.keybust.assert_logged("cache delete failed").await;
    stack.keybust.assert_logs_clean(&[]);
}

// Rule E15
async fn oversized_body_is_413(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    let padding = "x".repeat(70 * 1024);
    let body = json!({ "keyHash": hashes::OWNED, "pad": padding }).to_string();
    let answer = stack.post(body).await;
    answer.assert_json(413, r#"{"error":"Payload too large"}"#);
    answer.assert_cors(DEFAULT_ORIGIN);
    // Without a length to refuse it by, the guest finds out as it reads.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..70).map(|_| Ok(vec![b' '; 1024])).collect();
    let answer = stack
        .request(Method::POST, support::ENDPOINT)
        .bearer_auth(stack.issuer.token())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .answer()
        .await;
    answer.assert_json(413, r#"{"error":"Payload too large"}"#);
    assert!(stack.convex.calls().is_empty());
    // Just under the bound is read and judged.
    let padding = "x".repeat(60 * 1024);
    let body = json!({ "keyHash": hashes::UNKNOWN, "pad": padding }).to_string();
    let answer = stack.post(body).await;
    answer.assert_json(200, r#"{"ok":true}"#);
    assert!(stack.convex.calls().len() == 1);
}

// docs/contract.md, Host routes: other paths
async fn other_paths_are_404_from_the_host(guest: Guest) {
    let stack = Stack::serving(guest, Backend::Embedded).await;
    for path in ["/", "/api/other", "/api/invalidate-user-api-key-cache/x"] {
        let answer = stack.request(Method::POST, path).answer().await;
        answer.assert_json(404, r#"{"error":"Not found"}"#);
    }
}

// Where a backend could delete (or must not), each one answers.
each_backend_and_guest!(
    convex_not_configured_is_503,
    lookup_failures_fail_closed,
    slow_lookup_times_out_at_three_seconds,
    unknown_hash_is_ok_and_deletes_nothing,
    anyone_but_the_caller_as_owner_is_403,
    owner_match_deletes_the_cache_entry,
);

async fn redis_down_is_503(guest: Guest) {
    cache_failure_is_503(Backend::Redis, guest).await
}

async fn upstash_errors_are_503(guest: Guest) {
    cache_failure_is_503(Backend::Upstash, guest).await
}

/// docs/contract.md, CORS: the settings reach the guest: an explicit allow-list replaces the
/// defaults, production drops localhost, and the fallback origin is configurable.
async fn origin_settings_change_what_is_allowed(guest: Guest) {
    async fn preflight(stack: &Stack, origin: Option<&str>) -> Answer {
        let mut request = stack.request(Method::OPTIONS, support::ENDPOINT);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        request.answer().await
    }
    let options = Options {
        in_process: true,
        guest,
        env: vec![
            (
                "KEYBUST_ALLOWED_ORIGINS",
                r"^https://app\.example$".to_owned(),
            ),
            ("KEYBUST_DEFAULT_ORIGIN", "https://app.example".to_owned()),
        ],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    preflight(&stack, Some("https://app.example"))
        .await
        .assert_cors("https://app.example");
    assert_eq!(preflight(&stack, Some(DEFAULT_ORIGIN)).await.status, 403);
    assert_eq!(
        preflight(&stack, Some("http://localhost:3000"))
            .await
            .status,
        403
    );
    preflight(&stack, None)
        .await
        .assert_cors("https://app.example");

    let options = Options {
        in_process: true,
        guest,
        env: vec![("NODE_ENV", "production".to_owned())],
        ..Options::default()
    };
    let stack = Stack::with(Backend::Embedded, options).await;
    assert_eq!(
        preflight(&stack, Some("http://localhost:3000"))
            .await
            .status,
        403
    );
    assert_eq!(
        preflight(&stack, Some("http://127.0.0.1:8080"))
            .await
            .status,
        403
    );
    preflight(&stack, Some(ALLOWED)).await.assert_cors(ALLOWED);
    preflight(&stack, None).await.assert_cors(DEFAULT_ORIGIN);
}

each_guest!(
    disallowed_origin_is_403_without_cors,
    preflight_is_204_with_cors,
    other_methods_are_405,
    missing_or_malformed_bearer_is_401,
    invalid_token_is_401,
    body_that_is_not_json_is_422,
    invalid_key_hash_is_422,
    owner_lookup_request_has_the_contract_shape,
    unreachable_or_refusing_convex_fails_closed,
    oversized_body_is_413,
    other_paths_are_404_from_the_host,
    redis_down_is_503,
    upstash_errors_are_503,
    origin_settings_change_what_is_allowed,
);

/// Several `Origin` headers, or one that is not UTF-8, are refused as the
/// reference refuses them (rule E1), not taken for no `Origin`.
#[tokio::test]
async fn duplicate_or_undecodable_origins_get_403() {
    let stack = Stack::in_process(Backend::Embedded).await;
    let body = json!({ "keyHash": hashes::OWNED }).to_string();
    let duplicate = stack
        .request(Method::POST, support::ENDPOINT)
        .header("origin", ALLOWED)
        .header("origin", "https://evil.example")
        .bearer_auth(stack.issuer.token())
        .body(body.clone());
    let undecodable = stack
        .request(Method::POST, support::ENDPOINT)
        .header(
            "origin",
            reqwest::header::HeaderValue::from_bytes(b"https://worldmonitor.app\xff").unwrap(),
        )
        .bearer_auth(stack.issuer.token())
        .body(body);
    for request in [duplicate, undecodable] {
        let answer = request.answer().await;
        answer.assert_json(403, r#"{"error":"Origin not allowed"}"#);
        assert!(answer.header("access-control-allow-origin").is_none());
    }
    assert!(stack.convex.calls().is_empty());
}

/// The answers the host gives in the component's place carry the CORS
/// headers the component would give the same `Origin`, and none for a
/// refused one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_answers_carry_the_components_cors_headers() {
    // The bounds are the binary's settings: the process, not the library.
    let options = Options::with_env(&[
        ("KEYBUST_MAX_CONCURRENT_REQUESTS", "1"),
        ("KEYBUST_QUEUE_TIMEOUT", "50ms"),
        ("KEYBUST_REQUEST_TIMEOUT", "400ms"),
    ]);
    let stack = std::sync::Arc::new(Stack::with(Backend::Embedded, options).await);
    let slow = {
        let stack = stack.clone();
        tokio::spawn(async move {
            let response = stack
                .request(Method::POST, support::ENDPOINT)
                .header("origin", ALLOWED)
                .bearer_auth(stack.issuer.token())
                .body(json!({ "keyHash": hashes::OWNED_DELAYED }).to_string())
                .send()
                .await
                .unwrap();
            Answer::of(response).await
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let shed = |origin: &'static str| {
        stack
            .request(Method::OPTIONS, support::ENDPOINT)
            .header("origin", origin)
            .send()
    };
    let busy = Answer::of(shed(ALLOWED).await.unwrap()).await;
    busy.assert_json(503, r#"{"error":"Service unavailable"}"#);
    assert_eq!(busy.header("retry-after"), Some("1"));
    busy.assert_cors(ALLOWED);
    let refused = Answer::of(shed("https://evil.example").await.unwrap()).await;
    assert_eq!(refused.status, 503);
    assert!(refused.header("access-control-allow-origin").is_none());
    // The owner lookup takes a second: past the request timeout.
    let timed_out = slow.await.unwrap();
    timed_out.assert_json(504, r#"{"error":"Gateway timeout"}"#);
    timed_out.assert_cors(ALLOWED);
}
