#!/usr/bin/env bash
# keybust under load, four request paths, side by side in one run:
#   full       valid token, Convex says the caller owns the key, Redis DEL runs
#   401        no token
#   422        valid token, bad keyHash
#   preflight  CORS OPTIONS from an allowed origin
# keybust is pinned to CPU 0; wrk, redis-server and the Convex/JWKS stand-ins
# to CPU 1. Then the same policy compiled natively (bench/native.rs), with the
# same host capabilities, is driven the same way. Prints req/s, p50, p99, the
# keybust/native ratio and peak RSS, and fails if any answer has another
# status than the path's own.
#
# Usage: bench/run.sh [--smoke]
#   --smoke   a few seconds, few connections: proves the harness and the status
#             codes, measures nothing (part of scripts/test.sh)
# Knobs: BENCH_DURATION (10s), BENCH_CONNECTIONS (64), BENCH_RUST_LOG (info)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; fi
duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-64}
if [ "$smoke" = 1 ]; then duration=2s; connections=4; fi

need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/run.sh: installing ${need[*]} from Debian's packages" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

cargo build --release --locked -q -p keybust-host --bin keybust --example bench-backends --example bench-native

cpus=$(nproc)
load_cpu=1
if [ "$cpus" -lt 2 ]; then load_cpu=0; fi
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

wait_for() { # file pattern
  for _ in $(seq 1 600); do
    if grep -q "$2" "$1" 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "bench/run.sh: timed out waiting for '$2' in $1" >&2
  cat "$1" >&2 || true
  exit 1
}

redis_port=$(( 20000 + RANDOM % 20000 ))
taskset -c "$load_cpu" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "$work/redis.log" "Ready to accept connections"

taskset -c "$load_cpu" target/release/examples/bench-backends >"$work/backends.env" 2>"$work/backends.err" &
pids+=($!)
wait_for "$work/backends.env" "READY=1"
set -a
# shellcheck disable=SC1091
. "$work/backends.env"
set +a

declare -A expected=([full]=200 [401]=401 [422]=422 [preflight]=204)
declare -A RPS P50 P99 STATUSES
declare -A RSS
failed=0

# measure NAME COMMAND...: serve with COMMAND pinned to CPU 0, drive every path.
measure() {
  local name=$1
  shift
  RUST_LOG=${BENCH_RUST_LOG:-info} REDIS_URL="redis://127.0.0.1:$redis_port" \
    KEYBUST_LISTEN=127.0.0.1:0 KEYBUST_ADMIN_LISTEN=127.0.0.1:0 KEYBUST_CACHE_DIR="$work/cache" \
    taskset -c 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  pids+=($pid)
  wait_for "$work/$name.out" "^listening on"
  local url
  url="$(sed -n 's/^listening on //p' "$work/$name.out")/api/invalidate-user-api-key-cache"
  for path in full 401 422 preflight; do
    local out
    out=$(BENCH_PATH=$path taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"$duration" --latency -s bench/request.lua "$url")
    RPS[$name:$path]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    STATUSES[$name:$path]=$(sed -n 's/^STATUSES //p' <<<"$out")
    P50[$name:$path]=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out")
    P99[$name:$path]=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$out")
    local want="${expected[$path]}"
    local statuses="${STATUSES[$name:$path]}"
    if [ -z "$statuses" ] || tr ' ' '\n' <<<"$statuses" | grep -qv "^${want}="; then
      echo "bench/run.sh: $name $path answered other statuses than $want: $statuses" >&2
      failed=1
    fi
    if grep -q "Socket errors" <<<"$out"; then
      echo "bench/run.sh: $name $path: $(grep 'Socket errors' <<<"$out")" >&2
      failed=1
    fi
  done
  RSS[$name]=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/$pid/status")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
}

measure keybust target/release/keybust serve
measure native target/release/examples/bench-native

echo "connections: $connections, duration: $duration per path; server on CPU 0, load on CPU $load_cpu"
printf '%-10s %12s %10s %10s %12s %10s  %s\n' path "keybust r/s" p50 p99 "native r/s" "ratio" statuses
for path in full 401 422 preflight; do
  awk -v path="$path" -v k="${RPS[keybust:$path]}" -v n="${RPS[native:$path]}" \
    -v p50="${P50[keybust:$path]}" -v p99="${P99[keybust:$path]}" -v st="${STATUSES[keybust:$path]}" \
    'BEGIN { printf "%-10s %12.0f %8.2fms %8.2fms %12.0f %9.2fx  %s\n", path, k, p50 / 1000, p99 / 1000, n, (n > 0 ? k / n : 0), st }'
done
echo "peak RSS: keybust ${RSS[keybust]} MiB, native ${RSS[native]} MiB"
if [ "$smoke" = 1 ]; then echo "smoke run: status codes checked, timings not meaningful"; fi
exit "$failed"
