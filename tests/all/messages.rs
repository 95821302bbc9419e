//! Messages a person can act on: what keybust says when it cannot start,
//! in the words of the mistake rather than of the parser that found it.

use crate::support::certs::TestCa;
use crate::support::process::{binary, refused, refused_start};
use std::process::Command;

/// A file that is not a component says what it is instead: wasmtime's
/// parser answers with a dump of the magic bytes it expected, one per line.
#[test]
fn a_file_that_is_not_a_component_says_what_it_is() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("endpoint.wat");
    std::fs::write(&text, "(component)\n").unwrap();
    let said = refused_start(&["--component", text.to_str().unwrap()]);
    assert!(
        said.contains("not WebAssembly: it starts with text"),
        "{said}"
    );
    assert!(!said.contains("0x"), "{said}");

    // The header of a core module: magic, then version 1.
    let module = dir.path().join("module.wasm");
    std::fs::write(&module, b"\0asm\x01\0\0\0").unwrap();
    let said = refused_start(&["--component", module.to_str().unwrap()]);
    assert!(
        said.contains("a core WebAssembly module, not a component"),
        "{said}"
    );
    assert!(said.contains("wasm32-wasip2"), "{said}");
}

/// A certificate and key given the wrong way round, or a file with no PEM
/// in it, says which block was wanted and what the file holds: the parser
/// says "no items found".
#[test]
fn a_pem_file_that_holds_the_wrong_block_says_which_it_wanted() {
    let ca = TestCa::new("messages");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = ca.server().install(dir.path());
    let said = refused_start(&[
        "--tls-cert",
        key.to_str().unwrap(),
        "--tls-key",
        cert.to_str().unwrap(),
    ]);
    assert!(
        said.contains("wanted a -----BEGIN CERTIFICATE----- block"),
        "{said}"
    );
    assert!(said.contains("the wrong way round"), "{said}");

    let not_pem = dir.path().join("key.txt");
    std::fs::write(&not_pem, "not a key").unwrap();
    let said = refused_start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        not_pem.to_str().unwrap(),
    ]);
    assert!(said.contains("wanted a -----BEGIN PRIVATE KEY"), "{said}");
    assert!(said.contains("holds no PEM block"), "{said}");
}

/// A second `keybust dev` on a port another process holds says which
/// setting to change.
#[test]
fn a_busy_port_names_the_setting_that_moves_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let state = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary());
    command
        .args(["dev", "--listen", &addr])
        .env_clear()
        .env("KEYBUST_STATE_DIR", state.path().join("state"))
        .env("KEYBUST_COMPONENT_CACHE_DIR", state.path().join("cache"));
    let said = refused(command);
    assert!(said.contains(&addr), "{said}");
    assert!(
        said.contains("choose another address with --listen"),
        "{said}"
    );
}

/// A state directory whose record a newer keybust wrote (a downgrade)
/// stops the start, saying so, and the record is left as it was: read as
/// damaged, it was replaced with a new one, losing what it held.
#[test]
fn a_record_from_a_newer_keybust_stops_the_start() {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().unwrap();
    let components = state.path().join("components");
    std::fs::create_dir_all(&components).unwrap();
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::set_permissions(&components, std::fs::Permissions::from_mode(0o700)).unwrap();
    let record = components.join("state.json");
    let newer = r#"{"schema": 2, "versions": []}"#;
    std::fs::write(&record, newer).unwrap();
    std::fs::set_permissions(&record, std::fs::Permissions::from_mode(0o600)).unwrap();
    let state_dir = state.path().display().to_string();
    let cache_dir = state.path().join("cache").display().to_string();
    let said = refused(crate::support::process::serve_command(&[
        ("KEYBUST_CACHE", "embedded"),
        ("KEYBUST_STATE_DIR", &state_dir),
        ("KEYBUST_COMPONENT_CACHE_DIR", &cache_dir),
    ]));
    assert!(said.contains("schema 2"), "{said}");
    assert!(said.contains("a newer keybust wrote it"), "{said}");
    assert_eq!(std::fs::read_to_string(&record).unwrap(), newer);
}
