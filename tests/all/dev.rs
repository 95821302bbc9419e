//! `keybust dev`: the walkthrough works on a machine with nothing installed.

use crate::support::{self, Keybust};

/// Pulls the URL, the bearer token and the body out of the printed curl.
fn parse_curl(printed: &[String]) -> (String, String, String) {
    let text = printed.join("\n");
    let after = |marker: &str, end: char| {
        let start = text
            .find(marker)
            .unwrap_or_else(|| panic!("no {marker:?} in:\n{text}"))
            + marker.len();
        text[start..].split(end).next().unwrap().to_owned()
    };
    (
        after("-X POST ", ' '),
        after("Authorization: Bearer ", '\''),
        after("-d '", '\''),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_prints_a_curl_that_gets_200() {
    let keybust = tokio::task::spawn_blocking(|| Keybust::start(&["dev"], &[]))
        .await
        .unwrap();
    let (url, token, body) = parse_curl(&keybust.printed);
    assert!(
        url.starts_with(&format!("http://{}", keybust.addr)),
        "{url}"
    );
    support::use_aws_lc_for_tls();
    let client = reqwest::Client::new();
    let send = || {
        client
            .post(&url)
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(body.clone())
            .send()
    };
    let response = send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    // Repeatable, and a tampered token is refused.
    assert_eq!(send().await.unwrap().status(), 200);
    let response = client
        .post(&url)
        .header("Authorization", format!("Bearer {token}x"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // Logs carry neither the token nor the key hash.
    let hash: serde_json::Value = serde_json::from_str(&body).unwrap();
    let hash = hash["keyHash"].as_str().unwrap();
    let logs = keybust.logs();
    assert!(!logs.contains(&token) && !logs.contains(hash), "{logs}");
}

/// `keybust dev --component FILE` serves your own build and swaps in each
/// rebuild as soon as the file changes, as `spin watch` does, with no
/// shadow stage to wait through even when one is configured. The admin
/// listener is open, so the swap shows in `/admin/component` and
/// `/metrics`, and `/readyz` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_serves_your_build_and_swaps_it_when_the_file_changes() {
    use keybust::digest::hex_digest;
    use keybust::runtime::plugin::EMBEDDED_COMPONENT;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("endpoint.wasm");
    let builds = [
        support::variant(EMBEDDED_COMPONENT, "dev-a"),
        support::variant(EMBEDDED_COMPONENT, "dev-b"),
    ];
    std::fs::write(&path, &builds[0]).unwrap();
    let args = path.display().to_string();
    let keybust = tokio::task::spawn_blocking(move || {
        Keybust::start(
            &["dev", "--component", &args],
            &[("KEYBUST_SHADOW", "on".into())],
        )
    })
    .await
    .unwrap();
    let printed = keybust.printed.join("\n");
    assert!(printed.contains("admin listening on"), "{printed}");
    assert!(printed.contains("endpoint.wasm"), "{printed}");
    let admin = |path: &str| {
        let url = keybust.admin_url(path);
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let digest = || async {
        let (_, body) = admin("/admin/component").await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        body["digest"].as_str().unwrap_or_default().to_owned()
    };
    assert_eq!(digest().await, hex_digest(&builds[0]));

    // A rebuild, written the way a compiler writes: in place.
    std::fs::write(&path, &builds[1]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while digest().await != hex_digest(&builds[1]) {
        assert!(
            std::time::Instant::now() < deadline,
            "the rebuild was not swapped in:\n{}",
            keybust.logs()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The printed curl still gets its 200 from the new build.
    let (url, token, body) = parse_curl(&keybust.printed);
    support::use_aws_lc_for_tls();
    let response = reqwest::Client::new()
        .post(&url)
        .header("Authorization", format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, metrics) = admin("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .lines()
            .any(|line| line.starts_with("keybust_component_swaps_total{")
                && line.contains("result=\"ok\"")
                && line.ends_with(" 1")),
        "{metrics}"
    );
    assert_eq!(admin("/readyz").await.0, 200);
}
