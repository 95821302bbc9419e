//! Embeds the endpoint component in the `keybust` binary: the one built
//! from `guest/` for `wasm32-wasip2`, or a prebuilt one named by
//! `KEYBUST_GUEST_WASM` (offline and container builds). Also names the
//! build for `--version` and `keybust_build_info`: the git commit, the
//! wasmtime version, the embedded component's digest.

use sha2::{Digest, Sha256};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ lives in the workspace");
    describe_build(root);
    let wasm = component(root);
    let bytes = std::fs::read(&wasm).unwrap_or_else(|err| panic!("{}: {err}", wasm.display()));
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    println!("cargo:rustc-env=KEYBUST_GUEST_DIGEST={digest}");
    println!("cargo:rustc-env=KEYBUST_GUEST_WASM={}", wasm.display());
}

/// `KEYBUST_GIT_SHA` (the commit, or `unknown` outside a git checkout) and
/// `KEYBUST_WASMTIME_VERSION` (from the lock file).
fn describe_build(root: &Path) {
    println!("cargo:rerun-if-env-changed=KEYBUST_GIT_SHA");
    let git_dir = root.join(".git");
    if git_dir.exists() {
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!("cargo:rerun-if-changed={}", git_dir.join("refs").display());
    }
    let sha = env::var("KEYBUST_GIT_SHA").ok().or_else(|| {
        Command::new("git")
            .current_dir(root)
            .args(["rev-parse", "--short=12", "HEAD"])
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    });
    println!(
        "cargo:rustc-env=KEYBUST_GIT_SHA={}",
        sha.filter(|s| !s.is_empty())
            .unwrap_or_else(|| "unknown".into())
    );
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let wasmtime = lock
        .split("[[package]]")
        .find(|package| package.contains("\nname = \"wasmtime\"\n"))
        .and_then(|package| {
            package
                .lines()
                .find_map(|line| line.strip_prefix("version = \""))
                .map(|version| version.trim_end_matches('"').to_owned())
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KEYBUST_WASMTIME_VERSION={wasmtime}");
}

/// The component to embed: prebuilt, or built from `guest/` now.
fn component(root: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=KEYBUST_GUEST_WASM");
    if let Some(prebuilt) = env::var_os("KEYBUST_GUEST_WASM").filter(|path| !path.is_empty()) {
        let prebuilt = PathBuf::from(prebuilt);
        assert!(
            prebuilt.is_file(),
            "KEYBUST_GUEST_WASM names {}, which is not a file",
            prebuilt.display()
        );
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        return prebuilt;
    }
    for input in [
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }
    // A target directory of its own: a nested cargo on the outer build's
    // directory would wait forever on the lock the outer build holds.
    let target_dir = root.join("target").join("guest");
    keybust_wasm_build::build_component(root, "keybust-guest", &target_dir)
        .unwrap_or_else(|err| panic!("{err}"))
}
