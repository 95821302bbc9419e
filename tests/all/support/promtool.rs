//! Prometheus's own checker, `promtool`: `scripts/promtool.sh` fetches it
//! from Debian's prometheus package and `scripts/test.sh` names it in
//! `KEYBUST_PROMTOOL`.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The promtool the test command fetched (or `target/tools/promtool`, where
/// `scripts/promtool.sh` puts it); a test that needs it fails without it.
pub fn promtool() -> PathBuf {
    let path = std::env::var_os("KEYBUST_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/tools/promtool")
        });
    assert!(
        path.is_file(),
        "promtool is missing at {}: run scripts/test.sh, or scripts/promtool.sh",
        path.display()
    );
    path
}

/// `promtool ARGS` with `input` on stdin: its exit, stdout and stderr.
pub fn run(args: &[&str], input: &str) -> (bool, String) {
    let mut child = Command::new(promtool())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), said)
}
