//! The one place keybust's components are built: `guest/` for the host's
//! build script, `tests/programs/` for the tests. Both go through
//! [`build_component`], so they are built the same way, with the same
//! environment scrubbed.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target every component is built for.
pub const GUEST_TARGET: &str = "wasm32-wasip2";

/// Settings meant for a host build (clippy's wrapper, host rustflags,
/// coverage instrumentation, another target or target dir) that must not
/// leak into the wasm build.
const SCRUBBED: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_BUILD_DIR",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_LLVM_COV",
    "LLVM_PROFILE_FILE",
];

/// Builds `package` (a workspace member at `workspace`) for
/// [`GUEST_TARGET`] in release mode, with its cargo `features`, into
/// `target_dir`, and returns the path of its `.wasm`. Builds of one
/// package with different features need different target directories:
/// each writes the same file name.
///
/// `target_dir` must not be the directory of a cargo build that is running
/// now: the nested cargo would wait forever on that build's lock.
pub fn build_component(
    workspace: &Path,
    package: &str,
    features: &[&str],
    target_dir: &Path,
) -> Result<PathBuf, String> {
    check_target_installed()?;
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .current_dir(workspace)
        .args(["build", "--release", "--locked", "-p", package])
        .args(["--target", GUEST_TARGET])
        .arg("--target-dir")
        .arg(target_dir);
    if !features.is_empty() {
        build.arg("--features").arg(features.join(","));
    }
    for var in SCRUBBED {
        build.env_remove(var);
    }
    let status = build
        .status()
        .map_err(|err| format!("cannot run cargo to build {package}: {err}"))?;
    if !status.success() {
        return Err(format!("building {package} for {GUEST_TARGET} failed"));
    }
    let wasm = target_dir
        .join(GUEST_TARGET)
        .join("release")
        .join(format!("{}.wasm", package.replace('-', "_")));
    if wasm.exists() {
        Ok(wasm)
    } else {
        Err(format!("{} was not produced", wasm.display()))
    }
}

/// The wasm target comes with the toolchain `rust-toolchain.toml` names;
/// without it, say how to get it rather than fail deep inside cargo.
fn check_target_installed() -> Result<(), String> {
    let rustc = env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc)
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    match libdir {
        Some(dir) if dir.exists() => Ok(()),
        _ => Err(format!(
            "the {GUEST_TARGET} target is not installed: run `rustup target add {GUEST_TARGET}` \
             (rust-toolchain.toml lists it), or give a prebuilt component in KEYBUST_GUEST_WASM"
        )),
    }
}
