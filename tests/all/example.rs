//! The example gateway in `examples/gateway.rs` builds, serves its own
//! routes, and serves keybust at the endpoint's path.

#[path = "../../examples/gateway.rs"]
#[allow(dead_code, reason = "the example's main is not used here")]
mod gateway;

use crate::support::{self, FakeConvex, Issuer, hashes};
use keybust::capabilities::{Capabilities, Settings};
use keybust::endpoint::Endpoint;
use serde_json::json;
use std::sync::Arc;

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
}

/// Settings built by hand, the way an embedder writes them, leaving the
/// rest to `Default`, serve the full path: no field defaults to a value
/// (a zero deadline, an empty audience list) that fails every request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_settings_serve_the_full_path() {
    use keybust::capabilities::cache::{CacheBackendSettings, CacheSettings};
    use keybust::capabilities::convex::ConvexSettings;
    use keybust::capabilities::session::ClerkSettings;
    use keybust::config::Secret;
    let convex = FakeConvex::start().await;
    let issuer = Issuer::start().await;
    let settings = Settings {
        convex: ConvexSettings {
            site_url: Some(convex.url()),
            shared_secret: Some(Secret::new(support::SECRET)),
            ..ConvexSettings::default()
        },
        clerk: ClerkSettings {
            issuer: Some(issuer.url()),
            ..ClerkSettings::default()
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
