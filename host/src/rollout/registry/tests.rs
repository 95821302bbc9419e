use super::*;
use crate::config::ConfigError;
use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    registry: RegistryArgs,
}

fn registry(args: &[&str]) -> Result<Registry, ConfigError> {
    let mut argv = vec!["keybust"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv)
        .expect("parses")
        .registry
        .registry()
}

fn reference(text: &str) -> OciReference {
    OciReference::parse(text).unwrap()
}

#[test]
fn plain_http_only_for_loopback_and_named_registries() {
    let named = registry(&["--insecure-registry", "registry.lan:5000, other.lan"]).unwrap();
    assert_eq!(
        named.plain_http(&reference("oci://ghcr.io/acme/k:v1")),
        ["registry.lan:5000", "other.lan"]
    );
    assert!(
        named
            .plain_http(&reference("oci://127.0.0.1:5000/k:v1"))
            .contains(&"127.0.0.1:5000".to_owned())
    );
    let strict = registry(&[]).unwrap();
    assert!(
        strict
            .plain_http(&reference("oci://ghcr.io/acme/k:v1"))
            .is_empty()
    );
}

#[test]
fn a_login_needs_both_halves_and_a_verify_key_must_be_a_key() {
    assert!(registry(&["--registry-username", "ci"]).is_err());
    assert!(registry(&["--registry-username", "ci", "--registry-password", "pw"]).is_ok());
    let dir = tempfile::tempdir().unwrap();
    let not_a_key = dir.path().join("cosign.pub");
    std::fs::write(
        &not_a_key,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let err = registry(&["--verify-key", not_a_key.to_str().unwrap()]).unwrap_err();
    assert!(err.to_string().contains("KEYBUST_VERIFY_KEY"), "{err}");
    assert!(!registry(&[]).unwrap().requires_signatures());
}
