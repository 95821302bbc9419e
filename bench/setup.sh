#!/usr/bin/env bash
# Tools the full benchmark needs beyond the test suite's: wrk and redis-server
# from Debian, and `wasmtime serve` 48.0.8 (the baseline keybust is compared
# with) built from crates.io into target/bench-tools with only the features
# `serve` needs. The wasmtime build takes about 10 minutes on two cores; it is
# done once and kept out of the test command (the smoke run does not need it).
#
# Usage: bench/setup.sh [--without-wasmtime]
#   idempotent; prints the path of the wasmtime binary last (unless
#   --without-wasmtime, which the smoke run uses).
set -euo pipefail
cd "$(dirname "$0")/.."
with_wasmtime=1
case "${1:-}" in
  "") ;;
  --without-wasmtime) with_wasmtime=0 ;;
  *) echo "usage: bench/setup.sh [--without-wasmtime]" >&2; exit 2 ;;
esac

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/setup.sh: installing ${need[*]} from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if [ "$with_wasmtime" = 0 ]; then exit 0; fi

root=target/bench-tools
version=48.0.8
wasmtime="$root/bin/wasmtime"
if ! { [ -x "$wasmtime" ] && "$wasmtime" --version | grep -q "^wasmtime $version\( \|$\)"; }; then
  echo "bench/setup.sh: building wasmtime-cli $version (serve only) into $root" >&2
  # serve needs component-model-async to compile in 48.0.8.
  cargo install --quiet --locked --force --root "$root" --target-dir "$root/build" \
    wasmtime-cli --version "=$version" \
    --no-default-features --features serve,run,component-model-async,cranelift,pooling-allocator,parallel-compilation
fi
echo "$wasmtime"
