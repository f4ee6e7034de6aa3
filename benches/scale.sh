#!/usr/bin/env bash
# Scaling across cores: percore and the null server (and, given their commands, other rpcx
# servers) on 1, 2, 4, ... server CPUs, `percore bench` on the CPUs left, for a pipelined and a
# one-call-in-flight workload, and one table with the ratios.
#
#   bash benches/scale.sh                          # needs >= 4 CPUs; 5 s per run after 1 s warmup
#   SERVER_CPUS="1 2 4 8" DURATION=10s bash benches/scale.sh
#   OTHERS='rpcx-go=/opt/bin/rpcx-arith -addr 127.0.0.1:{port}' bash benches/scale.sh
#   SERVER_CPUS=1 bash benches/scale.sh             # a smoke run on a 2-CPU machine
#   BIN=target/scale-bin/percore NULL_BIN=target/scale-bin/null_server bash benches/scale.sh
#                                                   # binaries built elsewhere: no cargo needed
#
# On a lent many-core machine (the `device` tool: a copy of the tree, no cargo build wanted, at
# most 64 MiB carried), build here and carry stripped binaries:
#   cargo build --release --locked --bin percore --example null_server
#   mkdir -p target/scale-bin && strip -o target/scale-bin/percore target/release/percore &&
#       strip -o target/scale-bin/null_server target/release/examples/null_server
#   then run there, carrying target/scale-bin, with the table written where it comes back:
#   BIN=target/scale-bin/percore NULL_BIN=target/scale-bin/null_server OUT=$OUT bash benches/scale.sh
#
# Each server runs on CPUs 0..N-1 (taskset) with N executors (percore `serve --cores N`, the null
# server's N; another server's command gets {port} and {cpus} filled in and GOMAXPROCS=N), and the
# generator on CPUs N..last (`percore bench --cores N-last`, one executor per CPU).
#
# Workloads, Arith.Mul MsgPack, closed loop, no timeout (so no __ServerTimeout metadata):
#   pipelined   256 connections x 32 calls in flight   (-c 8192 --connections 256)
#   1-in-flight 1024 connections x 1                    (-c 1024 --connections 1024)
# (CONNS_PIPELINED, DEPTH and CONNS_SINGLE change them.) Against the null server and other servers
# replies are not verified (--no-verify): the null server echoes each request.
#
# Columns: calls/s; p50 and p99 latency (us); srv-us, the server's CPU microseconds per call (its
# CPU time over the calls made meanwhile, warmup included); gen%, the generator's CPU in % of its
# CPUs: "GEN-BOUND" when it is >= 90%, i.e. the generator, not the server, set the rate (the
# ratios of such a row say little about the server); vs-null, calls/s over the null server's at
# the same N and workload; vs-1, calls/s over the same server's with 1 CPU.
#
# Every run's report is left in $OUT (default target/scale), with runs.tsv and table.txt.
# Environment: SERVER_CPUS (1 2 4 ... up to half the CPUs), DURATION (5s), WARMUP (1s), PORT
# (19400), OUT, OTHERS ("name=command" entries separated by ';'), BIN and NULL_BIN (percore and
# the null server, built here by cargo when neither is given).
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/lib.sh
source benches/lib.sh
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
PORT=${PORT:-19400}
OUT=${OUT:-target/scale}
CONNS_PIPELINED=${CONNS_PIPELINED:-256}
DEPTH=${DEPTH:-32}
CONNS_SINGLE=${CONNS_SINGLE:-1024}
BIN=${BIN:-}
NULL_BIN=${NULL_BIN:-}

die() {
    echo "scale.sh: $*" >&2
    exit 1
}

command -v taskset >/dev/null || die "taskset (util-linux) is needed"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
TOTAL=$(nproc)
if [[ -z ${SERVER_CPUS:-} ]]; then
    ((TOTAL >= 4)) || die "needs at least 4 CPUs (this machine has $TOTAL): the server and the \
generator each need CPUs of their own at every step. SERVER_CPUS=1 runs one step on 2 CPUs"
    SERVER_CPUS=""
    for ((n = 1; n <= TOTAL / 2; n *= 2)); do SERVER_CPUS+="$n "; done
fi
for n in $SERVER_CPUS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "SERVER_CPUS: '$n' is not a positive whole number"
    ((n < TOTAL)) || die "SERVER_CPUS: $n server CPUs leave none of the $TOTAL to the generator"
done

if [[ -z $BIN && -z $NULL_BIN ]]; then
    echo "== building percore and the null server"
    cargo build --release --locked --quiet --bin percore --example null_server ||
        die "cannot build percore and the null server"
    BIN=target/release/percore
    NULL_BIN=target/release/examples/null_server
fi
[[ -n $BIN && -n $NULL_BIN ]] || die "BIN and NULL_BIN are given together (or neither, to build them)"
[[ -x $BIN ]] || die "BIN: '$BIN' is not an executable"
[[ -x $NULL_BIN ]] || die "NULL_BIN: '$NULL_BIN' is not an executable"
mkdir -p "$OUT"

SERVERS=(percore null)
declare -A OTHER_CMD
if [[ -n ${OTHERS:-} ]]; then
    IFS=';' read -ra entries <<<"$OTHERS"
    for entry in "${entries[@]}"; do
        [[ $entry == *=* ]] || die "OTHERS: '$entry' is not name=command"
        name=${entry%%=*}
        OTHER_CMD[$name]=${entry#*=}
        SERVERS+=("$name")
    done
fi

SERVER_PID=""
stop_server() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap stop_server EXIT
trap 'exit 130' INT TERM

# start SERVER N PORT: starts SERVER on CPUs 0..N-1.
start() {
    local server=$1 n=$2 port=$3 cpus="0-$(($2 - 1))"
    local log="$OUT/$server-$n.log"
    case $server in
    percore) taskset -c "$cpus" "$BIN" serve --cores "$n" --listen "127.0.0.1:$port" >"$log" 2>&1 & ;;
    null) taskset -c "$cpus" "$NULL_BIN" "127.0.0.1:$port" "$n" >"$log" 2>&1 & ;;
    *)
        local cmd=${OTHER_CMD[$server]//\{port\}/$port}
        cmd=${cmd//\{cpus\}/$n}
        GOMAXPROCS=$n taskset -c "$cpus" bash -c "exec $cmd" >"$log" 2>&1 &
        ;;
    esac
    SERVER_PID=$!
    local verify=()
    [[ $server == percore ]] || verify=(--no-verify)
    for _ in $(seq 100); do
        kill -0 "$SERVER_PID" 2>/dev/null || die "$server exited at startup; see $log"
        if timeout 5 "$BIN" bench -s "tcp@127.0.0.1:$port" -n 1 --timeout 1s --quiet "${verify[@]}" \
            >/dev/null 2>&1; then
            return
        fi
        sleep 0.1
    done
    die "$server on $n CPUs did not answer Arith.Mul within 10 s; see $log"
}

BOUND=$(($(seconds "$DURATION") + $(seconds "$WARMUP") + 60))
RUNS_TSV="$OUT/runs.tsv"
printf 'server\tworkload\tcpus\ttps\tp50\tp99\tsrv_us\tgen_pct\n' >"$RUNS_TSV"
FAILED=()

# run SERVER WORKLOAD N PORT FLAGS...: one bench against the running server.
run() {
    local server=$1 workload=$2 n=$3 port=$4
    shift 4
    local base="$OUT/$server-$workload-$n" gen_cpus="$n-$((TOTAL - 1))" rc=0
    local gens=$((TOTAL - n)) t0 t1 s0 s1 g0 g1
    local verify=()
    [[ $server == percore ]] || verify=(--no-verify)
    t0=$(date +%s%N)
    s0=$(ticks "$SERVER_PID")
    children_cpu g0 "$OUT/.times"
    timeout -k 5 "$BOUND" taskset -c "$gen_cpus" "$BIN" bench -s "tcp@127.0.0.1:$port" \
        --cores "$gen_cpus" -d "$DURATION" --warmup "$WARMUP" --timeout 0 --quiet \
        -o "$base.json" "${verify[@]}" "$@" >"$base.txt" 2>"$base.err" || rc=$?
    t1=$(date +%s%N)
    children_cpu g1 "$OUT/.times"
    s1=$(ticks "$SERVER_PID")
    if ((rc != 0)) || [[ -z $s1 ]]; then
        FAILED+=("$server $workload on $n CPUs: the bench exited with $rc (see $base.txt, $base.err)")
        echo "$server $workload $n FAILED"
        return
    fi
    read -r tps p50 p99 _ _ _ < <(bench_numbers "$base.txt")
    awk -v s="$server" -v wl="$workload" -v n="$n" -v tps="$tps" -v p50="$p50" -v p99="$p99" \
        -v st="$((s1 - s0))" -v hz="$CLK_TCK" -v g="$(awk -v a="$g0" -v b="$g1" 'BEGIN { print b - a }')" \
        -v wall="$(((t1 - t0) / 1000000))" -v gens="$gens" 'BEGIN {
            w = (wall > 0 ? wall : 1) / 1000
            per_call = tps > 0 ? st / hz / (tps * w) * 1e6 : 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%.2f\t%.0f\n", s, wl, n, tps, p50, p99, per_call,
                100 * g / w / gens
        }' >>"$RUNS_TSV"
    tail -n 1 "$RUNS_TSV" | awk -F'\t' '{ printf "%-10s %-12s %2s CPUs %11s calls/s  p99 %8s us  gen %s%%\n",
        $1, $2, $3, $4, $6, $8 }'
}

port=$PORT
for n in $SERVER_CPUS; do
    for server in "${SERVERS[@]}"; do
        port=$((port + 1))
        echo "== $server on $n CPU(s), generator on CPUs $n-$((TOTAL - 1))"
        start "$server" "$n" "$port"
        run "$server" pipelined "$n" "$port" --call Arith.Mul -c $((CONNS_PIPELINED * DEPTH)) \
            --connections "$CONNS_PIPELINED"
        run "$server" 1-in-flight "$n" "$port" --call Arith.Mul -c "$CONNS_SINGLE" \
            --connections "$CONNS_SINGLE"
        stop_server
    done
done

TABLE="$OUT/table.txt"
awk -F'\t' -v total="$TOTAL" -v dur="$DURATION" '
    NR == 1 { next }
    { key = $1 SUBSEP $2 SUBSEP $3; tps[key] = $4; row[++rows] = $0 }
    END {
        printf "%d CPUs; server on CPUs 0..N-1, percore bench on N..%d; %s per run. Arith.Mul MsgPack.\n",
            total, total - 1, dur
        printf "%-12s %-12s %4s %12s %9s %9s %8s %6s %8s %6s\n", "server", "workload", "N",
            "calls/s", "p50 us", "p99 us", "srv-us", "gen%", "vs-null", "vs-1"
        for (i = 1; i <= rows; i++) {
            split(row[i], f, "\t")
            null = tps["null" SUBSEP f[2] SUBSEP f[3]]
            one = tps[f[1] SUBSEP f[2] SUBSEP 1]
            vn = (f[1] != "null" && null > 0) ? sprintf("%.2f", f[4] / null) : "-"
            v1 = one > 0 ? sprintf("%.2f", f[4] / one) : "-"
            flag = f[8] >= 90 ? "  GEN-BOUND" : ""
            printf "%-12s %-12s %4s %12.0f %9.1f %9.1f %8.2f %6s %8s %6s%s\n", f[1], f[2], f[3],
                f[4], f[5], f[6], f[7], f[8], vn, v1, flag
        }
        print ""
        print "GEN-BOUND: the generator used >= 90% of its CPUs, so it, not the server, set the rate."
    }' "$RUNS_TSV" >"$TABLE"
echo
cat "$TABLE"
if ((${#FAILED[@]} > 0)); then
    echo
    echo "FAILED:"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
