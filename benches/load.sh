#!/usr/bin/env bash
# The standard load runs: three servers, one after another, each on CPU 0, loaded by
# `percore bench` on CPU 1, and one summary table with the ratios between them.
#
#   benches/load.sh                              # 5 s per run, 1 s warmup, 3 rounds: ~5 minutes
#   DURATION=30s WARMUP=5s RUNS=5 benches/load.sh
#
# Servers, each started once with `taskset -c 0` and left idle while another is loaded:
#
#   percore      target/release/percore serve --cores 1
#   null         the null server (benches/null_server.rs): percore's executors and listeners, each
#                frame answered by flipping its response bit (the request comes back as the reply).
#                The machine's practical limit, the denominator of the ratios.
#   rpcx_server  the published Rust rpcx server, rpcx_server 0.3.0 (benches/rpcx-rs/), Arith only.
#                Its THREADS argument is the size of the worker pool it makes *per connection*
#                (besides one reader thread per connection; 0 = 2 x CPUs); we pass 1, the fewest
#                threads it can run with on one core (64 connections are already 128 threads).
#
# Workloads (closed loop unless said; latency from send to reply):
#
#   arith-msgpack-64x1    Arith.Mul msgpack, 64 connections x 1 call in flight    all three
#   arith-msgpack-64x32   Arith.Mul msgpack, 64 connections x 32 calls in flight  all three
#   hello-protobuf-c100   Hello.Say protobuf, 100 connections x 1 (rpcx-benchmark) percore, null
#   echo-4k-64x1          Echo.Echo 4 KiB raw, 64 connections x 1                 percore, null
#   arith-rate-R          Arith.Mul at a constant rate R = half of percore's better median closed
#                         loop Arith rate, 64 connections, 2048 workers; latency from each call's
#                         scheduled time (coordinated omission corrected)      percore, null
#
# The constant-rate run's targets (p99 < 1 ms, p99.9 < 2 ms) are percore's; the null server runs at
# the same rate as a control: its latency is what the generator and the machine add by themselves
# (timer wake-ups, scheduling), which percore's cannot be expected to beat.
#
# Order: RUNS rounds (default 3); in each round every closed-loop workload is run against each
# server in turn, the servers' order rotating from round to round. So the runs a ratio compares
# are made seconds apart, anything that slows the machine for a while (another build, say) hits
# the runs of one round on all servers alike, and no server is always first. The constant-rate
# runs come last, RUNS rounds of them, once percore's closed-loop rates are known. The summary gives,
# per server and workload, the median over the rounds of TPS, p50, p99, p99.9 and max (each
# column's own median), the errors of all rounds, and the CPU the server, the generator and
# anything else on CPUs 0 and 1 used (median, % of one CPU over the whole bench process, warmup
# included): a generator near 100% while the server is well below means the generator, not the
# server, set the rate. "Anything else" is the busy time of CPUs 0 and 1 (/proc/stat) not charged
# to the server or the generator: other processes (a build running alongside), interrupts, time
# stolen by the hypervisor: small on a quiet machine, tens of % in a noisy run. The server's CPU
# per call (its CPU over the calls made meanwhile) gives a second ratio, null/percore: when the
# generator sets the rate, the TPS ratio only says percore kept up with the generator, while the
# CPU-per-call ratio still says what share of percore's work per call is the bare transport.
#
# Generator flags: `--cores 1` (the generator's executor on CPU 1), `--timeout 0`: the default
# 10 s timeout puts a __ServerTimeout entry in every request's metadata, which percore parses and
# its Arith mirrors back (`echo-__ServerTimeout`), rpcx_server ignores and the null server echoes;
# without it every server gets the bare call. Since a bench with no timeout could wait for ever on
# a stuck server, each bench is bounded from outside (coreutils `timeout`). Against the null
# server the Arith and Hello runs use `--no-verify` (the echoed args are not the answer, and the
# report says replies were not verified); its Echo replies are the right answer and are checked.
#
# Every run's report (.txt, .json, .svg) is left in $OUT (default target/load), with the servers'
# logs, runs.tsv (one line per run) and summary.txt. A server that fails to build, start or
# answer stops the script, named; a bench that fails (non-zero exit: the server died, nothing was
# OK, the bench timed out) is marked FAILED in the table (a server that died is not run again),
# and the script ends non-zero after the table, listing what failed; runs that counted errors
# are listed too. Needs 2 CPUs, taskset and coreutils' timeout.
# Environment: DURATION (5s), WARMUP (1s), RUNS (3), PORT (18972: percore; null PORT+1,
# rpcx_server PORT+2), OUT (target/load), PERCORE_BIN (the percore server to load, default this
# tree's target/release/percore: another build's binary compares two versions against the same
# null server and generator).
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WARMUP=${WARMUP:-1s}
RUNS=${RUNS:-3}
PORT=${PORT:-18972}
OUT=${OUT:-target/load}
BIN=target/release/percore
# The percore server under test (default: this tree's); the generator is always this tree's.
PERCORE_BIN=${PERCORE_BIN:-$BIN}
NULL_BIN=target/release/examples/null_server
RPCX_BIN=benches/rpcx-rs/target/release/rpcx-rs-arith

die() {
    echo "load.sh: $*" >&2
    exit 1
}

[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS is not a positive whole number"
[[ $PORT =~ ^[0-9]+$ ]] || die "PORT=$PORT is not a port number"
command -v taskset >/dev/null || die "taskset (util-linux) is needed"
command -v timeout >/dev/null || die "timeout (coreutils) is needed"
taskset -c 0 true 2>/dev/null && taskset -c 1 true 2>/dev/null ||
    die "CPUs 0 and 1 must both be usable (server on 0, generator on 1)"

# shellcheck source=benches/lib.sh
source benches/lib.sh
# A bench that runs this long is stuck: its server stopped answering with calls in flight.
BENCH_BOUND=$(($(seconds "$DURATION") + $(seconds "$WARMUP") + 60))

echo "== building percore, the null server and rpcx_server"
cargo build --release --locked --quiet --bin percore --example null_server ||
    die "cannot build percore and the null server"
cargo build --release --locked --quiet --manifest-path benches/rpcx-rs/Cargo.toml ||
    die "cannot build rpcx_server (benches/rpcx-rs)"
mkdir -p "$OUT"

SERVERS=(percore null rpcx_server)
declare -A PID ADDR
ADDR[percore]="tcp@127.0.0.1:$PORT"
ADDR[null]="tcp@127.0.0.1:$((PORT + 1))"
ADDR[rpcx_server]="tcp@127.0.0.1:$((PORT + 2))"

stop_servers() {
    local name
    for name in "${!PID[@]}"; do
        kill "${PID[$name]}" 2>/dev/null || true
        wait "${PID[$name]}" 2>/dev/null || true
    done
}
trap stop_servers EXIT
trap 'exit 130' INT TERM

# start NAME COMMAND...: starts a server on CPU 0, logging to $OUT/NAME.log.
start() {
    local name=$1
    shift
    taskset -c 0 "$@" >"$OUT/$name.log" 2>&1 &
    PID[$name]=$!
}

alive() { kill -0 "${PID[$1]}" 2>/dev/null; }

# dead NAME: says that server NAME is gone, with its last words; it is not run again.
declare -A DEAD
dead() {
    echo "load.sh: server $1 (pid ${PID[$1]}) is not running; from $OUT/$1.log:" >&2
    grep -m1 -A2 'panicked at' "$OUT/$1.log" >&2 || tail -n 5 "$OUT/$1.log" >&2 || true
    unset "PID[$1]"
    DEAD[$1]=1
}

# ready NAME [BENCH FLAGS]: waits (10 s at most) until one Arith.Mul call through `percore bench`
# is OK, so the server is listening and answers right (the null server with --no-verify).
ready() {
    local name=$1
    shift
    for _ in $(seq 100); do
        if ! alive "$name"; then
            dead "$name"
            die "server $name exited at startup"
        fi
        if timeout 5 "$BIN" bench -s "${ADDR[$name]}" -n 1 --timeout 1s --quiet "$@" \
            >"$OUT/$name.ready.txt" 2>&1; then
            return
        fi
        sleep 0.1
    done
    echo "load.sh: server $name did not answer Arith.Mul right within 10 s; the probe said:" >&2
    cat "$OUT/$name.ready.txt" >&2
    exit 1
}

echo "== starting the servers on CPU 0"
start percore "$PERCORE_BIN" serve --cores 1 --listen "${ADDR[percore]}"
start null "$NULL_BIN" "127.0.0.1:$((PORT + 1))" 1
start rpcx_server "$RPCX_BIN" "127.0.0.1:$((PORT + 2))" 1
ready percore
ready null --no-verify
ready rpcx_server


# Busy ticks of CPUs 0 and 1, whoever was busy (/proc/stat: user nice system irq softirq steal).
cpu01_ticks() {
    awk '$1 == "cpu0" || $1 == "cpu1" { n += $2 + $3 + $4 + $7 + $8 + $9 } END { print n }' /proc/stat
}

RUNS_TSV="$OUT/runs.tsv"
printf 'server\tworkload\tround\tstatus\ttps\tp50\tp99\tp99.9\tmax\terrors\tserver_cpu\tgen_cpu\tother_cpu\tserver_us_per_call\n' >"$RUNS_TSV"
FAILED=()

# bench SERVER WORKLOAD ROUND ARGS...: one run against SERVER; one line on the terminal and in
# runs.tsv, the full report in $OUT/SERVER-WORKLOAD-rROUND.{txt,json,svg}.
bench() {
    local server=$1 workload=$2 round=$3
    shift 3
    local base="$OUT/$server-$workload-r$round" rc=0 t0 t1 s0 s1 g0 g1 c0 c1
    if [[ -z ${DEAD[$server]:-} ]] && ! alive "$server"; then
        dead "$server"
    fi
    if [[ -n ${DEAD[$server]:-} ]]; then
        printf '%s\t%s\t%s\tFAILED\n' "$server" "$workload" "$round" >>"$RUNS_TSV"
        FAILED+=("$server $workload round $round: not run, the server had died")
        printf '%-40s FAILED (not run, the server had died)\n' "[$round] $server $workload"
        return
    fi
    t0=$(date +%s%N)
    s0=$(ticks "${PID[$server]}")
    c0=$(cpu01_ticks)
    children_cpu g0 "$OUT/.times"
    timeout -k 5 "$BENCH_BOUND" taskset -c 1 "$BIN" bench -s "${ADDR[$server]}" --cores 1 \
        -d "$DURATION" --warmup "$WARMUP" --timeout 0 --quiet \
        -o "$base.json" --plot "$base.svg" "$@" >"$base.txt" 2>"$base.err" || rc=$?
    t1=$(date +%s%N)
    children_cpu g1 "$OUT/.times"
    c1=$(cpu01_ticks)
    s1=$(ticks "${PID[$server]}")
    [[ -n $s0 && -n $s1 ]] || s1=${s0:=0}
    local line
    line=$(awk -v wall="$(((t1 - t0) / 1000000))" -v s="$((s1 - s0))" -v hz="$CLK_TCK" \
        -v g0="$g0" -v g1="$g1" -v c="$((c1 - c0))" '
        /^sent / { errors = $6 }
        /^throughput \(TPS\):/ { tps = $3 }
        /^latency \(us\):/ { p50 = $8; p99 = $12; p999 = $14; max = $18 }
        END {
            w = (wall > 0 ? wall : 1) / 1000
            srv = 100 * s / hz / w
            gen = 100 * (g1 - g0) / w
            other = 100 * c / hz / w - srv - gen
            # Server CPU per call: its CPU over the whole bench process, warmup included, over the
            # calls made meanwhile, taking the warmup rate to be the measured one.
            per_call = tps > 0 ? s / hz / (tps * w) * 1e6 : 0
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%.0f\t%.0f\t%.0f\t%.2f\n", tps, p50, p99, p999, max,
                errors, srv, gen, other < 0 ? 0 : other, per_call
        }' "$base.txt")
    local status=ok why=""
    if ! alive "$server"; then
        # Even if the bench exited 0 (it had OK calls before the server went).
        status=FAILED
        why="server $server died during the run (see $OUT/$server.log)"
        FAILED+=("$server $workload round $round: $why")
    elif ((rc != 0)); then
        status=FAILED
        if ((rc == 124 || rc == 137)); then
            why="the bench was still running after ${BENCH_BOUND}s"
        else
            why=$(grep -h -m1 -e '^aborted:' -e '^percore:' "$base.txt" "$base.err" || true)
            why=${why:-"the bench exited with status $rc (no call was OK?)"}
        fi
        FAILED+=("$server $workload round $round: $why (see $base.txt, $base.err)")
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$server" "$workload" "$round" "$status" "$line" >>"$RUNS_TSV"
    echo "$line" | awk -v n="[$round] $server $workload" -v st="$status" -v why="$why" -F'\t' '{
        if (st != "ok") { printf "%-40s FAILED: %s\n", n, why; exit }
        printf "%-40s %9s TPS  p99 %8s us  errors %s  CPU%% server %s generator %s other %s\n",
            n, $1, $3, $6, $7, $8, $9 }'
    if [[ $status != ok ]] && ! alive "$server"; then
        dead "$server"
    fi
}

# Closed-loop workloads: name, the servers that run it, bench flags.
WORKLOADS=(arith-msgpack-64x1 arith-msgpack-64x32 hello-protobuf-c100 echo-4k-64x1)
declare -A WHO FLAGS
WHO[arith-msgpack-64x1]="percore null rpcx_server"
FLAGS[arith-msgpack-64x1]="--call Arith.Mul -c 64 --connections 64"
WHO[arith-msgpack-64x32]="percore null rpcx_server"
FLAGS[arith-msgpack-64x32]="--call Arith.Mul -c 2048 --connections 64"
WHO[hello-protobuf-c100]="percore null"
FLAGS[hello-protobuf-c100]="--call Hello.Say -c 100 --connections 100"
WHO[echo-4k-64x1]="percore null"
FLAGS[echo-4k-64x1]="--call Echo.Echo --payload-size 4096 -c 64 --connections 64"

echo "== $RUNS round(s): $DURATION per run after $WARMUP warmup"
for round in $(seq "$RUNS"); do
    for workload in "${WORKLOADS[@]}"; do
        for i in "${!SERVERS[@]}"; do
            server=${SERVERS[$(((i + round - 1) % ${#SERVERS[@]}))]}
            [[ " ${WHO[$workload]} " == *" $server "* ]] || continue
            extra=()
            if [[ $server == null && $workload != echo-* ]]; then
                extra=(--no-verify)
            fi
            # shellcheck disable=SC2086 # FLAGS are words
            bench "$server" "$workload" "$round" ${FLAGS[$workload]} "${extra[@]}"
        done
    done
done

# median SERVER WORKLOAD COLUMN [FORMAT]: the median of a runs.tsv column over the OK runs,
# printed with FORMAT (default %.0f); empty if there is none.
median() {
    awk -F'\t' -v s="$1" -v w="$2" -v c="$3" '$1 == s && $2 == w && $4 == "ok" { print $c }' \
        "$RUNS_TSV" | sort -g | awk -v f="${4:-%.0f}" '{ v[NR] = $1 } END {
            if (NR == 0) exit
            printf f "\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

BEST=0
for workload in arith-msgpack-64x1 arith-msgpack-64x32; do
    tps=$(median percore "$workload" 5)
    [[ -n $tps ]] && BEST=$(awk -v a="$BEST" -v b="$tps" 'BEGIN { print (b > a ? b : a) }')
done
RATE=$(awk -v b="$BEST" 'BEGIN { printf "%d", b / 2 }')
RATE_WORKLOAD=arith-rate
if ((RATE > 0)); then
    RATE_WORKLOAD="arith-rate-$RATE"
    echo "== a constant $RATE calls/s (half percore's better median closed-loop Arith rate)"
    for round in $(seq "$RUNS"); do
        order=(percore null)
        ((round % 2)) || order=(null percore)
        for server in "${order[@]}"; do
            extra=()
            [[ $server == null ]] && extra=(--no-verify)
            bench "$server" "$RATE_WORKLOAD" "$round" --call Arith.Mul -c 2048 --connections 64 \
                -r "$RATE" "${extra[@]}"
        done
    done
else
    FAILED+=("percore arith-rate: not run, percore has no closed-loop Arith rate")
fi

# The summary.
SUMMARY="$OUT/summary.txt"
{
    echo "Summary: $(nproc) CPUs; each server on CPU 0, the generator (percore bench --cores 1"
    echo "--timeout 0) on CPU 1; $RUNS round(s) of $DURATION after $WARMUP warmup. Medians over the rounds;"
    echo "latency in us; errors summed over the rounds. CPU in % of one CPU over the whole bench"
    echo "process (warmup included): srv the server, gen the generator, oth the rest of CPUs 0-1's"
    echo "busy time (other processes, interrupts, steal; much more than a few % means a noisy run);"
    echo "srv-us the server's CPU microseconds per call (its CPU over the calls made meanwhile)."
    echo
    printf '%-12s %-22s %5s %11s %9s %9s %9s %9s %7s %5s %5s %5s %8s\n' server workload runs TPS \
        p50 p99 p99.9 max errors "srv%" "gen%" "oth%" "srv-us"
    for workload in "${WORKLOADS[@]}" "$RATE_WORKLOAD"; do
        for server in "${SERVERS[@]}"; do
            all=$(awk -F'\t' -v s="$server" -v w="$workload" '$1 == s && $2 == w' "$RUNS_TSV" | wc -l)
            ((all > 0)) || continue
            good=$(awk -F'\t' -v s="$server" -v w="$workload" '$1 == s && $2 == w && $4 == "ok"' \
                "$RUNS_TSV" | wc -l)
            errors=$(awk -F'\t' -v s="$server" -v w="$workload" \
                '$1 == s && $2 == w { n += $10 } END { print n + 0 }' "$RUNS_TSV")
            if ((good < all)); then
                printf '%-12s %-22s %5s %11s\n' "$server" "$workload" "$good/$all" FAILED
                continue
            fi
            printf '%-12s %-22s %5s %11s %9s %9s %9s %9s %7s %5s %5s %5s %8s\n' "$server" "$workload" \
                "$all" "$(median "$server" "$workload" 5)" "$(median "$server" "$workload" 6 %.1f)" \
                "$(median "$server" "$workload" 7 %.1f)" "$(median "$server" "$workload" 8 %.1f)" \
                "$(median "$server" "$workload" 9 %.1f)" "$errors" \
                "$(median "$server" "$workload" 11)" "$(median "$server" "$workload" 12)" \
                "$(median "$server" "$workload" 13)" "$(median "$server" "$workload" 14 %.2f)"
        done
    done
    echo
    # ratio NUMERATOR DENOMINATOR WORKLOAD TARGET [COLUMN]: NUMERATOR's median of COLUMN (default
    # 5, TPS) over DENOMINATOR's, e.g. "0.93 (target >= 0.90: met)".
    ratio() {
        local a b
        a=$(median "$1" "$3" "${5:-5}" %.6g)
        b=$(median "$2" "$3" "${5:-5}" %.6g)
        if [[ -z $a || -z $b ]]; then
            echo "n/a"
            return
        fi
        awk -v a="$a" -v b="$b" -v t="$4" 'BEGIN {
            if (b == 0) { print "n/a"; exit }
            r = a / b
            s = r >= 10 ? sprintf("%.1f", r) : sprintf("%.2f", r)
            if (t != "") s = s sprintf(" (target >= %s: %s)", t, r >= t ? "met" : "MISSED")
            print s }'
    }
    printf '%-22s %-32s %-32s %s\n' "ratio of median TPS" percore/null percore/rpcx_server \
        "server CPU per call, null/percore"
    for workload in "${WORKLOADS[@]}"; do
        case $workload in
        arith-msgpack-64x1) t_null=0.90 t_rpcx="" ;;
        arith-msgpack-64x32) t_null=0.80 t_rpcx=10 ;;
        *) t_null="" t_rpcx="" ;;
        esac
        vs_rpcx=""
        if [[ $workload == arith-* ]]; then
            vs_rpcx=$(ratio percore rpcx_server "$workload" "$t_rpcx")
        fi
        printf '%-22s %-32s %-32s %s\n' "$workload" "$(ratio percore null "$workload" "$t_null")" \
            "$vs_rpcx" "$(ratio null percore "$workload" "" 14)"
    done
    if ((RATE > 0)); then
        p99=$(median percore "$RATE_WORKLOAD" 7 %.1f)
        p999=$(median percore "$RATE_WORKLOAD" 8 %.1f)
        echo
        if [[ -n $p99 ]]; then
            awk -v r="$RATE" -v a="$p99" -v b="$p999" 'BEGIN {
                printf "percore at %d calls/s: p99 %s us (target < 1000: %s), p99.9 %s us (target < 2000: %s)\n",
                    r, a, a < 1000 ? "met" : "MISSED", b, b < 2000 ? "met" : "MISSED" }'
        else
            echo "percore at $RATE calls/s: no successful run"
        fi
        p99=$(median null "$RATE_WORKLOAD" 7 %.1f)
        p999=$(median null "$RATE_WORKLOAD" 8 %.1f)
        if [[ -n $p99 ]]; then
            echo "null    at $RATE calls/s: p99 $p99 us, p99.9 $p999 us (the floor this generator and machine allow)"
        fi
    fi
    warned=$(awk -F'\t' 'NR > 1 && $4 == "ok" && $10 > 0 { printf "  %s %s round %s: %s errors\n", $1, $2, $3, $10 }' "$RUNS_TSV")
    if [[ -n $warned ]]; then
        echo
        echo "Runs that counted errors (see their .txt for the kinds):"
        echo "$warned"
    fi
    if ((${#FAILED[@]} > 0)); then
        echo
        echo "FAILED:"
        printf '  %s\n' "${FAILED[@]}"
    fi
} >"$SUMMARY"

echo
cat "$SUMMARY"
((${#FAILED[@]} == 0)) || exit 1
