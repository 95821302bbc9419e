//! With the `embedded-component` feature, embeds the endpoint component in
//! the library: the one built from `guest/` for `wasm32-wasip2`, or a
//! prebuilt one named by `KEYBUST_GUEST_WASM` (offline and container
//! builds). The nested build writes into the outer build's target
//! directory, never into keybust's own tree (which may be a read-only
//! dependency checkout). Also names the build for `--version` and
//! `keybust_build_info`: the git commit, the wasmtime version, the embedded
//! component's digest.

#[cfg(feature = "embedded-component")]
use sha2::{Digest, Sha256};
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ lives in the workspace");
    describe_build(root);
    #[cfg(feature = "embedded-component")]
    embed(root);
}

/// Names the component to embed and its digest for the compiler.
#[cfg(feature = "embedded-component")]
fn embed(root: &Path) {
    let wasm = component(root);
    // For the workspace's own tests, which build their test components
    // beside the guest.
    println!(
        "cargo:rustc-env=KEYBUST_GUEST_TARGET_DIR={}",
        guest_target_dir().display()
    );
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
#[cfg(feature = "embedded-component")]
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
    keybust_wasm_build::build_component(root, "keybust-guest", &[], &guest_target_dir())
        .unwrap_or_else(|err| panic!("{err}"))
}

/// Where the nested build writes: `keybust-guest` beside this build's own
/// `build/` directory, in the outer build's target directory (so
/// `CARGO_TARGET_DIR` is honoured and keybust's tree is left alone). A
/// directory of its own: a nested cargo on the outer build's directory
/// would wait forever on the lock the outer build holds.
#[cfg(feature = "embedded-component")]
fn guest_target_dir() -> PathBuf {
    // OUT_DIR is <target>/[<triple>/]<profile>/build/<package>-<hash>/out.
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    out_dir
        .parent()
        .and_then(Path::parent)
        .filter(|build| build.file_name().is_some_and(|name| name == "build"))
        .and_then(Path::parent)
        .map(|profile| profile.join("keybust-guest"))
        .unwrap_or_else(|| out_dir.join("keybust-guest"))
}
