#!/usr/bin/env bash
# keybust under load, four request paths, side by side in one run:
#   full       valid token, Convex says the caller owns the key, Redis DEL runs
#   401        no token
#   422        valid token, bad keyHash
#   preflight  CORS OPTIONS from an allowed origin
# keybust is pinned to CPU 0; wrk, redis-server and the Convex/JWKS stand-ins
# to CPU 1. Then the same policy compiled natively (bench/native.rs), with the
# same host capabilities, is driven the same way, and `wasmtime serve` with a
# hello-world component (bench/hello) as the baseline for the preflight path.
# Prints req/s, p50, p99, keybust/native, keybust-preflight/wasmtime-serve and
# peak RSS, and fails if any answer has another status than the path's own.
# Tools: bench/setup.sh (wrk, redis-server, wasmtime-cli 48 on first use).
#
# Usage: bench/run.sh [--smoke]
#   --smoke   a few seconds, few connections: proves the harness and the status
#             codes, measures nothing (part of scripts/test.sh); skips
#             wasmtime serve, so it needs no wasmtime-cli build
# Knobs: BENCH_DURATION (10s), BENCH_CONNECTIONS (64), BENCH_PEAK_CONNECTIONS
#        (256, the full path once more for peak RSS), BENCH_RUST_LOG (info)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
if [ "${1:-}" = "--smoke" ]; then smoke=1; fi
duration=${BENCH_DURATION:-10s}
connections=${BENCH_CONNECTIONS:-64}
if [ "$smoke" = 1 ]; then duration=2s; connections=4; fi

if [ "$smoke" = 1 ]; then
  bench/setup.sh --without-wasmtime
else
  wasmtime=$(bench/setup.sh | tail -n 1)
  cargo build --release --locked -q -p keybust-bench-hello --target wasm32-wasip2
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

declare -A expected=([full]=200 [401]=401 [422]=422 [preflight]=204 [hello]=200)
declare -A RPS P50 P99 STATUSES RSS
failed=0
peak_connections=${BENCH_PEAK_CONNECTIONS:-256}
if [ "$smoke" = 1 ]; then peak_connections=8; fi

# drive NAME PATH CONNECTIONS URL: one wrk run of one request shape; records
# req/s, p50 and p99 under NAME:PATH, and fails the run on any other status.
drive() {
  local name=$1 path=$2 conns=$3 url=$4 shape=$2
  if [ "$path" = hello ]; then shape=preflight; fi
  local out
  out=$(BENCH_PATH=$shape taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"$duration" --latency -s bench/request.lua "$url")
  local key="$name:$path"
  if [ "$conns" != "$connections" ]; then key="$key@$conns"; fi
  RPS[$key]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  STATUSES[$key]=$(sed -n 's/^STATUSES //p' <<<"$out")
  P50[$key]=$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out")
  P99[$key]=$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$out")
  local want="${expected[$path]}"
  local statuses="${STATUSES[$key]}"
  if [ -z "$statuses" ] || tr ' ' '\n' <<<"$statuses" | grep -qv "^${want}="; then
    echo "bench/run.sh: $key answered other statuses than $want: $statuses" >&2
    failed=1
  fi
  if grep -q "Socket errors" <<<"$out"; then
    echo "bench/run.sh: $key: $(grep 'Socket errors' <<<"$out")" >&2
    failed=1
  fi
}

# stop NAME PID: records the process's peak RSS (MiB) and stops it.
stop() {
  RSS[$1]=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/$2/status")
  kill "$2"
  wait "$2" 2>/dev/null || true
}

# measure NAME COMMAND...: serve with COMMAND pinned to CPU 0, drive every
# path, then the full path once more at the peak connection count.
measure() {
  local name=$1
  shift
  RUST_LOG=${BENCH_RUST_LOG:-info} REDIS_URL="redis://127.0.0.1:$redis_port" \
    KEYBUST_LISTEN=127.0.0.1:0 KEYBUST_ADMIN_LISTEN=127.0.0.1:0 KEYBUST_CACHE_DIR="$work/cache" \
    taskset -c 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  local pid=$!
  pids+=("$pid")
  wait_for "$work/$name.out" "^listening on"
  local url
  url="$(sed -n 's/^listening on //p' "$work/$name.out")/api/invalidate-user-api-key-cache"
  for path in full 401 422 preflight; do
    drive "$name" "$path" "$connections" "$url"
  done
  drive "$name" full "$peak_connections" "$url"
  stop "$name" "$pid"
}

measure keybust target/release/keybust serve
measure native target/release/examples/bench-native

# The baseline for the preflight path: `wasmtime serve` (default settings)
# answering every request from a hello-world wasi:http component.
if [ "$smoke" = 0 ]; then
  port=$(( 20000 + RANDOM % 20000 ))
  taskset -c 0 "$wasmtime" serve -Scli --addr "127.0.0.1:$port" \
    target/wasm32-wasip2/release/keybust_bench_hello.wasm >"$work/wasmtime.out" 2>"$work/wasmtime.err" &
  pid=$!
  pids+=("$pid")
  wait_for "$work/wasmtime.err" "Serving HTTP on"
  drive wasmtime hello "$connections" "http://127.0.0.1:$port/"
  stop wasmtime "$pid"
fi

ms() { awk -v us="$1" 'BEGIN { printf "%.2fms", us / 1000 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }

echo "connections: $connections, duration: $duration per run; server on CPU 0, load on CPU $load_cpu"
printf '%-10s %12s %10s %10s %12s %10s  %s\n' path "keybust r/s" p50 p99 "native r/s" "k/native" statuses
for path in full 401 422 preflight; do
  printf '%-10s %12.0f %10s %10s %12.0f %10s  %s\n' "$path" "${RPS[keybust:$path]}" \
    "$(ms "${P50[keybust:$path]}")" "$(ms "${P99[keybust:$path]}")" "${RPS[native:$path]}" \
    "$(ratio "${RPS[keybust:$path]}" "${RPS[native:$path]}")" "${STATUSES[keybust:$path]}"
done
key="full@$peak_connections"
printf '%-10s %12.0f %10s %10s %12.0f %10s  %s\n' "$key" "${RPS[keybust:$key]}" \
  "$(ms "${P50[keybust:$key]}")" "$(ms "${P99[keybust:$key]}")" "${RPS[native:$key]}" \
  "$(ratio "${RPS[keybust:$key]}" "${RPS[native:$key]}")" "${STATUSES[keybust:$key]}"
if [ "$smoke" = 0 ]; then
  echo "wasmtime serve hello: $(printf '%.0f' "${RPS[wasmtime:hello]}") r/s, p99 $(ms "${P99[wasmtime:hello]}");" \
    "keybust preflight / wasmtime serve hello: $(ratio "${RPS[keybust:preflight]}" "${RPS[wasmtime:hello]}")"
fi
echo "peak RSS (whole run, up to $peak_connections connections): keybust ${RSS[keybust]} MiB, native ${RSS[native]} MiB${RSS[wasmtime]:+, wasmtime serve ${RSS[wasmtime]} MiB}"
if [ "$smoke" = 1 ]; then echo "smoke run: status codes checked, timings not meaningful"; fi
exit "$failed"
