//! Builds the endpoint component from `guest/` for `wasm32-wasip2`, so the
//! `keybust` binary can embed it and `cargo build` needs nothing more.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("host/ lives in the workspace");
    for input in [
        "guest/src",
        "guest/Cargo.toml",
        "wit",
        "Cargo.lock",
        "Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(input).display());
    }

    ensure_target_installed();

    // A separate target directory: a nested cargo on the outer build's
    // directory would wait forever on the lock the outer build holds.
    let target_dir = root.join("target").join("guest");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(root)
        .args(["build", "--release", "--locked", "-p", "keybust-guest"])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(&target_dir);
    // Settings meant for the host build (clippy's wrapper, host rustflags,
    // coverage instrumentation) must not leak into the wasm build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CARGO_LLVM_COV",
        "LLVM_PROFILE_FILE",
    ] {
        build.env_remove(var);
    }
    let status = build
        .status()
        .expect("could not run cargo to build the guest component");
    assert!(
        status.success(),
        "building the guest component (keybust-guest for {GUEST_TARGET}) failed"
    );

    let wasm = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join("keybust_guest.wasm");
    assert!(wasm.exists(), "{} was not produced", wasm.display());
    println!("cargo:rustc-env=KEYBUST_GUEST_WASM={}", wasm.display());
}

/// Installs the wasm target through rustup when the toolchain lacks it, the
/// way `rust-toolchain.toml` asks for it.
fn ensure_target_installed() {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let sysroot = Command::new(&rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    let installed = sysroot
        .as_deref()
        .map(|root| target_libdir(root).exists())
        .unwrap_or(false);
    if installed {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status();
    match status {
        Ok(status) if status.success() => {}
        _ => panic!(
            "the {GUEST_TARGET} target is missing and `rustup target add {GUEST_TARGET}` failed; install it and build again"
        ),
    }
}

fn target_libdir(sysroot: &Path) -> PathBuf {
    sysroot.join("lib").join("rustlib").join(GUEST_TARGET)
}
