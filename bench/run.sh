#!/usr/bin/env bash
# keybust under load, five request paths, side by side in one run:
#   full       valid token, Convex says the caller owns the key, Redis DEL runs
#   401        no token
#   422        valid token, bad keyHash
#   preflight  CORS OPTIONS from an allowed origin
#   404        another path, answered by the host alone: the HTTP layer's cost
#              (routing, access log, metrics) without the guest
# The servers are pinned to CPU 0; wrk, redis-server and the Convex/JWKS
# stand-ins to CPU 1. Beside keybust (a fresh instance per request, its
# default) run keybust with --instance-reuse, the same policy compiled
# natively (bench/native.rs) with the same host capabilities, and `wasmtime
# serve` with a hello-world component (bench/hello), the baseline for the
# preflight path, with its defaults and with instance reuse. The guest's
# wasi:http 0.3 build (`p3` feature) runs beside its 0.2 build, with and
# without reuse, on every path. On the full path, keybust with a candidate
# in its shadow stage (another build of the same policy, shadowing 10% of
# requests) runs beside keybust without one: what shadow replay costs.
# Each round drives them in turn, path by path.
# Prints req/s, p50, p99, keybust/native, keybust-preflight/wasmtime-serve and
# peak RSS, and fails if any answer has another status than the path's own.
# On the connection curve a 503 is keybust shedding load past its admission
# bound (by design): counted and shown, not a failure.
# Tools: bench/setup.sh (wrk, redis-server, wasmtime-cli 48 on first use).
#
# Usage: bench/run.sh [--smoke]
#   --smoke   a few seconds, few connections: proves the harness and the status
#             codes, measures nothing (part of scripts/test.sh, on the test
#             command's build); skips
#             wasmtime serve, so it needs no wasmtime-cli build
# Knobs: BENCH_DURATION (5s per run), BENCH_ROUNDS (3), BENCH_CONNECTIONS (64),
#        BENCH_CURVE ("16 64 256 1024": the full path once more at each of
#        these connection counts, side by side, printed as a curve; peak RSS
#        is read after the last),
#        BENCH_REUSE (128: --instance-reuse for "reuse", and wasmtime serve's
#        --max-instance-reuse-count for its reuse baseline),
#        BENCH_RUST_LOG (info: keybust writes its access log, as in production)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=0
case "${1:-}" in
  "") ;;
  --smoke) smoke=1 ;;
  *) echo "usage: bench/run.sh [--smoke]" >&2; exit 2 ;;
esac
duration=${BENCH_DURATION:-5s}
connections=${BENCH_CONNECTIONS:-64}
read -r -a curve <<< "${BENCH_CURVE:-16 64 256 1024}"
rounds=${BENCH_ROUNDS:-3}
reuse=${BENCH_REUSE:-128}
if [ "$smoke" = 1 ]; then duration=2s; connections=4; curve=(2 8); rounds=1; fi
if [ "${#curve[@]}" -eq 0 ]; then echo "bench/run.sh: BENCH_CURVE is empty" >&2; exit 2; fi
for count in "${curve[@]}"; do
  case "$count" in ''|*[!0-9]*) echo "bench/run.sh: BENCH_CURVE takes connection counts, not '$count'" >&2; exit 2 ;; esac
done
peak_connections="${curve[-1]}"
# wrk holds a descriptor per connection: lift the soft limit to the hard one
# (keybust and the native server raise their own).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$smoke" = 1 ]; then
  bench/setup.sh --without-wasmtime
else
  wasmtime=$(bench/setup.sh | tail -n 1)
  cargo build --release --locked -q -p keybust-bench-hello --target wasm32-wasip2
fi

if [ "$smoke" = 1 ]; then
  # With the test command's features (the whole workspace, dev-dependencies
  # on), so that what scripts/test.sh compiled before this is reused and
  # only the bench's examples are built.
  cargo build --release --workspace --locked -q --bin keybust --example bench-backends --example bench-native
else
  cargo build --release --locked -q -p keybust-host --bin keybust --example bench-backends --example bench-native
fi
bin=target/release
# The guest's wasi:http 0.3 build, in a directory of its own (the 0.2 build
# embedded in keybust has the same file name).
cargo build --release --locked -q -p keybust-guest --features p3 --target wasm32-wasip2 --target-dir target/guest-p3
p3_component=target/guest-p3/wasm32-wasip2/release/keybust_guest.wasm

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
  # A server's reason for stopping is on its stderr.
  if [ "${1%.out}" != "$1" ]; then cat "${1%.out}.err" >&2 || true; fi
  exit 1
}

redis_port=$(( 20000 + RANDOM % 20000 ))
taskset -c "$load_cpu" redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_for "$work/redis.log" "Ready to accept connections"

taskset -c "$load_cpu" "$bin/examples/bench-backends" >"$work/backends.env" 2>"$work/backends.err" &
pids+=($!)
wait_for "$work/backends.env" "READY=1"
set -a
# shellcheck disable=SC1091
. "$work/backends.env"
set +a

declare -A expected=([full]=200 [401]=401 [422]=422 [preflight]=204 [404]=404 [hello]=200)
declare -A URL PID RPS P50 P99 STATUSES RSS IPI SHED RSSAT GOOD
failed=0

# start NAME COMMAND...: runs COMMAND
# pinned to CPU 0 (idle until driven).
start() {
  local name=$1
  shift
  RUST_LOG=${BENCH_RUST_LOG:-info} REDIS_URL="redis://127.0.0.1:$redis_port" \
    KEYBUST_LISTEN=127.0.0.1:0 KEYBUST_ADMIN_LISTEN=127.0.0.1:0 KEYBUST_COMPONENT_CACHE_DIR="$work/cache-$name" KEYBUST_STATE_DIR="$work/state-$name" \
    taskset -c 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
  PID[$name]=$!
  pids+=("$!")
}

# drive NAME PATH CONNECTIONS [curve]: one wrk run of one request shape
# against NAME; appends req/s, p50 and p99 (µs) to NAME:PATH, or to
# NAME:PATH@CONNECTIONS for another count or a point of the curve, and fails
# the run on any status other than the path's own (on the curve, 503s are
# load shed: their share is kept in SHED, and timeouts are reported).
drive() {
  local name=$1 path=$2 conns=$3 shape=$2 point=${4:-}
  if [ "$path" = hello ]; then shape=preflight; fi
  local out calls_before calls_after
  calls_before=$(function_calls)
  out=$(BENCH_PATH=$shape taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"$duration" --latency -s bench/request.lua "${URL[$name]}")
  calls_after=$(function_calls)
  local key="$name:$path"
  if [ -n "$point" ] || [ "$conns" != "$connections" ]; then key="$key@$conns"; fi
  local statuses
  statuses=$(sed -n 's/^STATUSES //p' <<<"$out")
  IPI[$key]+="$(tr ' ' '\n' <<<"$statuses" | awk -F= -v d=$((calls_after - calls_before)) '{ n += $2 } END { printf "%.2f", (n ? d / n : 0) }') "
  RPS[$key]+="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out") "
  P50[$key]+="$(sed -n 's/.*p50_us=\([0-9]*\).*/\1/p' <<<"$out") "
  P99[$key]+="$(sed -n 's/.*p99_us=\([0-9]*\).*/\1/p' <<<"$out") "
  STATUSES[$key]=$statuses
  local want="${expected[$path]}"
  local allowed="^${want}="
  if [ -n "$point" ]; then allowed="^(${want}|503)="; fi
  if [ -z "$statuses" ] || tr ' ' '\n' <<<"$statuses" | grep -Eqv "$allowed"; then
    echo "bench/run.sh: $key answered other statuses than $want: ${statuses:-none; wrk said:}" >&2
    if [ -z "$statuses" ]; then sed 's/^/  /' <<<"$out" >&2; fi
    failed=1
  fi
  SHED[$key]=$(tr ' ' '\n' <<<"$statuses" | awk -F= '{ n += $2; if ($1 == 503) shed += $2 } END { printf "%.1f%%", (n ? 100 * shed / n : 0) }')
  # Goodput: the answers of the path's own status, per second.
  GOOD[$key]+="$(tr ' ' '\n' <<<"$statuses" | awk -F= -v rps="$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")" -v want="$want" \
    '{ n += $2; if ($1 == want) ok += $2 } END { printf "%.0f", (n ? rps * ok / n : 0) }') "
  if grep -q "Socket errors" <<<"$out"; then
    echo "bench/run.sh: $key: $(grep 'Socket errors' <<<"$out")" >&2
    if [ -z "$point" ] || grep -Eq 'connect [1-9]|read [1-9]|write [1-9]' <<<"$out"; then failed=1; fi
  fi
}

# Function-call interrupts taken by the load CPU so far: on Linux these are
# mostly cross-CPU wakeups, here of wrk by the server's responses. Kernels
# that do not count them under "CAL:" (not x86) read 0 throughout.
function_calls() { awk -v col=$((load_cpu + 2)) '$1 == "CAL:" { n = $col } END { print n + 0 }' /proc/interrupts; }

median() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { print (NR ? v[int((NR + 1) / 2)] : 0) }'; }
ms() { awk -v us="$(median "$1")" 'BEGIN { printf "%.2fms", us / 1000 }'; }
ratio() { awk -v a="$(median "$1")" -v b="$(median "$2")" 'BEGIN { printf "%.2fx", (b > 0 ? a / b : 0) }'; }
rps() { printf '%.0f' "$(median "$1")"; }

start keybust "$bin/keybust" serve
start reuse "$bin/keybust" serve --instance-reuse "$reuse"
start p3 "$bin/keybust" serve --component "$p3_component"
start p3-reuse "$bin/keybust" serve --component "$p3_component" --instance-reuse "$reuse"
start native "$bin/examples/bench-native"
start shadow "$bin/keybust" serve --admin-token bench-admin-token --shadow on --shadow-share 10% \
  --shadow-requests 1000000000 --shadow-window 24h
for name in keybust reuse p3 p3-reuse native shadow; do
  wait_for "$work/$name.out" "^listening on"
  URL[$name]="$(sed -n 's/^listening on //p' "$work/$name.out")/api/invalidate-user-api-key-cache"
done
# The shadow server's candidate: the embedded component under another
# digest (one more custom section), so the two agree on every request.
guest_wasm="$bin/keybust-guest/wasm32-wasip2/release/keybust_guest.wasm"
cp "$guest_wasm" "$work/candidate.wasm"
printf '\x00\x1c\x0fkeybust-variantbench-shadow' >>"$work/candidate.wasm"
admin_url="$(sed -n 's/^admin listening on //p' "$work/shadow.out")"
# GET or PUT on the shadow server's admin API; prints the status and the body.
admin() { # METHOD PATH [FILE]
  python3 - "$1" "$admin_url$2" "${3:-}" <<'PY'
import sys, urllib.request, urllib.error
method, url, path = sys.argv[1:4]
data = open(path, "rb").read() if path else None
request = urllib.request.Request(url, data=data, method=method,
    headers={"Authorization": "Bearer bench-admin-token"})
try:
    with urllib.request.urlopen(request, timeout=60) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as answer:
    print(answer.code, answer.read().decode())
PY
}
put=$(admin PUT /admin/component "$work/candidate.wasm")
if [ "${put%% *}" != 202 ]; then
  echo "bench/run.sh: the shadow server did not take the candidate: $put" >&2
  exit 1
fi
# The baseline for the preflight path: `wasmtime serve` (its default
# settings) answering every request from a hello-world wasi:http component.
servers=(keybust reuse p3 p3-reuse native shadow)
if [ "$smoke" = 0 ]; then
  port=$(( 20000 + RANDOM % 20000 ))
  start wasmtime "$wasmtime" serve -Scli --addr "127.0.0.1:$port" \
    target/wasm32-wasip2/release/keybust_bench_hello.wasm
  wait_for "$work/wasmtime.err" "Serving HTTP on"
  URL[wasmtime]="http://127.0.0.1:$port/"
  port=$(( 20000 + RANDOM % 20000 ))
  start wasmtime-reuse "$wasmtime" serve -Scli --addr "127.0.0.1:$port" \
    --max-instance-reuse-count "$reuse" target/wasm32-wasip2/release/keybust_bench_hello.wasm
  wait_for "$work/wasmtime-reuse.err" "Serving HTTP on"
  URL[wasmtime-reuse]="http://127.0.0.1:$port/"
  servers+=(wasmtime wasmtime-reuse)
fi

# Side by side: each round drives every server in turn on the same path, so
# the machine's drift hits them alike; medians over the rounds are reported.
for path in full 401 422 preflight 404; do
  for _ in $(seq 1 "$rounds"); do
    drive keybust "$path" "$connections"
    drive reuse "$path" "$connections"
    drive p3 "$path" "$connections"
    drive p3-reuse "$path" "$connections"
    drive native "$path" "$connections"
    if [ "$path" = full ]; then drive shadow full "$connections"; fi
    if [ "$path" = preflight ] && [ "$smoke" = 0 ]; then
      drive wasmtime hello "$connections"
      drive wasmtime-reuse hello "$connections"
    fi
  done
done
# The connection curve, full path; peak RSS so far is read after each point.
for count in "${curve[@]}"; do
  for name in keybust reuse native; do
    drive "$name" full "$count" curve
    RSSAT[$name@$count]=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/${PID[$name]}/status" 2>/dev/null || echo "?")
  done
done
for name in "${servers[@]}"; do
  if ! kill -0 "${PID[$name]}" 2>/dev/null; then
    echo "bench/run.sh: $name exited during the run; its stderr ends with:" >&2
    tail -n 20 "$work/$name.err" >&2
    exit 1
  fi
  RSS[$name]=$(awk '/^VmHWM:/ {print int($2 / 1024)}' "/proc/${PID[$name]}/status")
done

echo "connections: $connections; $rounds round(s) of $duration per server and path, medians shown; server on CPU 0, load on CPU $load_cpu"
echo "keybust: a fresh instance per request (default); reuse: --instance-reuse $reuse"
printf '%-10s %12s %9s %9s %10s %9s %11s %9s %9s  %s\n' path "keybust r/s" p50 p99 "reuse r/s" "p99" "native r/s" "k/native" "r/native" "statuses (keybust, last round)"
row() { # key label
  printf '%-10s %12s %9s %9s %10s %9s %11s %9s %9s  %s\n' "$2" "$(rps "${RPS[keybust:$1]}")" \
    "$(ms "${P50[keybust:$1]}")" "$(ms "${P99[keybust:$1]}")" "$(rps "${RPS[reuse:$1]}")" \
    "$(ms "${P99[reuse:$1]}")" "$(rps "${RPS[native:$1]}")" \
    "$(ratio "${RPS[keybust:$1]}" "${RPS[native:$1]}")" "$(ratio "${RPS[reuse:$1]}" "${RPS[native:$1]}")" \
    "${STATUSES[keybust:$1]}"
}
for path in full 401 422 preflight 404; do row "$path" "$path"; done
echo "the wasi:http 0.3 build (p3: fresh instances; p3-reuse: --instance-reuse $reuse), against the 0.2 build above:"
printf '%-10s %10s %9s %9s %11s %9s %9s %9s  %s\n' path "p3 r/s" p99 "p3/k" "p3-reuse r/s" p99 "p3r/r" "p3/native" "statuses (p3, last round)"
for path in full 401 422 preflight 404; do
  printf '%-10s %10s %9s %9s %11s %9s %9s %9s  %s\n' "$path" "$(rps "${RPS[p3:$path]}")" \
    "$(ms "${P99[p3:$path]}")" "$(ratio "${RPS[p3:$path]}" "${RPS[keybust:$path]}")" \
    "$(rps "${RPS[p3-reuse:$path]}")" "$(ms "${P99[p3-reuse:$path]}")" \
    "$(ratio "${RPS[p3-reuse:$path]}" "${RPS[reuse:$path]}")" \
    "$(ratio "${RPS[p3:$path]}" "${RPS[native:$path]}")" "${STATUSES[p3:$path]}"
done
echo "full path by connections, 200s per second (one run each; vs: against its own figure at the first count; 503: share of answers shed; MiB: peak RSS so far):"
printf '%-6s %8s %8s %8s %6s %5s %4s | %8s %8s %6s %5s %4s | %8s %8s %5s %4s\n' conns keybust p99 k/native vs 503 MiB reuse p99 vs 503 MiB native p99 503 MiB
for count in "${curve[@]}"; do
  key="full@$count"
  printf '%-6s %8s %8s %8s %6s %5s %4s | %8s %8s %6s %5s %4s | %8s %8s %5s %4s\n' "$count" \
    "$(rps "${GOOD[keybust:$key]}")" "$(ms "${P99[keybust:$key]}")" \
    "$(ratio "${GOOD[keybust:$key]}" "${GOOD[native:$key]}")" \
    "$(ratio "${GOOD[keybust:$key]}" "${GOOD[keybust:full@${curve[0]}]}")" "${SHED[keybust:$key]}" "${RSSAT[keybust@$count]}" \
    "$(rps "${GOOD[reuse:$key]}")" "$(ms "${P99[reuse:$key]}")" \
    "$(ratio "${GOOD[reuse:$key]}" "${GOOD[reuse:full@${curve[0]}]}")" "${SHED[reuse:$key]}" "${RSSAT[reuse@$count]}" \
    "$(rps "${GOOD[native:$key]}")" "$(ms "${P99[native:$key]}")" "${SHED[native:$key]}" "${RSSAT[native@$count]}"
done
echo "keybust full-path req/s per round: ${RPS[keybust:full]}; native: ${RPS[native:full]}"
# The candidate must still be shadowing (not refused), and have compared.
rollout=$(admin GET /admin/rollout)
agreed=$(sed -n 's/.*"agreed":\([0-9]*\).*/\1/p' <<<"$rollout")
if [ -z "$agreed" ] || [ "$agreed" -eq 0 ]; then
  echo "bench/run.sh: the shadow server's candidate compared nothing, or was refused: $rollout" >&2
  failed=1
fi
shed=$(sed -n 's/.*"shed":\([0-9]*\).*/\1/p' <<<"$rollout")
echo "full path with a candidate shadowing 10%: $(rps "${RPS[shadow:full]}") r/s, p99 $(ms "${P99[shadow:full]}");" \
  "shadow / none: $(ratio "${RPS[shadow:full]}" "${RPS[keybust:full]}") (requests compared: ${agreed:-0}, shed: ${shed:-0})"
if [ "$smoke" = 0 ]; then
  echo "wasmtime serve hello: $(rps "${RPS[wasmtime:hello]}") r/s, p99 $(ms "${P99[wasmtime:hello]}");" \
    "keybust preflight / wasmtime serve hello: $(ratio "${RPS[keybust:preflight]}" "${RPS[wasmtime:hello]}")"
  echo "wasmtime serve hello, --max-instance-reuse-count $reuse: $(rps "${RPS[wasmtime-reuse:hello]}") r/s, p99 $(ms "${P99[wasmtime-reuse:hello]}");" \
    "keybust preflight with reuse / it: $(ratio "${RPS[reuse:preflight]}" "${RPS[wasmtime-reuse:hello]}")"
fi
echo "wakeups of the load CPU per request (function-call IPIs), preflight: keybust $(median "${IPI[keybust:preflight]}"), native $(median "${IPI[native:preflight]}")${IPI[wasmtime:hello]:+, wasmtime serve $(median "${IPI[wasmtime:hello]}")}; full: keybust $(median "${IPI[keybust:full]}"), native $(median "${IPI[native:full]}")"
echo "peak RSS (whole run, up to $peak_connections connections): keybust ${RSS[keybust]} MiB, reuse ${RSS[reuse]} MiB, p3 ${RSS[p3]} MiB, p3-reuse ${RSS[p3-reuse]} MiB (these two at $connections connections only), native ${RSS[native]} MiB${RSS[wasmtime]:+, wasmtime serve ${RSS[wasmtime]} MiB}"
if [ "$smoke" = 1 ]; then echo "smoke run: status codes checked, timings not meaningful"; fi
exit "$failed"
