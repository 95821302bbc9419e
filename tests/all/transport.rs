//! How keybust is reached: HTTP/1.1 and HTTP/2 on the same listener. An
//! HTTP/2 client that knows the server speaks it (h2c, prior knowledge)
//! gets the same answers, and its streams are requests like any other.

use crate::support::answer::assert_endpoint_answers;
use crate::support::{Backend, ENDPOINT, FakeConvex, Options, Stack, hashes};
use reqwest::Version;
use serde_json::json;

fn h2c() -> reqwest::Client {
    reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

#[tokio::test]
async fn http2_with_prior_knowledge_gets_the_same_answers() {
    let stack = Stack::in_process(Backend::Embedded).await;
    let client = h2c();
    let url = stack.keybust.url(ENDPOINT);

    assert_endpoint_answers(&client, &url, &stack.issuer.token(), Version::HTTP_2).await;

    // Many streams at once on the one connection, each answered.
    let token = stack.issuer.token();
    let answers = futures_util::future::join_all((0..24).map(|_| {
        client
            .post(&url)
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(json!({ "keyHash": hashes::OWNED }).to_string())
            .send()
    }))
    .await;
    for answer in answers {
        assert_eq!(answer.unwrap().status(), 200);
    }
    // The head bound holds per stream: an oversized head is refused, and
    // the connection serves on.
    let oversized = client
        .post(&url)
        .header("x-padding", "a".repeat(32 << 10))
        .send()
        .await;
    assert_eq!(oversized.unwrap().status(), 431);
    let after = client
        .post(&url)
        .bearer_auth(&token)
        .header("content-type", "application/json")
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200);
    // HTTP/1.1 on the same listener is unchanged.
    let http1 = stack
        .request(reqwest::Method::POST, ENDPOINT)
        .bearer_auth(stack.issuer.token())
        .header("content-type", "application/json")
        .body(json!({ "keyHash": hashes::OWNED }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(http1.version(), Version::HTTP_11);
    assert_eq!(http1.status(), 200);
}

/// Convex calls honour the proxy the environment names, as keybust's
/// other outbound calls do: with `HTTP_PROXY` pointing at a proxy that is
/// down, the full path fails closed (503) and Convex sees no call; with
/// Convex's host in `NO_PROXY`, it is reached directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convex_calls_go_through_the_proxy_the_environment_names() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    for (no_proxy, status) in [("127.0.0.1", 503), ("127.0.0.1,localhost", 200)] {
        // Convex by another name than the issuer's 127.0.0.1, so that
        // NO_PROXY can tell the two apart.
        let convex = FakeConvex::start().await;
        let options = Options {
            env: vec![
                ("HTTP_PROXY", proxy.clone()),
                ("NO_PROXY", no_proxy.to_owned()),
                (
                    "CONVEX_SITE_URL",
                    format!("http://localhost:{}", convex.addr.port()),
                ),
            ],
            ..Options::default()
        };
        let stack = Stack::with(Backend::Embedded, options).await;
        let answer = stack.invalidate(hashes::OWNED).await;
        assert_eq!(
            answer.status, status,
            "NO_PROXY={no_proxy}: {}",
            answer.body
        );
        assert_eq!(
            convex.calls().is_empty(),
            status == 503,
            "NO_PROXY={no_proxy}"
        );
    }
}
