#!/usr/bin/env bash
# Builds tests/outside, a crate outside keybust's workspace that depends on
# keybust-host, against a copy of keybust's tree: first with keybust's
# default features off (no nested guest build at all), then with the
# embedded component (the nested guest build, which must land in the outer
# target directory). Each build serves a component given as bytes, and after
# each the copy must be exactly as it was: nothing written into the
# dependency's tree. It builds in the workspace's target directory, in the
# release profile the test command builds in, and tests/outside/Cargo.toml gives
# the shared dependencies the workspace's features, so that what the
# workspace build compiled is reused. If a crates.io crate compiles again,
# the script fails and names it: the alignment there needs that crate.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The workspace's target directory, wherever CARGO_TARGET_DIR or a config
# puts it.
target="$(cd "$root" && cargo metadata --format-version 1 --no-deps --offline \
  | grep -o '"target_directory":"[^"]*"' | cut -d'"' -f4)"
# The component the workspace build embedded: a prebuilt one, or the one
# host/build.rs built.
component="${KEYBUST_GUEST_WASM:-$target/release/keybust-guest/wasm32-wasip2/release/keybust_guest.wasm}"
if [ ! -f "$component" ]; then
  echo "outside-crate.sh: no component at $component; run the workspace's release build first" >&2
  exit 1
fi

mkdir "$work/keybust"
tar -C "$root" --exclude=./target --exclude=./.git -cf - . | tar -C "$work/keybust" -xf -
cp -r "$root/tests/outside" "$work/outside"
# The versions keybust is tested with; no new resolution, no network.
cp "$root/Cargo.lock" "$work/outside/Cargo.lock"

tree() { (cd "$work/keybust" && find . -printf '%y %p %s %T@\n' | LC_ALL=C sort); }
tree > "$work/before"

build_and_serve() {
  CARGO_TARGET_DIR="$target" cargo build --release --offline \
    --manifest-path "$work/outside/Cargo.toml" "$@" 2>"$work/build.log" \
    || { cat "$work/build.log" >&2; exit 1; }
  # "Compiling name vX.Y.Z" with no path after it: a crates.io crate.
  again="$(grep -E '^ *Compiling [^ ]+ v[^ ]+$' "$work/build.log" | awk '{print $2" "$3}' || true)"
  if [ -n "$again" ]; then
    echo "outside-crate.sh: these crates.io crates compiled again for keybust-host $* as a dependency;" >&2
    echo "give each the workspace's features in tests/outside/Cargo.toml:" >&2
    echo "$again" >&2
    exit 1
  fi
  "$target/release/keybust-outside" "$component"
  tree > "$work/after"
  if ! diff -u "$work/before" "$work/after"; then
    echo "outside-crate.sh: building keybust-host $* as a dependency wrote into its tree (above)" >&2
    exit 1
  fi
}

# The guest build must not see a prebuilt component meant for the workspace.
unset KEYBUST_GUEST_WASM
build_and_serve
build_and_serve --features embedded
echo "outside-crate.sh: built outside the workspace, with and without the embedded component; keybust's tree untouched"
