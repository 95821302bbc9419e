//! Components other than the embedded one: the guest's wasi:http 0.3
//! build, the misbehaving test programs, and variants of the embedded
//! component under another digest.

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
    WASM.get_or_init(|| build("keybust-test-programs", &[], "programs"))
}

/// A copy of the test programs in which a request without `?mode=` gets
/// `mode` (written into their `DEFAULT_MODE` marker): a component that
/// behaves that way for every request, the contract gate's included,
/// under a digest of its own.
pub fn with_default_mode(mode: &str) -> Vec<u8> {
    const MARKER: &[u8] = b"keybust-default-mode:";
    const ROOM: usize = 64 - MARKER.len();
    assert!(mode.len() <= ROOM, "a default mode fits in {ROOM} bytes");
    let mut bytes = test_programs().to_vec();
    let found: Vec<usize> = bytes
        .windows(MARKER.len())
        .enumerate()
        .filter(|(_, window)| *window == MARKER)
        .map(|(at, _)| at)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the test programs hold one DEFAULT_MODE marker"
    );
    let at = found[0] + MARKER.len();
    let mut word = mode.as_bytes().to_vec();
    word.resize(ROOM, b'.');
    bytes[at..at + ROOM].copy_from_slice(&word);
    bytes
}

/// [`with_default_mode`], off the async threads: the first call builds
/// the test programs.
pub async fn behaving_as(mode: &'static str) -> Vec<u8> {
    tokio::task::spawn_blocking(move || with_default_mode(mode))
        .await
        .unwrap()
}

/// The test programs' wasi:http 0.3 build, compiled once per test binary.
pub fn test_programs_p3() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| build("keybust-test-programs", &["p3"], "p3"))
}

/// Builds `package` with `features` into `dir` under the guest's target
/// directory. Builds of one package with other features need a directory
/// of their own (they write the same file); the default ones share the
/// guest's.
fn build(package: &str, features: &[&str], dir: &str) -> Vec<u8> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap();
    let target = std::path::Path::new(env!("KEYBUST_GUEST_TARGET_DIR"));
    let target = if features.is_empty() {
        target.to_owned()
    } else {
        target.join(dir)
    };
    let wasm = keybust_wasm_build::build_component(root, package, features, &target)
        .unwrap_or_else(|err| panic!("{err}"));
    std::fs::read(wasm).unwrap()
}

/// keybust serving the test programs from a file, with short time budgets
/// (`--guest-timeout 300ms`, `--request-timeout 3s`) and `extra_args`.
/// Keep the directory while the stack runs.
pub async fn serve_programs(extra_args: &[&str]) -> (super::Stack, tempfile::TempDir) {
    serve_programs_of(Guest::P2, extra_args).await
}

/// Like [`serve_programs`], the build for `guest`'s wasi:http.
pub async fn serve_programs_of(
    guest: Guest,
    extra_args: &[&str],
) -> (super::Stack, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("programs.wasm");
    let bytes = tokio::task::spawn_blocking(move || match guest {
        Guest::P2 => test_programs(),
        Guest::P3 => test_programs_p3(),
    })
    .await
    .unwrap();
    std::fs::write(&path, bytes).unwrap();
    let path = path.display().to_string();
    let options = super::Options {
        args: [
            "--component",
            path.as_str(),
            // They break the contract on purpose.
            "--contract-gate",
            "off",
            "--guest-timeout",
            "300ms",
            "--request-timeout",
            "3s",
        ]
        .iter()
        .chain(extra_args)
        .map(|arg| arg.to_string())
        .collect(),
        ..super::Options::default()
    };
    (
        super::Stack::with(super::Backend::Embedded, options).await,
        dir,
    )
}

/// Which build of `guest/` a stack serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Guest {
    /// The embedded one: `wasi:http/incoming-handler@0.2.12`.
    #[default]
    P2,
    /// The `p3` feature's: `wasi:http/handler@0.3.0`.
    P3,
}

impl Guest {
    /// The component's bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Guest::P2 => keybust::runtime::plugin::EMBEDDED_COMPONENT,
            Guest::P3 => endpoint_p3(),
        }
    }
}

/// The guest built with its `p3` feature, once per test binary, beside the
/// embedded build (in a directory of its own: both are `keybust_guest.wasm`).
pub fn endpoint_p3() -> &'static [u8] {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| build("keybust-guest", &["p3"], "p3"))
}

/// A POST to the endpoint asking the test programs for `?mode=`.
pub async fn mode(stack: &super::Stack, mode: &str) -> super::Answer {
    use super::Answered as _;
    let url = format!("{}?mode={mode}", super::ENDPOINT);
    stack.request(reqwest::Method::POST, &url).answer().await
}
