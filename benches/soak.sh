#!/usr/bin/env bash
# Soak: mixed workloads on every local transport at once for DURATION (default 10m), reporting
# throughput, errors and the server's RSS over time. RSS must be flat after the warm-up.
#
#   bash benches/soak.sh                 # 10 minutes
#   DURATION=60 INTERVAL=10 bash benches/soak.sh
#
# The server (release build, 1 core, on CPU 0 when there are 2+) serves tcp, unix and the HTTP
# gateway; the load runs as several `percore bench` processes (CPU 1), each in a loop of
# INTERVAL-second runs, so every interval reports: pipelined Arith.Mul on tcp, Echo.Echo of 64 KiB
# gzip-free payloads on unix, Hello.Say protobuf with 200 connections that come and go, and
# curl loops against the gateway and JSON-RPC. At the end: RSS at start (after warm-up), middle
# and end, and whether any workload had errors. Exits 1 on errors or RSS growth over 20%.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-600}
INTERVAL=${INTERVAL:-20}
PORT=${PORT:-19411}
SOCK=${SOCK:-/tmp/percore-soak.sock}
BIN=${BIN:-target/release/percore}
[ -x "$BIN" ] || cargo build --release --locked
out=$(mktemp -d)
SRV_CPU=0; GEN_CPU=0
[ "$(nproc)" -ge 2 ] && GEN_CPU=1
taskset -c "$SRV_CPU" "$BIN" serve --cores 1 --listen "tcp@127.0.0.1:$PORT" --listen "unix@$SOCK" \
    --admin-listen "" >"$out/server.log" 2>&1 &
srv=$!
cleanup() {
    kill "$srv" 2>/dev/null || true
    jobs -p | xargs -r kill 2>/dev/null || true
    rm -rf "$out"
}
trap cleanup EXIT
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$srv/status"; }

load() { # name, then percore bench arguments; loops INTERVAL-second runs until the end
    local name=$1; shift
    local end=$((SECONDS + DURATION)) i=0
    while [ $SECONDS -lt $end ]; do
        taskset -c "$GEN_CPU" "$BIN" bench --quiet --cores "$GEN_CPU" -d "${INTERVAL}s" -o "$out/$name.$i.json" "$@" \
            >/dev/null 2>&1 || echo "$name run $i failed" >>"$out/failures"
        i=$((i + 1))
    done
}
load tcp-arith-x32 -s "tcp@127.0.0.1:$PORT" -c 256 --connections 8 --timeout 0 &
load unix-echo-64k -s "unix@$SOCK" -c 8 --call Echo.Echo --payload-size 65536 &
load tcp-hello-c200 -s "tcp@127.0.0.1:$PORT" -c 200 --call Hello.Say &
(
    end=$((SECONDS + DURATION))
    while [ $SECONDS -lt $end ]; do
        curl -s -o /dev/null -w '%{http_code}\n' -X POST "http://127.0.0.1:$PORT/Arith" \
            -H 'X-RPCX-ServiceMethod: Mul' -H 'X-RPCX-SerializeType: 1' -d '{"A":6,"B":7}' >>"$out/gateway"
        curl -s -o /dev/null -w '%{http_code}\n' "http://127.0.0.1:$PORT/" -H 'X-JSONRPC-2.0: true' \
            -d '[{"jsonrpc":"2.0","method":"Arith.Mul","params":{"A":2,"B":3},"id":1}]' >>"$out/gateway"
    done
) &
echo "soak: ${DURATION}s, RSS of the server (KiB) every ${INTERVAL}s"
samples=()
end=$((SECONDS + DURATION))
while [ $SECONDS -lt $end ]; do
    sleep "$INTERVAL"
    r=$(rss); samples+=("$r")
    printf '%5ds  rss %8s KiB\n' "$SECONDS" "$r"
done
wait $(jobs -p | grep -v "^$srv$") 2>/dev/null || true
status=0
python3 - "$out" "${samples[@]}" <<'PY' || status=1
import glob, json, os, sys
out, rss = sys.argv[1], [int(x) for x in sys.argv[2:]]
fail = 0
for name in sorted({os.path.basename(p).split(".")[0] for p in glob.glob(f"{out}/*.json")}):
    runs = [json.load(open(p)) for p in glob.glob(f"{out}/{name}.*.json")]
    ok = sum(r.get("ok", 0) for r in runs)
    err = sum(sum(r.get("errors", {}).values()) if isinstance(r.get("errors"), dict) else r.get("errors", 0) for r in runs)
    secs = sum(r.get("elapsed_s", 0) or 0 for r in runs) or 1
    print(f"{name:16} runs {len(runs):3}  ok {ok:10}  errors {err:6}  calls/s {ok/secs:10.0f}")
    fail |= err > 0
codes = open(f"{out}/gateway").read().split() if os.path.exists(f"{out}/gateway") else []
bad = [c for c in codes if c != "200"]
print(f"{'gateway+jsonrpc':16} requests {len(codes)}  non-200 {len(bad)}")
fail |= bool(bad) or os.path.exists(f"{out}/failures")
if len(rss) >= 3:
    start, mid, end = rss[1], rss[len(rss) // 2], rss[-1]
    print(f"RSS KiB: start {start}  middle {mid}  end {end}  ({(end - start) * 100 / start:+.1f}%)")
    fail |= end > start * 1.2
sys.exit(1 if fail else 0)
PY
if [ "$status" = 0 ]; then echo "soak: OK"; else echo "soak: FAILED"; fi
exit "$status"
