//! The example gateways build and serve: `examples/gateway.rs` (its own
//! routes, keybust at the endpoint's path, a swap through its own route)
//! and `examples/own_linker.rs` (its own `Linker` and store data, with
//! every one of keybust's bounds).

#[path = "../../examples/gateway.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod gateway;

#[path = "../../examples/own_linker.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod own_linker;

use crate::support::{self, FakeConvex, Issuer, hashes, test_programs, variant};
use keybust::capabilities::cache::{CacheBackendSettings, CacheSettings};
use keybust::capabilities::{Capabilities, Settings};
use keybust::digest::hex_digest;
use keybust::limits::Limits;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use keybust::serve::endpoint::Endpoint;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The example gateway with keybust built from `settings`, on a loopback
/// port; its base URL.
async fn serve_gateway(settings: &Settings) -> String {
    let capabilities = Arc::new(Capabilities::from_settings(settings).unwrap());
    let endpoint = Arc::new(Endpoint::embedded(capabilities).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway::serve(listener, endpoint));
    support::use_aws_lc_for_tls();
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_gateway_mounts_keybust_beside_its_own_routes() {
    let convex = FakeConvex::start().await;
    let issuer = Issuer::start().await;
    let vars = [
        ("CONVEX_SITE_URL", convex.url()),
        ("CONVEX_SERVER_SHARED_SECRET", support::SECRET.to_owned()),
        ("CLERK_JWT_ISSUER_DOMAIN", issuer.url()),
        ("KEYBUST_CACHE", "embedded".to_owned()),
    ];
    let settings = Settings::from_lookup(|name| {
        vars.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.clone())
    })
    .unwrap();
    let base = serve_gateway(&settings).await;
    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "gateway ok");
    let hello = client
        .get(format!("{base}/api/hello"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        hello.text().await.unwrap(),
        r#"{"hello":"from your own route"}"#
    );
    let missing = client.get(format!("{base}/nowhere")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.unwrap(),
        "no such route in this gateway"
    );

    let response = client
        .post(format!("{base}{}", support::ENDPOINT))
        .bearer_auth(issuer.token())
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response
            .headers()
            .contains_key("access-control-allow-origin")
    );
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    let unauthenticated = client
        .post(format!("{base}{}", support::ENDPOINT))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
    assert_eq!(convex.calls().len(), 1);

    // A new build, swapped in through the gateway's own route.
    let next = variant(EMBEDDED_COMPONENT, "gateway-next");
    let swapped = client
        .put(format!("{base}/gateway/component"))
        .body(next.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 200);
    assert_eq!(swapped.text().await.unwrap(), hex_digest(&next));
    let refused = client
        .put(format!("{base}/gateway/component"))
        .body("not a component")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 422);
    let after = client
        .post(format!("{base}{}", support::ENDPOINT))
        .bearer_auth(issuer.token())
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "the swapped-in build serves");
    assert_eq!(convex.calls().len(), 2);
}

/// Settings built by hand, the way an embedder writes them, leaving the
/// rest to `Default`, serve the full path: no field defaults to a value
/// (a zero deadline, an empty audience list) that fails every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_settings_serve_the_full_path() {
    use keybust::capabilities::cache::{CacheBackendSettings, CacheSettings};
    use keybust::capabilities::convex::ConvexSettings;
    use keybust::capabilities::session::SessionSettings;
    use keybust::config::Secret;
    let convex = FakeConvex::start().await;
    let issuer = Issuer::start().await;
    let settings = Settings {
        convex: ConvexSettings {
            site_url: Some(convex.url()),
            shared_secret: Some(Secret::new(support::SECRET)),
            ..ConvexSettings::default()
        },
        session: SessionSettings {
            issuer: Some(issuer.url()),
            ..SessionSettings::default()
        },
        cache: CacheSettings {
            backend: CacheBackendSettings::Embedded,
            ..CacheSettings::default()
        },
        ..Settings::default()
    };
    let base = serve_gateway(&settings).await;
    // A token with `aud: convex`, which the default audiences accept.
    let claims = json!({
        "sub": support::USER, "iss": issuer.url(), "aud": "convex",
        "nbf": support::now() - 1, "exp": support::now() + 600,
    });
    let token = support::sign(&claims, support::primary_key());
    let response = reqwest::Client::new()
        .post(format!("{base}{}", support::ENDPOINT))
        .bearer_auth(token)
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    assert_eq!(convex.calls().len(), 1);
}

/// The own-`Linker` example serving `component` under `limits`, with the
/// in-process cache and `issuer` (if any) as the only backends; its base
/// URL. The engine's pool allows 64 MiB an instance, more than `limits`
/// does, so what stops a guest at the cap is keybust's bound.
async fn serve_own_linker(component: &[u8], limits: Limits, issuer: Option<&Issuer>) -> String {
    let settings = Settings {
        cache: CacheSettings {
            backend: CacheBackendSettings::Embedded,
            ..CacheSettings::default()
        },
        session: keybust::capabilities::session::SessionSettings {
            issuer: issuer.map(Issuer::url),
            ..Default::default()
        },
        ..Settings::default()
    };
    let capabilities = Arc::new(Capabilities::from_settings(&settings).unwrap());
    let engine = keybust::runtime::engine::new_engine(&Limits {
        max_instance_memory: 64 << 20,
        ..Limits::default()
    })
    .unwrap();
    let gateway = own_linker::Gateway::new(&engine, capabilities, component, limits).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(own_linker::serve(listener, Arc::new(gateway)));
    base
}

async fn run_mode(client: &reqwest::Client, base: &str, mode: &str) -> (u16, String) {
    let answer = client
        .post(format!("{base}/?mode={mode}"))
        .send()
        .await
        .unwrap();
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_linker_example_keeps_every_bound() {
    let limits = Limits {
        max_instance_memory: 16 << 20,
        guest_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let base = serve_own_linker(test_programs(), limits.clone(), None).await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    // Past the 16 MiB cap (well within the engine's): the guest traps, and
    // the gateway serves on. Under a 64 MiB cap the same guest answers.
    assert_eq!(run_mode(&client, &base, "alloc32").await.0, 500);
    assert_eq!(
        run_mode(&client, &base, "ok").await,
        (200, r#"{"ok":true}"#.to_owned())
    );

    let roomy = Limits {
        max_instance_memory: 64 << 20,
        ..limits.clone()
    };
    let roomy = serve_own_linker(test_programs(), roomy, None).await;
    assert_eq!(run_mode(&client, &roomy, "alloc32").await.0, 200);

    // A loop is stopped by the CPU budget.
    let started = Instant::now();
    assert_eq!(run_mode(&client, &base, "loop").await.0, 504);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Outbound wasi:http and sockets are refused, and nothing else is
    // granted: a listener the guest aims at sees no connection.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = target.local_addr().unwrap().port();
    let (status, body) = run_mode(&client, &base, &format!("snoop&port={port}")).await;
    assert_eq!(status, 200, "{body}");
    let seen: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(seen["outbound"], false, "{seen}");
    assert_eq!(seen["tcp"], false, "{seen}");
    assert_eq!(seen["env"], 0, "{seen}");
    let reached = tokio::time::timeout(Duration::from_millis(500), target.accept()).await;
    assert!(reached.is_err(), "the guest reached the loopback listener");

    // The body bound: 70 KiB from a signed-in caller gets the component's
    // 413, with or without a Content-Length to go by.
    let issuer = Issuer::start().await;
    let base = serve_own_linker(EMBEDDED_COMPONENT, limits, Some(&issuer)).await;
    let url = format!("{base}{}", support::ENDPOINT);
    let big = vec![b' '; 70 << 10];
    let sized = client
        .post(&url)
        .bearer_auth(issuer.token())
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(sized.status(), 413);
    let chunks = big
        .chunks(8 << 10)
        .map(|chunk| Ok::<_, std::io::Error>(chunk.to_vec()))
        .collect::<Vec<_>>();
    let streamed = client
        .post(&url)
        .bearer_auth(issuer.token())
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(streamed.status(), 413);
}
