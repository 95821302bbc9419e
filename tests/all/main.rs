//! keybust's integration tests, in one binary (as wasmtime gathers its
//! own): one build and one link for all of them, and one process whose
//! shared pieces (signing keys, the test programs' build, precompiled
//! components) are made once.
//!
//! Most modules check docs/contract.md over real HTTP. The contract's rules
//! run against keybust's library served in the test's runtime
//! (`support::Stack::in_process`); what only a process shows (its command
//! line and environment, signals, `keybust dev`, startup failures, its
//! logs, the admin listener, file watching) runs against the real `keybust`
//! binary (`support::Stack::start`, `support::Keybust`).

mod support;

mod access_log;
mod cache;
mod canary;
mod clients;
mod contract_gate;
mod cosign_bundles;
mod deploy;
mod dev;
mod drain;
mod endpoint;
mod example;
mod fleet;
mod hardening;
mod least_privilege;
mod messages;
mod metrics;
mod quiet_connections;
mod readiness;
mod registry_reads;
mod reuse;
mod session;
mod settings;
mod shadow;
mod signatures;
mod swap;
mod systemd;
mod tls;
mod traces;
mod transport;
