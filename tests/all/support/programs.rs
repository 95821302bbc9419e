//! Components other than the embedded one: the misbehaving test programs,
//! and variants of the embedded component under another digest.

use std::sync::OnceLock;

// Shared with the swap benchmark (`host/benches/swap.rs`), which includes
// the file by path.
#[path = "variant.rs"]
mod variant;

pub use variant::variant;

/// The component built from `tests/programs`, compiled once per test binary
/// (into the directory the host's build script builds the guest in).
pub fn test_programs() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap();
        let wasm = keybust_wasm_build::build_component(
            root,
            "keybust-test-programs",
            std::path::Path::new(env!("KEYBUST_GUEST_TARGET_DIR")),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        std::fs::read(wasm).unwrap()
    })
}
