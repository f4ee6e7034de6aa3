#!/usr/bin/env bash
# The standard percore load runs: percore on CPU 0, the load generator on CPU 1.
#
#   benches/load.sh                       # ~5 s per run, 1 s warmup, about a minute in all
#   DURATION=30s WARMUP=5s benches/load.sh
#
# It builds the release binary, starts `percore serve --cores 1` pinned with `taskset -c 0`,
# and runs `percore bench` pinned with `taskset -c 1` (and `--cores 1`, so the generator's own
# executor sits on that CPU), on loopback:
#
#   1. Arith.Mul  msgpack  closed loop, 64 connections x 1 call in flight
#   2. Arith.Mul  msgpack  closed loop, 64 connections x 32 calls in flight
#   3. Hello.Say  protobuf closed loop, concurrency 100 (100 connections, rpcx-benchmark style)
#   4. Echo.Echo  raw 4 KiB closed loop, 64 connections x 1
#   5. Arith.Mul  msgpack  constant rate at half the best rate of runs 1-2 (64 connections,
#                          2048 workers), latency measured from each call's scheduled time
#
# and ends with one summary table (latencies in microseconds). Each run's full report, JSON
# and SVG plot are left in $OUT (default target/load). Needs 2 CPUs and taskset (util-linux).
# Environment: DURATION, WARMUP, PORT (default 18972), OUT.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
PORT=${PORT:-18972}
OUT=${OUT:-target/load}
ADDR="tcp@127.0.0.1:$PORT"
BIN=target/release/percore

cargo build --release --locked --quiet
mkdir -p "$OUT"

taskset -c 0 "$BIN" serve --cores 1 --listen "$ADDR" 2>"$OUT/serve.log" &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    "$BIN" call "$ADDR" Arith.Mul '{"A":1,"B":1}' --timeout 1s >/dev/null 2>&1 && break
    sleep 0.1
done

SUMMARY="$OUT/summary.txt"
printf '%-34s %12s %10s %10s %10s %10s %10s %8s\n' run "TPS" p50 p99 p99.9 p99.99 max errors >"$SUMMARY"

# bench NAME ARGS...: one run; prints its report and adds a line to the summary.
bench() {
    local name=$1
    shift
    echo "== $name"
    taskset -c 1 "$BIN" bench -s "$ADDR" --cores 1 -d "$DURATION" --warmup "$WARMUP" --quiet \
        -o "$OUT/$name.json" --plot "$OUT/$name.svg" "$@" | tee "$OUT/$name.txt" || true
    awk -v name="$name" '
        /^sent / { errors = $6 }
        /^throughput \(TPS\):/ { tps = $3 }
        /^latency \(us\):/ { p50 = $8; p99 = $12; p999 = $14; p9999 = $16; max = $18 }
        END { printf "%-34s %12s %10s %10s %10s %10s %10s %8s\n", name, tps, p50, p99, p999, p9999, max, errors }
    ' "$OUT/$name.txt" >>"$SUMMARY"
}

tps() { awk '/^throughput \(TPS\):/ { print $3 }' "$OUT/$1.txt"; }

bench arith-msgpack-64x1 --call Arith.Mul -c 64 --connections 64
bench arith-msgpack-64x32 --call Arith.Mul -c 2048 --connections 64
bench hello-protobuf-c100 --call Hello.Say -c 100 --connections 100
bench echo-4k-64x1 --call Echo.Echo --payload-size 4096 -c 64 --connections 64
BEST=$(printf '%s\n%s\n' "$(tps arith-msgpack-64x1)" "$(tps arith-msgpack-64x32)" | sort -n | tail -1)
RATE=$((BEST / 2))
bench "arith-rate-$RATE" --call Arith.Mul -c 2048 --connections 64 -r "$RATE"

echo
echo "Summary ($(nproc) CPUs; server on CPU 0, generator on CPU 1; $DURATION per run after $WARMUP warmup; latency in us)"
cat "$SUMMARY"
