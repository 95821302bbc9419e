//! Embeds the endpoint component in the `keybust` binary: the one built
//! from `guest/` for `wasm32-wasip2`, or a prebuilt one named by
//! `KEYBUST_GUEST_WASM` (offline and container builds).

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=KEYBUST_GUEST_WASM");
    if let Some(prebuilt) = env::var_os("KEYBUST_GUEST_WASM").filter(|path| !path.is_empty()) {
        let prebuilt = PathBuf::from(prebuilt);
        assert!(
            prebuilt.is_file(),
            "KEYBUST_GUEST_WASM names {}, which is not a file",
            prebuilt.display()
        );
        println!("cargo:rerun-if-changed={}", prebuilt.display());
        println!("cargo:rustc-env=KEYBUST_GUEST_WASM={}", prebuilt.display());
        return;
    }

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
    // A target directory of its own: a nested cargo on the outer build's
    // directory would wait forever on the lock the outer build holds.
    let target_dir = root.join("target").join("guest");
    let wasm = keybust_wasm_build::build_component(root, "keybust-guest", &target_dir)
        .unwrap_or_else(|err| panic!("{err}"));
    println!("cargo:rustc-env=KEYBUST_GUEST_WASM={}", wasm.display());
}
