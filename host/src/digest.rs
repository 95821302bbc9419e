//! How components (and certificates) are named: the lower-case hex SHA-256
//! of their bytes. Every layer speaks of a version by this name, so it
//! lives with the shared ground rather than in any one of them.

use sha2::{Digest, Sha256};

/// Lower-case hex SHA-256 of `bytes`: how components are named everywhere
/// (the admin API, metrics, logs, the history and the compiled-code cache).
pub fn hex_digest(bytes: &[u8]) -> String {
    use std::fmt::Write;
    Sha256::digest(bytes)
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}
