//! A fleet's tools, as its operators use them: `keybust component push`,
//! `sign` and `check` against a real registry, cosign key pairs, and
//! keybust serving with an admin token whose `/admin/component` swaps by
//! reference.

use super::{Answer, Answered, Backend, Options, Stack};
use keybust::digest::hex_digest;
use keybust::runtime::plugin::EMBEDDED_COMPONENT;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

pub const ADMIN_TOKEN: &str = "test-admin-token-fleet";

/// The embedded component, made distinct by `tag`.
pub fn variant(tag: &str) -> Vec<u8> {
    super::variant(EMBEDDED_COMPONENT, tag)
}

/// An empty component: valid, but it serves nothing.
pub const OTHER_WORLD: &[u8] = b"\0asm\x0d\0\x01\0";

/// Runs `keybust component ARGS`, with no registry credentials.
pub fn keybust_component(args: &[&str]) -> std::process::Output {
    std::process::Command::new(super::process::binary())
        .arg("component")
        .args(args)
        .env_clear()
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .unwrap()
}

/// `keybust component push FILE REFERENCE` of `bytes`; its stdout.
pub fn push(dir: &Path, bytes: &[u8], reference: &str) -> String {
    let file = dir.join(format!("{}.wasm", &hex_digest(bytes)[..12]));
    std::fs::write(&file, bytes).unwrap();
    let output = keybust_component(&["push", file.to_str().unwrap(), reference]);
    assert!(
        output.status.success(),
        "push failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The manifest digest a push printed.
pub fn manifest_digest(pushed: &str) -> String {
    pushed
        .lines()
        .find_map(|line| line.strip_prefix("manifest "))
        .expect("push prints the manifest digest")
        .to_owned()
}

/// `PUT /admin/component` of `bytes`, with the admin token.
pub async fn put_bytes(stack: &Stack, bytes: Vec<u8>) -> Answer {
    stack
        .admin(reqwest::Method::PUT, "/admin/component")
        .bearer_auth(ADMIN_TOKEN)
        .body(bytes)
        .answer()
        .await
}

/// `PUT /admin/component` of `{"reference": reference}`.
pub async fn put_reference(stack: &Stack, reference: &str) -> Answer {
    stack
        .admin(reqwest::Method::PUT, "/admin/component")
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(serde_json::json!({ "reference": reference }).to_string())
        .answer()
        .await
}

pub async fn serving(stack: &Stack) -> Value {
    let text = reqwest::get(stack.keybust.admin_url("/admin/component"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// `GET /admin/rollout`, as JSON.
pub async fn rollout(stack: &Stack) -> Value {
    let answer = stack
        .admin(reqwest::Method::GET, "/admin/rollout")
        .answer()
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// Waits up to `limit` for the serving digest to become `digest`.
pub async fn wait_serving(stack: &Stack, digest: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while serving(stack).await["digest"] != digest {
        assert!(
            Instant::now() < deadline,
            "{digest} did not come to serve:\n{}",
            stack.keybust.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// keybust with the admin token and `args`.
pub async fn serve_with(args: &[&str]) -> Stack {
    serve_with_env(args, Vec::new()).await
}

/// keybust with the admin token, `args`, and `env` besides.
pub async fn serve_with_env(args: &[&str], env: Vec<(&'static str, String)>) -> Stack {
    let mut args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    args.extend(["--admin-token".to_owned(), ADMIN_TOKEN.to_owned()]);
    let mut options = Options {
        args,
        env: vec![("DOCKER_CONFIG", "/nonexistent".to_owned())],
        ..Options::default()
    };
    options.env.extend(env);
    Stack::with(Backend::Embedded, options).await
}

/// keybust serving `component`, with `extra` arguments.
pub async fn serve(component: &str, extra: &[&str]) -> Stack {
    let mut args = vec!["--component", component];
    args.extend_from_slice(extra);
    serve_with(&args).await
}

/// A fresh ECDSA P-256 key pair in `dir`: `NAME.key` (PKCS#8 PEM, as
/// `cosign import-key-pair` takes) and `NAME.pub` (the public key, PEM).
pub fn key_pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
    let public = pair.public_key().as_der().unwrap();
    let private_path = dir.join(format!("{name}.key"));
    let public_path = dir.join(format!("{name}.pub"));
    std::fs::write(
        &private_path,
        pem::encode(&pem::Pem::new("PRIVATE KEY", pkcs8.as_ref().to_vec())),
    )
    .unwrap();
    std::fs::write(
        &public_path,
        pem::encode(&pem::Pem::new("PUBLIC KEY", public.as_ref().to_vec())),
    )
    .unwrap();
    (private_path, public_path)
}

/// `keybust component push --sign-key KEY` of `bytes`.
pub fn push_signed(dir: &Path, bytes: &[u8], reference: &str, key: &Path) -> String {
    let file = dir.join(format!("{}.wasm", &hex_digest(bytes)[..12]));
    std::fs::write(&file, bytes).unwrap();
    let output = keybust_component(&[
        "push",
        file.to_str().unwrap(),
        reference,
        "--sign-key",
        key.to_str().unwrap(),
    ]);
    assert!(
        output.status.success(),
        "signed push failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8(output.stdout).unwrap();
    assert!(printed.contains("(signed)"), "{printed}");
    printed
}

/// A cosign simple-signing payload over `digest` in `repository`
/// (`registry/name`), as cosign's documentation gives it, for `tag` (the
/// annotation `cosign sign -a tag=…` writes).
pub fn cosign_payload(repository: &str, digest: &str, tag: &str) -> Vec<u8> {
    format!(
        r#"{{"critical":{{"identity":{{"docker-reference":"{repository}"}},"image":{{"docker-manifest-digest":"{digest}"}},"type":"cosign container image signature"}},"optional":{{"tag":"{tag}"}}}}"#
    )
    .into_bytes()
}

/// `payload` signed with the PKCS#8 key at `key` (ECDSA P-256, ASN.1 DER),
/// base64: what cosign puts in a signature layer's annotation.
pub fn cosign_sign(key: &Path, payload: &[u8]) -> String {
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair};
    use base64::Engine as _;
    let pem = pem::parse(std::fs::read(key).unwrap()).unwrap();
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pem.contents()).unwrap();
    let signature = pair
        .sign(&aws_lc_rs::rand::SystemRandom::new(), payload)
        .unwrap();
    base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
}
