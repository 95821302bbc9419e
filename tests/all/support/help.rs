//! What `keybust serve --help` lists: every setting's flag and environment
//! twin, the one list the README, the deploy files and the tests are held
//! against.

use std::collections::BTreeSet;

pub fn is_flag(token: &str) -> bool {
    token.strip_prefix("--").is_some_and(|name| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    })
}

pub fn is_env(token: &str) -> bool {
    token.len() > 2
        && token.bytes().next().is_some_and(|b| b.is_ascii_uppercase())
        && token
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// What `keybust serve --help` prints, with no setting in the environment.
pub fn serve_help() -> String {
    let output = std::process::Command::new(super::process::binary())
        .args(["serve", "--help"])
        .env_clear()
        .output()
        .unwrap();
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap()
}

/// The flags and environment twins `keybust serve --help` lists.
pub fn listed() -> (BTreeSet<String>, BTreeSet<String>) {
    let help = serve_help();
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in help.lines() {
        let line = line.trim_start();
        if let Some(flag) = line
            .split([' ', '=', ','])
            .next()
            .filter(|f| is_flag(f) && *f != "--help" && *f != "--version")
        {
            flags.insert(flag.to_owned());
        }
        for part in line.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| *c != '=' && *c != ']')
                .collect();
            envs.insert(name);
        }
    }
    (flags, envs)
}
