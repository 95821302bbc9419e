//! The settings the README documents are the ones `keybust serve --help`
//! lists, flag for flag and environment twin for twin, both ways.

use crate::support;
use crate::support::help::{is_env, is_flag, listed};
use std::collections::BTreeSet;

/// The flags (`--x`) and environment names (`NAME`) in backticks in the
/// README's tables, from "Configuration" up to "Operating it".
fn documented() -> (BTreeSet<String>, BTreeSet<String>) {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("## Configuration")
        .expect("a Configuration section");
    let end = readme
        .find("## Operating it")
        .expect("an Operating it section");
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for line in readme[start..end].lines().filter(|l| l.starts_with('|')) {
        for (i, token) in line.split('`').enumerate() {
            if i % 2 == 0 {
                continue;
            }
            if is_flag(token) {
                flags.insert(token.to_owned());
            } else if is_env(token) {
                envs.insert(token.to_owned());
            }
        }
    }
    (flags, envs)
}

#[test]
fn every_setting_in_the_readme_is_in_help_and_back() {
    let (documented_flags, documented_envs) = documented();
    let (listed_flags, listed_envs) = listed();
    assert!(listed_flags.len() > 30, "{listed_flags:?}");
    assert_eq!(
        documented_flags
            .symmetric_difference(&listed_flags)
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "flags documented but not listed, or listed but not documented"
    );
    assert_eq!(
        documented_envs
            .symmetric_difference(&listed_envs)
            .collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "environment names documented but not listed, or listed but not documented"
    );
}

/// An on/off setting takes only true/false, 1/0, yes/no or on/off: any
/// other word stops keybust at start. `disabled` once turned the
/// insecure-backends mode on (anything not "false-like" counted as on).
#[test]
fn an_on_off_setting_refuses_a_word_it_does_not_know() {
    for name in [
        "KEYBUST_ALLOW_INSECURE_BACKENDS",
        "KEYBUST_ADMIN_ALLOW_REMOTE",
        "KEYBUST_TRUST_TRACE_CONTEXT",
    ] {
        let command = support::process::serve_command(&[(name, "disabled")]);
        let said = support::process::refused(command);
        assert!(said.contains("is not on or off"), "{name}: {said}");
    }
}

/// A sampling fraction outside 0 to 1 stops keybust at start, even while
/// no traces are exported: it was taken silently then, and refused only
/// on the day an exporter was turned on.
#[test]
fn a_sampling_fraction_outside_0_to_1_is_refused() {
    for value in ["5", "-0.5", "most"] {
        let command = support::process::serve_command(&[("OTEL_TRACES_SAMPLER_ARG", value)]);
        let said = support::process::refused(command);
        assert!(
            said.contains("OTEL_TRACES_SAMPLER_ARG is a fraction from 0 to 1"),
            "{value}: {said}"
        );
    }
}
