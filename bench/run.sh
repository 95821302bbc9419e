#!/usr/bin/env bash
# keybust under load, four request paths, side by side in one run:
#   full       valid token, Convex says the caller owns the key, Redis DEL runs
#   401        no token
#   422        valid token, bad keyHash
#   preflight  CORS OPTIONS from an allowed origin
# keybust is pinned to CPU 0; wrk, redis-server and the Convex/JWKS stand-ins
# to CPU 1. Prints req/s, p50, p99 and keybust's peak RSS per path, and fails
# if any answer has another status than the path's own.
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

cargo build --release --locked -q -p keybust-host --bin keybust --example bench-backends

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

RUST_LOG=${BENCH_RUST_LOG:-info} REDIS_URL="redis://127.0.0.1:$redis_port" \
  KEYBUST_LISTEN=127.0.0.1:0 KEYBUST_ADMIN_LISTEN=127.0.0.1:0 KEYBUST_CACHE_DIR="$work/cache" \
  taskset -c 0 target/release/keybust serve >"$work/keybust.out" 2>"$work/keybust.err" &
keybust_pid=$!
pids+=($keybust_pid)
wait_for "$work/keybust.out" "^listening on"
url="$(sed -n 's/^listening on //p' "$work/keybust.out")/api/invalidate-user-api-key-cache"

declare -A expected=([full]=200 [401]=401 [422]=422 [preflight]=204)
failed=0
printf '%-10s %10s %10s %10s  %s\n' path "req/s" "p50" "p99" "statuses"
for path in full 401 422 preflight; do
  out=$(BENCH_PATH=$path taskset -c "$load_cpu" wrk -t1 -c"$connections" -d"$duration" --latency -s bench/request.lua "$url")
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  statuses=$(sed -n 's/^STATUSES //p' <<<"$out")
  p50=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out")
  p99=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$out")
  awk -v path="$path" -v rps="$rps" -v p50="$p50" -v p99="$p99" -v st="$statuses" \
    'BEGIN { printf "%-10s %10.0f %8.2fms %8.2fms  %s\n", path, rps, p50 / 1000, p99 / 1000, st }'
  want="${expected[$path]}"
  if [ -z "$statuses" ] || grep -qv "^${want}=" <<<"$(tr ' ' '\n' <<<"$statuses")"; then
    echo "bench/run.sh: $path answered other statuses than $want: $statuses" >&2
    failed=1
  fi
  if grep -q "Socket errors" <<<"$out"; then
    echo "bench/run.sh: $path: $(grep 'Socket errors' <<<"$out")" >&2
    failed=1
  fi
done
rss_kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$keybust_pid/status")
echo "keybust peak RSS: $(( rss_kib / 1024 )) MiB (connections: $connections)"
if [ "$smoke" = 1 ]; then echo "smoke run: status codes checked, timings not meaningful"; fi
exit "$failed"
