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

/// Settings for two cache backends at once stop keybust at start, naming
/// both. `KEYBUST_CACHE=embedded` beside `REDIS_URL` served from the
/// in-process store (a Ready pod that invalidated nothing), and `REDIS_URL`
/// beside `UPSTASH_*` picked Redis without a word.
#[test]
fn settings_for_two_cache_backends_stop_keybust_naming_both() {
    const REDIS: (&str, &str) = ("REDIS_URL", "redis://127.0.0.1:9");
    const CLUSTER: (&str, &str) = ("REDIS_CLUSTER_NODES", "redis://127.0.0.1:9");
    const UPSTASH_URL: (&str, &str) = ("UPSTASH_REDIS_REST_URL", "http://127.0.0.1:9");
    const UPSTASH_TOKEN: (&str, &str) = ("UPSTASH_REDIS_REST_TOKEN", "upstash-token");
    // The environment, and the two names the refusal must give.
    type Case = (Vec<(&'static str, &'static str)>, [&'static str; 2]);
    let cases: Vec<Case> = vec![
        (
            vec![("KEYBUST_CACHE", "embedded"), REDIS],
            ["KEYBUST_CACHE", "REDIS_URL"],
        ),
        (
            vec![("KEYBUST_CACHE", "embedded"), CLUSTER],
            ["KEYBUST_CACHE", "REDIS_CLUSTER_NODES"],
        ),
        (
            vec![("KEYBUST_CACHE", "embedded"), UPSTASH_URL, UPSTASH_TOKEN],
            ["KEYBUST_CACHE", "UPSTASH_REDIS_REST_URL"],
        ),
        (
            vec![REDIS, UPSTASH_URL, UPSTASH_TOKEN],
            ["REDIS_URL", "UPSTASH_REDIS_REST_URL"],
        ),
        (
            vec![CLUSTER, UPSTASH_URL, UPSTASH_TOKEN],
            ["REDIS_CLUSTER_NODES", "UPSTASH_REDIS_REST_URL"],
        ),
        (
            vec![
                ("KEYBUST_CACHE", "redis"),
                REDIS,
                UPSTASH_URL,
                UPSTASH_TOKEN,
            ],
            ["REDIS_URL", "UPSTASH_REDIS_REST_URL"],
        ),
    ];
    // Each case may take the refusal's full minute on a keybust that
    // serves instead: run them side by side.
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(env, names)| {
            std::thread::spawn(move || {
                let said = support::process::refused(support::process::serve_command(&env));
                for name in names {
                    assert!(said.contains(name), "{env:?} does not name {name}: {said}");
                }
                assert!(!said.contains("upstash-token"), "{said}");
            })
        })
        .collect();
    for run in runs {
        run.join().unwrap();
    }
}

/// At start one INFO line says what is in effect, so an operator can see
/// the cache and key prefix the endpoint deletes in (the prefix must match
/// what the gateway writes, and was visible nowhere), without a secret.
#[test]
fn one_line_at_start_says_what_is_in_effect() {
    let version = std::process::Command::new(support::process::binary())
        .arg("--version")
        .output()
        .unwrap();
    let version = String::from_utf8(version.stdout).unwrap();
    // "keybust 0.1.0 (git …)"
    let version = version.split_whitespace().nth(1).unwrap().to_owned();
    let keybust = support::process::Keybust::start(
        &["serve"],
        &[
            ("REDIS_URL", "redis://:redis-password@127.0.0.1:9/0".into()),
            ("KEYBUST_CACHE_PREFIX", "preview:abcdef12:".into()),
            ("CONVEX_SITE_URL", "http://127.0.0.1:8/".into()),
            ("CONVEX_SERVER_SHARED_SECRET", "convex-shared-secret".into()),
            (
                "CLERK_JWT_ISSUER_DOMAIN",
                "http://127.0.0.1:7/issuer".into(),
            ),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let line = loop {
        let logs = keybust.logs();
        if let Some(line) = logs.lines().find(|line| line.contains("in effect")) {
            break line.to_owned();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no line says what is in effect: {logs}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(line.contains("INFO"), "{line}");
    for shown in [
        "cache=\"redis\"",
        "127.0.0.1:9",
        "\"preview:abcdef12:\"",
        "127.0.0.1:8",
        "http://127.0.0.1:7/issuer",
        &format!("version=\"{version}\""),
    ] {
        assert!(line.contains(shown), "{shown} is not in: {line}");
    }
    let digest = line
        .split("digest=\"")
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .unwrap_or_default();
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "no component digest in: {line}"
    );
    keybust
        .log_sink()
        .assert_clean(&["redis-password", "convex-shared-secret"]);
}

/// A value clap refuses names the environment variable it came from, not
/// only its flag: an operator who set the variable in a manifest has no
/// flag to look for.
#[test]
fn a_refused_value_names_its_variable() {
    for (name, value) in [
        ("KEYBUST_CACHE_TIMEOUT", "soon"),
        ("KEYBUST_SHADOW", "maybe"),
        ("KEYBUST_WORKER_THREADS", "0"),
    ] {
        let said = support::process::refused(support::process::serve_command(&[(name, value)]));
        assert!(said.starts_with(&format!("error: {name}: ")), "{said}");
    }
    // Given as a flag, the flag is what clap names.
    let mut command = support::process::serve_command(&[("KEYBUST_SHADOW", "on")]);
    command.arg("--shadow=maybe");
    let said = support::process::refused(command);
    assert!(said.starts_with("error: invalid value"), "{said}");
}

/// The component cache's settings are `--component-cache-dir` and
/// `--component-cache-max-bytes`, apart from the cache backend's
/// (`--cache`, `--cache-timeout`, ...). The old names still work, with a
/// deprecation warning; old and new together stop keybust, naming both.
#[test]
fn the_component_cache_settings_keep_their_old_names_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("compiled");
    let keybust = support::process::Keybust::start(
        &["serve"],
        &[
            ("KEYBUST_CACHE", "embedded".into()),
            ("KEYBUST_CACHE_DIR", cache.display().to_string()),
        ],
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let logs = keybust.logs();
        let warned = logs.contains("KEYBUST_CACHE_DIR) is deprecated")
            && logs.contains("--component-cache-dir");
        let compiled = std::fs::read_dir(&cache).is_ok_and(|mut entries| entries.next().is_some());
        if warned && compiled {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "warned: {warned}, compiled into {}: {compiled}\n{logs}",
            cache.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(keybust);

    let said = support::process::refused(support::process::serve_command(&[
        ("KEYBUST_CACHE_DIR", "/tmp/a"),
        ("KEYBUST_COMPONENT_CACHE_DIR", "/tmp/b"),
    ]));
    assert!(
        said.contains("KEYBUST_COMPONENT_CACHE_DIR") && said.contains("KEYBUST_CACHE_DIR"),
        "{said}"
    );
}
